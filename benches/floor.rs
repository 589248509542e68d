//! The KVM floor: the least a VM needs, on bare kvm-ioctls, each step timed
//! on its own (median of N): open /dev/kvm, KVM_CREATE_VM, one memory slot,
//! the in-kernel irqchip, (a PIT, timed apart), one vCPU, running a
//! one-instruction guest (a real-mode port write) to its exit, and closing
//! the VM. Ember's own
//! share of a run is Ember's figure minus this one (`make bench` prints them
//! side by side).
//!
//!   cargo bench --bench floor -- [COUNT]

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM for the floor VM: enough for the code page.
const MEM: usize = 2 << 20;
/// Where the guest's one instruction sits.
const CODE: u64 = 0x1000;

#[derive(Default)]
struct Steps {
    open: Vec<Duration>,
    create_vm: Vec<Duration>,
    memory_slot: Vec<Duration>,
    irqchip: Vec<Duration>,
    pit: Vec<Duration>,
    vcpu: Vec<Duration>,
    run_to_exit: Vec<Duration>,
    close: Vec<Duration>,
    close_with_pit: Vec<Duration>,
    total: Vec<Duration>,
}

fn timed<T>(v: &mut Vec<Duration>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    v.push(t.elapsed());
    r
}

fn one(steps: &mut Steps, with_pit: bool) {
    let start = Instant::now();
    let kvm = timed(&mut steps.open, || Kvm::new().expect("open /dev/kvm"));
    let vm = timed(&mut steps.create_vm, || {
        kvm.create_vm().expect("KVM_CREATE_VM")
    });
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("mmap");
    // `out %al, $0x80`: with an in-kernel irqchip a `hlt` sleeps in KVM,
    // so the guest ends with a port write, which exits to user space.
    mem.write_slice(&[0xe6, 0x80], GuestAddress(CODE))
        .expect("write the guest");
    let host = mem.get_host_address(GuestAddress(0)).expect("host address") as u64;
    timed(&mut steps.memory_slot, || {
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the region is the live mapping `mem`, dropped after `vm`.
        unsafe { vm.set_user_memory_region(region) }.expect("memory slot")
    });
    timed(&mut steps.irqchip, || {
        vm.create_irq_chip().expect("irqchip")
    });
    if with_pit {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        timed(&mut steps.pit, || vm.create_pit2(pit).expect("PIT"));
    }
    let mut vcpu = timed(&mut steps.vcpu, || vm.create_vcpu(0).expect("vCPU"));
    let mut sregs = vcpu.get_sregs().expect("sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.get_regs().expect("regs");
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("set regs");
    timed(&mut steps.run_to_exit, || {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x80, _) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    });
    let close = if with_pit {
        &mut steps.close_with_pit
    } else {
        &mut steps.close
    };
    timed(close, || {
        drop(vcpu);
        drop(vm);
        drop(kvm);
    });
    drop(mem);
    if !with_pit {
        steps.total.push(start.elapsed());
    }
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// KVM_SET_USER_MEMORY_REGION of one slot of `size` bytes (never touched):
/// what KVM's per-slot bookkeeping costs as guest RAM grows.
fn slot_cost(size: usize, n: usize) -> f64 {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("mmap");
        let host = mem.get_host_address(GuestAddress(0)).expect("host address") as u64;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: size as u64,
            userspace_addr: host,
            flags: 0,
        };
        let t = Instant::now();
        // SAFETY: `mem` maps `size` bytes at `host` and outlives `vm`.
        unsafe { vm.set_user_memory_region(region) }.expect("memory slot");
        times.push(t.elapsed());
        drop(vm);
    }
    median_ms(&mut times)
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut steps = Steps::default();
    one(&mut Steps::default(), false); // warm-up
    for _ in 0..n {
        one(&mut steps, false);
        one(&mut steps, true);
    }
    let s = &mut steps;
    println!(
        "kvm_floor_ms  open {:.3}  create_vm {:.3}  memory_slot {:.3}  irqchip {:.3}  vcpu {:.3}  run_to_exit {:.3}  close {:.3}  total {:.3}  (median of {n}; bare kvm-ioctls, 2M, 1 vCPU, one real-mode port write)",
        median_ms(&mut s.open),
        median_ms(&mut s.create_vm),
        median_ms(&mut s.memory_slot),
        median_ms(&mut s.irqchip),
        median_ms(&mut s.vcpu),
        median_ms(&mut s.run_to_exit),
        median_ms(&mut s.close),
        median_ms(&mut s.total),
    );
    println!(
        "kvm_floor_pit_ms  create_pit2 {:.3}  close_with_pit {:.3}  (median of {n}; what a PIT adds)",
        median_ms(&mut s.pit),
        median_ms(&mut s.close_with_pit),
    );
    let slots: Vec<String> = [(256usize << 20, "256M"), (1 << 30, "1G"), (3 << 30, "3G")]
        .iter()
        .map(|&(size, name)| format!("{name} {:.3}", slot_cost(size, n.min(10))))
        .collect();
    println!(
        "kvm_floor_memory_slot_ms  {}  (median of {}; one slot of that size, never touched)",
        slots.join("  "),
        n.min(10)
    );
}
