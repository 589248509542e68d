//! virtio-net with a real Linux guest (tier 3): a TAP in a network
//! namespace this test creates. The guest configures eth0, pings the host,
//! and moves 1 MiB over TCP each way; checksums must match.

mod common;

use common::kit::*;
use common::netns::{Netns, HOST_IP, TAP};
use common::require_kvm;
use ember::{NetConfig, VmExit};

const GUEST_IP: &str = "10.0.2.15";

#[test]
#[ignore = "needs /dev/kvm and the guest kit; make test runs it"]
fn guest_pings_the_host_and_moves_1_mib_each_way_over_tcp() {
    require_kvm();
    let ns = Netns::new("net");
    ns.enter();
    let nets = vec![NetConfig {
        tap: TAP.into(),
        mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
    }];
    let (mut vm, console, _slot) = boot_net(nets);
    wait_boot(&console, PROMPT);

    run(&console, &format!("ip addr add {GUEST_IP}/24 dev eth0"));
    run(&console, "ip link set eth0 up");
    let ping = run(&console, &format!("ping -c 3 -W 10 {HOST_IP}"));
    assert!(ping.contains("3 packets received"), "{ping}");
    tcp_both_ways(&console);

    // The TAP deleted under a running guest: Ember logs it and stops
    // watching it instead of spinning on EPOLLERR; the console still works.
    ns.exec(&["link", "del", TAP]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = event_loop_cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let spent = event_loop_cpu_ticks() - before;
    assert!(
        spent < 20,
        "event loop used {spent} ticks of CPU in 2 s after the TAP went away"
    );
    assert_eq!(run(&console, "echo still here"), "still here");

    console.send_line("poweroff").unwrap();
    assert_eq!(vm.wait(), VmExit::Poweroff, "{}", console.transcript());
}

/// utime + stime of this process's event-loop thread, in clock ticks.
fn event_loop_cpu_ticks() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "ember-events" {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the ")" that ends the name: utime is the 12th, stime the 13th.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    panic!("no ember-events thread");
}

fn payload() -> Vec<u8> {
    (0u32..1 << 20)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect()
}

fn md5(data: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("ember-net-md5-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("md5sum")
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Host -> guest, then guest -> host, 1 MiB each over TCP; checksums match.
fn tcp_both_ways(console: &ember::Console) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    let data = payload();
    let expected = md5(&data);
    run(console, "nc -l -p 5000 > /tmp/in &");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stream = loop {
        match TcpStream::connect((GUEST_IP, 5000)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => panic!("connect to the guest: {e}"),
        }
    };
    let t = Instant::now();
    stream.write_all(&data).unwrap();
    drop(stream);
    // Let nc finish before typing: a SIGCHLD that lands while busybox's
    // line editor reads the next command wedges the guest shell here.
    std::thread::sleep(Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let sum = run(console, "md5sum /tmp/in");
        if sum.starts_with(&expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest's copy never matched: {sum}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("host -> guest 1 MiB: {:?}", t.elapsed());

    let listener = TcpListener::bind((HOST_IP, 5001)).unwrap();
    console
        .send_line(&format!("nc {HOST_IP} 5001 < /tmp/in"))
        .unwrap();
    let t = Instant::now();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    eprintln!("guest -> host 1 MiB: {:?}", t.elapsed());
    // busybox nc exits once the far end closes too.
    drop(conn);
    assert_eq!(back.len(), data.len());
    assert_eq!(md5(&back), expected);
    console.wait_for(PROMPT, COMMAND).unwrap();
}
