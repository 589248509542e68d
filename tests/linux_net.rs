//! virtio-net with a real Linux guest (tier 3): a TAP in a network
//! namespace this test creates. The guest configures eth0 and pings the
//! host. (Bulk TCP is not covered yet: see the progress note.)

mod common;

use common::kit::*;
use common::kvm_available;
use common::netns::{Netns, HOST_IP, TAP};
use ember::{NetConfig, VmExit};

const GUEST_IP: &str = "10.0.2.15";

#[test]
fn guest_configures_eth0_and_pings_the_host() {
    if !kvm_available("guest_configures_eth0_and_pings_the_host") {
        return;
    }
    let Some(_) = kit() else { return };
    let ns = Netns::new("net");
    ns.enter();
    let nets = vec![NetConfig {
        tap: TAP.into(),
        mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
    }];
    let Some((mut vm, console)) = boot_net(nets) else {
        return;
    };
    console
        .wait_for(PROMPT, BOOT)
        .unwrap_or_else(|e| panic!("boot: {e}\n{}", console.transcript()));

    run(&console, &format!("ip addr add {GUEST_IP}/24 dev eth0"));
    run(&console, "ip link set eth0 up");
    let ping = run(&console, &format!("ping -c 3 -W 10 {HOST_IP}"));
    assert!(ping.contains("3 packets received"), "{ping}");

    console.send_line("poweroff").unwrap();
    assert_eq!(vm.wait(), VmExit::Poweroff, "{}", console.transcript());
}
