//! The boot recipe, top to bottom: check the config → guest memory →
//! kernel, initrd, command line, ACPI, zero page → KVM → VM with irqchip
//! (and PIT) → vCPUs → console and devices → threads. Each step lives in
//! the module it is about; `assemble` is the part a restore shares.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ember_devices::bus::{Bus, SharedDevice};
use ember_devices::i8042::{I8042State, I8042};
use ember_devices::pvpanic::PvPanic;
use ember_devices::serial::{IrqLine, SerialDevice, SerialSnapshot};
use ember_devices::sleep::SleepControl;
use ember_devices::virtio::block::Block;
use ember_devices::virtio::mmio::TransportSnapshot;
use ember_devices::virtio::net::Net;
use ember_devices::virtio::VirtioDevice;
use ember_devices::SignalLine;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{ConfigError, ConsoleMode, VmConfig};
use crate::console::{ConsoleHost, SerialOut};
use crate::console_input::ConsoleInput;
use crate::error::Error;
use crate::event_loop;
use crate::exit::{Crash, CrashKind, ExitSignal, VmExit};
use crate::layout::*;
use crate::loader::{self, LoadedKernel};
use crate::machine::Machine;
use crate::memory;
use crate::platform::{self, Host};
use crate::snapshot::vm_state::VmState;
use crate::snapshot::{
    SavedDisk, SavedMachine, SavedNet, SharedI8042, SharedSerial, SnapshotSource,
};
use crate::vcpu::{self, Buses};
use crate::virtio_devices;
use crate::x86_64::{acpi, boot_params, cpuid, mptable, msrs, regs};

/// Starts a VM: returns once every vCPU thread runs. On any error the
/// partial machine is dropped, which stops and joins what was started.
pub(crate) fn build(config: &VmConfig) -> Result<Machine, Error> {
    // Everything the user gave is checked before KVM is touched, so bad
    // input gets its own error even on a host without /dev/kvm.
    config.validate()?;
    check_memory_fits_host(config.memory)?;
    let disks = virtio_devices::open_disks(&config.disks)?;
    let nets = virtio_devices::open_nets(&config.nets)?;
    // A container's shares are served (and its directories checked)
    // before KVM is touched; its initramfs and arguments replace the
    // config's for the boot.
    let container = config
        .container
        .as_ref()
        .map(|c| crate::container::prepare(c, None))
        .transpose()?;
    build_with(config, disks, nets, container)
}

/// A container run's boot with its host side prepared by the caller
/// (its own stdio): `config.container` is what `container` was made for.
pub(crate) fn build_container(
    config: &VmConfig,
    container: crate::container::Prepared,
) -> Result<Machine, Error> {
    config.validate()?;
    check_memory_fits_host(config.memory)?;
    let disks = virtio_devices::open_disks(&config.disks)?;
    let nets = virtio_devices::open_nets(&config.nets)?;
    build_with(config, disks, nets, Some(container))
}

/// A container template's boot (src/container/template.rs): `config`
/// without a container, `container` its prepared host side.
pub(crate) fn build_template(
    config: &VmConfig,
    container: crate::container::Prepared,
) -> Result<Machine, Error> {
    config.validate()?;
    check_memory_fits_host(config.memory)?;
    build_with(config, Vec::new(), Vec::new(), Some(container))
}

fn build_with(
    config: &VmConfig,
    disks: Vec<Block>,
    nets: Vec<Net>,
    container: Option<crate::container::Prepared>,
) -> Result<Machine, Error> {
    // A template's snapshot is its point; a run's host side cannot be saved.
    let template_shares = container.as_ref().and_then(|c| c.template_shares());
    let unsaveable = container.is_some() && template_shares.is_none();
    let boot_config;
    let boot = match &container {
        Some(c) => {
            boot_config = c.boot_config(config);
            &boot_config
        }
        None => config,
    };
    let host = Host::detect();
    let mem = memory::create_guest_memory(config.memory)?;
    let (extra, container) = match container {
        Some(c) => {
            let (devices, handle, initramfs) = c.into_parts();
            (devices, Some((handle, initramfs)))
        }
        None => (Vec::new(), None),
    };
    // One list of virtio windows and IRQs feeds both the DSDT and the bus.
    let virtio_slots: Vec<(u64, u32)> = (0..disks.len() + nets.len() + extra.len())
        .map(virtio_slot)
        .collect();
    let kernel = load_boot_payload(&mem, boot, host, &virtio_slots)?;
    // The initramfs is in guest memory now.
    let container = container.map(|(handle, _initramfs)| handle);
    let cr3 = regs::write_boot_tables(&mem)?;
    fault_point("load the boot payload")?;

    let saved = SavedMachine {
        cpus: config.cpus,
        memory: config.memory,
        pit: config.pit,
        kernel: config.kernel.clone(),
        cmdline: config.cmdline.clone(),
        disks: config
            .disks
            .iter()
            .zip(&disks)
            .map(|(d, b)| SavedDisk {
                path: d.path.clone(),
                read_only: d.read_only,
                bytes: b.capacity_bytes(),
            })
            .collect(),
        nets: config
            .nets
            .iter()
            .zip(&nets)
            .map(|(n, dev)| SavedNet {
                tap: n.tap.clone(),
                mac: dev.mac(),
            })
            .collect(),
        emulating: host.is_emulating(),
        container_shares: template_shares,
    };
    let parts = Parts {
        machine: saved,
        mem,
        disks,
        nets,
        extra,
        unsaveable,
        console: &config.console,
        paused: false,
        seccomp: config.seccomp,
    };
    let mut machine = assemble(parts, None, |kvm, vm| {
        create_vcpus(kvm, vm, config.cpus, host, kernel.entry, cr3)
    })?;
    machine.set_container(container);
    Ok(machine)
}

/// A virtio device beyond the disks and interfaces (a container's): the
/// name of the I/O thread of its own it is served on, if it gets one.
pub(crate) struct ExtraDevice {
    pub device: Box<dyn VirtioDevice>,
    pub own_thread: Option<String>,
}

/// What a machine is made of, before KVM.
pub(crate) struct Parts<'a> {
    pub machine: SavedMachine,
    pub mem: GuestMemoryMmap,
    pub disks: Vec<Block>,
    pub nets: Vec<Net>,
    /// After the disks and interfaces, in slot order.
    pub extra: Vec<ExtraDevice>,
    /// Snapshots are refused (a container run's host side).
    pub unsaveable: bool,
    pub console: &'a ConsoleMode,
    /// The vCPUs park before their first KVM_RUN until resumed.
    pub paused: bool,
    /// Seccomp filters on the machine's threads.
    pub seccomp: bool,
}

/// The devices' saved states, for a restore.
pub(crate) struct SavedDevices<'a> {
    pub vm: &'a VmState,
    pub serial: &'a SerialSnapshot,
    pub i8042: &'a I8042State,
    pub virtio: &'a [TransportSnapshot],
}

/// KVM → VM with irqchip (and PIT) → console → devices → vCPUs (made by
/// `vcpus`) → threads: the part of a start that a boot and a restore
/// share. With `saved`, every device starts in its saved state.
pub(crate) fn assemble(
    parts: Parts,
    saved: Option<SavedDevices>,
    vcpus: impl FnOnce(&Kvm, &VmFd) -> Result<Vec<VcpuFd>, Error>,
) -> Result<Machine, Error> {
    let Parts {
        machine: description,
        mem,
        disks,
        nets,
        extra,
        unsaveable,
        console,
        paused,
        seccomp,
    } = parts;
    let (cpus, memory, pit) = (description.cpus, description.memory, description.pit);
    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    check_cpus_fit_kvm(&kvm, cpus)?;
    let vm_fd = kvm.create_vm().map_err(Error::kvm("create a VM"))?;
    memory::register_with_kvm(&vm_fd, &mem)?;
    create_irqchip(&vm_fd, pit)?;
    // The vCPUs (a restore's in their saved state) exist before the
    // irqchip's saved state goes in and before any device can raise an
    // interrupt: an interrupt then always finds the LAPIC it is for, and
    // no LAPIC state set later overwrites it.
    let vcpus = vcpus(&kvm, &vm_fd)?;
    if let Some(saved) = &saved {
        saved.vm.restore(&vm_fd, pit).map_err(Error::RestoreVm)?;
    }
    fault_point("create the VM")?;

    let exit = Arc::new(ExitSignal::new().map_err(Error::host("create the exit eventfd"))?);
    let (console, serial_out) =
        ConsoleHost::new(console, seccomp).map_err(Error::host("create the console"))?;
    let control = crate::control::VmControl::new(exit.clone(), cpus, memory, paused);
    control.set_seccomp(seccomp);
    let mut machine = Machine::new(kvm, vm_fd, mem, exit.clone(), console, control);
    machine.set_seccomp(seccomp);
    fault_point("start the console")?;

    let PlatformDevices {
        mut buses,
        serial,
        i8042,
        input_wanted,
    } = create_devices(
        machine.vm_fd(),
        &exit,
        serial_out,
        saved.as_ref().map(|s| (s.serial, s.i8042)),
    )?;
    let mut manager = event_loop::new_manager().map_err(Error::host("create the event loop"))?;
    let disks = disks.into_iter().enumerate().map(|(i, d)| ExtraDevice {
        device: Box::new(d),
        own_thread: Some(format!("ember-disk{i}")),
    });
    let nets = nets.into_iter().map(|n| ExtraDevice {
        device: Box::new(n),
        own_thread: None,
    });
    let mut attached = Vec::new();
    for (index, ExtraDevice { device, own_thread }) in disks.chain(nets).chain(extra).enumerate() {
        let (base, irq) = virtio_slot(index);
        let slot = virtio_devices::Slot { index, base, irq };
        // A disk's queue is served on a loop of its own (see event_loop).
        let mut worker = match own_thread {
            Some(name) => Some((
                name,
                event_loop::new_manager().map_err(Error::host("create a device's loop"))?,
            )),
            None => None,
        };
        let (transport, server) = virtio_devices::attach(
            machine.vm_fd(),
            machine.memory(),
            &mut buses.mmio,
            worker.as_mut().map_or(&mut manager, |(_, m)| m),
            slot,
            device,
            saved.as_ref().and_then(|s| s.virtio.get(index)),
        )?;
        machine.add_device(server.clone());
        attached.push((transport, server));
        if let Some((name, worker)) = worker {
            machine
                .start_worker(name, worker)
                .map_err(Error::host("start a device's I/O thread"))?;
        }
        log::info!("virtio device {index} at {base:#x}, IRQ {irq}");
    }
    fault_point("attach the devices")?;
    let source = machine.console().input_source();
    event_loop::add(
        &mut manager,
        ConsoleInput::new(serial.clone(), source, input_wanted, exit.clone()),
    );
    machine.control().set_snapshot_source(SnapshotSource {
        vm: machine.shared_vm_fd(),
        memory: machine.memory().clone(),
        serial,
        i8042,
        virtio: attached,
        machine: description,
        unsaveable,
    });

    vcpu::install_kick_handler().map_err(Error::host("install the vCPU kick signal"))?;
    machine
        .start_event_loop(manager)
        .map_err(Error::host("start the event-loop thread"))?;
    fault_point("start the event loop")?;
    machine
        .console()
        .enter_raw_mode()
        .map_err(Error::host("put the terminal in raw mode"))?;
    fault_point("enter raw mode")?;
    let buses = Arc::new(buses);
    for (cpu, fd) in vcpus.into_iter().enumerate() {
        machine
            .spawn_vcpu(cpu as u8, fd, buses.clone())
            .map_err(Error::host("start a vCPU thread"))?;
        fault_point("start a vCPU")?;
    }
    Ok(machine)
}

/// Test hook: makes the Nth fault point of the next starts fail, so a test
/// can check that a start failing at each step cleans up after itself.
#[doc(hidden)]
pub fn inject_start_failure(at: Option<u32>) {
    FAIL_AT.store(at.map_or(u32::MAX, |n| n), Ordering::SeqCst);
    PASSED.store(0, Ordering::SeqCst);
}

static FAIL_AT: AtomicU32 = AtomicU32::new(u32::MAX);
static PASSED: AtomicU32 = AtomicU32::new(0);

fn fault_point(step: &'static str) -> Result<(), Error> {
    if FAIL_AT.load(Ordering::Relaxed) == u32::MAX {
        return Ok(());
    }
    let n = PASSED.fetch_add(1, Ordering::SeqCst);
    if n == FAIL_AT.load(Ordering::SeqCst) {
        return Err(Error::Injected { step });
    }
    Ok(())
}

fn check_cpus_fit_kvm(kvm: &Kvm, cpus: u8) -> Result<(), Error> {
    let max = kvm.get_max_vcpus();
    if usize::from(cpus) > max {
        return Err(ConfigError::CpusAboveKvm {
            value: cpus.into(),
            max: max as u32,
        }
        .into());
    }
    Ok(())
}

pub(crate) fn check_memory_fits_host(memory: u64) -> Result<(), Error> {
    match memory::host_memory_bytes() {
        Some(host) if memory > host => Err(ConfigError::MemoryAboveHost {
            value: memory,
            host,
        }
        .into()),
        _ => Ok(()),
    }
}

/// The in-kernel IOAPIC/PIC/LAPICs, and a PIT only when asked for.
fn create_irqchip(vm: &VmFd, pit: bool) -> Result<(), Error> {
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(Error::kvm("set the identity map address"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(Error::kvm("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("create the in-kernel irqchip"))?;
    if !pit {
        return Ok(());
    }
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(Error::kvm("create the in-kernel PIT"))
}

/// Kernel, initrd, command line, ACPI tables and the zero page.
fn load_boot_payload(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    host: Host,
    virtio: &[(u64, u32)],
) -> Result<LoadedKernel, Error> {
    let low_end = memory::low_ram_end(config.memory);
    let kernel = loader::load_kernel(mem, &config.kernel, low_end)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(
            mem,
            path,
            kernel.end,
            loader::initrd_limit(&kernel, low_end),
        )?),
        None => None,
    };
    let scripted = match config.console {
        ConsoleMode::Scripted { .. } => true,
        ConsoleMode::Terminal => !crate::terminal::is_tty(libc::STDIN_FILENO),
    };
    let cmdline = boot_cmdline(&config.cmdline, host, scripted)?;
    let cmdline_text = cmdline
        .as_cstring()
        .map(|c| c.into_string().unwrap_or_default())
        .unwrap_or_default();
    log::info!("kernel command line: {cmdline_text}");
    loader::write_cmdline(mem, &cmdline)?;
    let rsdp = acpi::write_tables(mem, config.cpus, virtio)?;
    mptable::write(mem, config.cpus)?;
    let ram = memory::ram_ranges(config.memory);
    let params = boot_params::build(&boot_params::ZeroPage {
        setup_header: kernel.setup_header,
        cmdline_len: cmdline_text.len(),
        initrd,
        ram: &ram,
        rsdp,
        setup_data: Some(boot_params::write_rng_seed(mem)?),
    })?;
    boot_params::write(mem, &params)?;
    Ok(kernel)
}

/// The user's arguments and Ember's. `EMBER_CONSOLE=scripted` is a hint,
/// not a need: a command line with no room for it boots without it.
fn boot_cmdline(
    user: &str,
    host: Host,
    scripted: bool,
) -> Result<linux_loader::cmdline::Cmdline, ConfigError> {
    let build =
        |scripted| loader::build_cmdline(user, &platform::ember_kernel_args(user, host, scripted));
    match build(scripted) {
        Err(_) if scripted => {
            log::info!(
                "no room for {} on the kernel command line; left out",
                platform::SCRIPTED_CONSOLE
            );
            build(false)
        }
        built => built,
    }
}

/// What `create_devices` makes: the port bus (and an empty MMIO bus for
/// the virtio devices), and the devices other parts of Ember talk to.
struct PlatformDevices {
    buses: Buses,
    serial: SharedSerial,
    i8042: SharedI8042,
    /// Signalled when COM1's receive FIFO has room for more input.
    input_wanted: EventFd,
}

/// COM1 and the platform devices on the port bus. The reset, power-off and
/// panic lines record the VM's end synchronously, on the vCPU that raised
/// them, which then stops before running another guest instruction.
fn create_devices(
    vm: &VmFd,
    exit: &Arc<ExitSignal>,
    serial_out: SerialOut,
    saved: Option<(&SerialSnapshot, &I8042State)>,
) -> Result<PlatformDevices, Error> {
    let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(Error::host("create an eventfd"));
    let line = |reason: VmExit| {
        let exit = exit.clone();
        SignalLine::new(move || exit.trigger(reason.clone()))
    };

    let com1_irq = eventfd()?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)
        .map_err(Error::kvm("register the COM1 irqfd"))?;
    let input_wanted = eventfd()?;
    let rx_drained = input_wanted
        .try_clone()
        .map_err(Error::host("clone an eventfd"))?;
    let serial = match saved {
        None => SerialDevice::new(com1_irq, rx_drained, serial_out),
        Some((saved, _)) => SerialDevice::from_snapshot(com1_irq, rx_drained, serial_out, saved)
            .map_err(Error::RestoreSerial)?,
    };
    let serial = Arc::new(Mutex::new(serial));

    let kbd_irq = eventfd()?;
    vm.register_irqfd(&kbd_irq, I8042_IRQ)
        .map_err(Error::kvm("register the i8042 irqfd"))?;
    let reset = line(VmExit::Reboot);
    let i8042 = match saved {
        None => I8042::new(reset, IrqLine::new(kbd_irq)),
        Some((_, saved)) => {
            I8042::from_state(reset, IrqLine::new(kbd_irq), saved).map_err(Error::RestoreI8042)?
        }
    };
    let i8042 = Arc::new(Mutex::new(i8042));

    let mut pio = Bus::new();
    let devices: [(&'static str, u64, u64, SharedDevice); 4] = [
        ("COM1", COM1_PORT, COM1_PORT_LEN, serial.clone()),
        ("the i8042", I8042_PORT, I8042_PORT_LEN, i8042.clone()),
        (
            "the ACPI sleep registers",
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_SLEEP_PORT_LEN,
            Arc::new(Mutex::new(SleepControl::new(line(VmExit::Poweroff)))),
        ),
        (
            "pvpanic",
            PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanic::new(line(VmExit::Crash(Crash::new(
                CrashKind::GuestPanic,
            )))))),
        ),
    ];
    for (what, base, len, dev) in devices {
        pio.insert(base, len, dev)
            .map_err(|source| Error::Bus { what, source })?;
    }
    Ok(PlatformDevices {
        buses: Buses {
            pio,
            mmio: Bus::new(),
        },
        serial,
        i8042,
        input_wanted,
    })
}

pub(crate) fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    cpus: u8,
    host: Host,
    entry: GuestAddress,
    cr3: u64,
) -> Result<Vec<VcpuFd>, Error> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("read the supported CPUID"))?;
    let mut vcpus = Vec::with_capacity(cpus.into());
    for cpu in 0..cpus {
        let fd = vm
            .create_vcpu(cpu.into())
            .map_err(Error::kvm("create a vCPU"))?;
        let table = cpuid::for_vcpu(&supported, cpu, cpus, host.is_emulating());
        fd.set_cpuid2(&table)
            .map_err(Error::kvm("set a vCPU's CPUID"))?;
        msrs::setup_msrs(&fd, cpu)?;
        regs::setup_fpu(&fd, cpu)?;
        regs::setup_lint(&fd, cpu)?;
        if cpu == 0 {
            regs::setup_boot_cpu(&fd, entry.0, cr3)?;
        }
        vcpus.push(fd);
    }
    Ok(vcpus)
}

#[cfg(test)]
mod cmdline_tests {
    use super::*;

    #[test]
    fn a_full_command_line_boots_without_the_console_hint() {
        let spare = |user: &str| {
            let with = platform::ember_kernel_args(user, Host::Hardware, false).join(" ");
            crate::layout::CMDLINE_MAX - 2 - user.len() - with.len()
        };
        let base = "console=ttyS0";
        // Exactly full with Ember's own arguments: the hint does not fit.
        let user = format!("{base} {}", "x".repeat(spare(base) - 1));
        let text = boot_cmdline(&user, Host::Hardware, true)
            .expect("boots without the hint")
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap();
        assert!(!text.contains("EMBER_CONSOLE"), "{text}");
        let roomy = boot_cmdline(base, Host::Hardware, true).unwrap();
        assert!(roomy
            .as_cstring()
            .unwrap()
            .into_string()
            .unwrap()
            .contains(platform::SCRIPTED_CONSOLE));
    }
}
