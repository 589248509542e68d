//! The boot recipe, top to bottom: check the config → KVM → guest memory →
//! VM with irqchip and PIT → kernel, initrd, command line, ACPI, zero page
//! → devices → vCPUs → threads. Each step lives in the module it is about.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ember_devices::bus::{Bus, SharedDevice};
use ember_devices::i8042::I8042;
use ember_devices::pvpanic::PvPanic;
use ember_devices::serial::SerialDevice;
use ember_devices::sleep::SleepControl;
use ember_devices::virtio::VirtioDevice;
use ember_devices::SignalLine;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{ConfigError, ConsoleMode, VmConfig};
use crate::console::{Console, ConsoleShared, OutputPump, SerialOut};
use crate::console_input::{is_pollable, ConsoleInput, InputSource};
use crate::error::Error;
use crate::event_loop::{self, PlatformEvents};
use crate::exit::ExitSignal;
use crate::layout::*;
use crate::loader::{self, LoadedKernel};
use crate::memory;
use crate::platform::{self, Host};
use crate::terminal::{self, RawMode};
use crate::vcpu::{self, Buses};
use crate::virtio_devices;
use crate::vm::{Vm, VmParts};
use crate::x86_64::{acpi, boot_params, cpuid, msrs, regs};

/// Starts a VM: returns once every vCPU thread runs.
pub fn build(config: &VmConfig) -> Result<Vm, Error> {
    // Everything the user gave is checked before KVM is touched, so bad
    // input gets its own error even on a host without /dev/kvm.
    config.validate()?;
    check_memory_fits_host(config)?;
    let disks = virtio_devices::open_disks(&config.disks)?;
    let nets = virtio_devices::open_nets(&config.nets)?;
    let host = Host::detect();
    let mem = memory::create_guest_memory(config.memory)?;
    let kernel = load_boot_payload(&mem, config, host)?;
    let cr3 = regs::write_boot_tables(&mem)?;

    let kvm = Kvm::new().map_err(Error::OpenKvm)?;
    check_cpus_fit_kvm(&kvm, config)?;
    let vm_fd = kvm.create_vm().map_err(Error::kvm("create a VM"))?;
    memory::register_with_kvm(&vm_fd, &mem)?;
    create_irqchip_and_pit(&vm_fd)?;

    let exit = Arc::new(ExitSignal::default());
    let mut console = ConsoleParts::new(&config.console)?;
    let (mut buses, platform_lines) = create_devices(&vm_fd, &mut console)?;
    let mut manager = event_loop::new_manager().map_err(|e| Error::Host {
        what: "create the event loop",
        source: std::io::Error::other(e.to_string()),
    })?;
    let devices = disks
        .into_iter()
        .map(|d| Box::new(d) as Box<dyn VirtioDevice>)
        .chain(
            nets.into_iter()
                .map(|n| Box::new(n) as Box<dyn VirtioDevice>),
        );
    for (index, device) in devices.enumerate() {
        let (base, irq) =
            virtio_devices::attach(&vm_fd, &mem, &mut buses.mmio, &mut manager, index, device)?;
        log::info!("virtio device {index} at {base:#x}, IRQ {irq}");
    }
    let vcpus = create_vcpus(&kvm, &vm_fd, config.cpus, host, kernel.entry, cr3)?;

    let (platform_events, stop_evt, wake) = platform_lines.into_subscriber(exit.clone())?;
    event_loop::add(&mut manager, platform_events);
    event_loop::add(&mut manager, console.input_subscriber(exit.clone())?);

    vcpu::install_kick_handler().map_err(Error::host("install the vCPU kick signal"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let loop_thread = event_loop::spawn(manager, stop.clone(), exit.clone())
        .map_err(Error::host("start the event-loop thread"))?;
    let raw_mode = match config.console {
        ConsoleMode::Terminal => {
            RawMode::enter().map_err(Error::host("put the terminal in raw mode"))?
        }
        ConsoleMode::Scripted { .. } => None,
    };
    let buses = Arc::new(buses);
    let mut threads = Vec::with_capacity(vcpus.len());
    for (cpu, fd) in vcpus.into_iter().enumerate() {
        let (b, m, e, s) = (buses.clone(), mem.clone(), exit.clone(), stop.clone());
        let t = std::thread::Builder::new()
            .name(format!("ember-vcpu{cpu}"))
            .spawn(move || vcpu::run(fd, cpu as u8, b, m, e, s))
            .map_err(Error::host("start a vCPU thread"))?;
        threads.push(t);
    }
    Ok(Vm::from_parts(VmParts {
        exit,
        stop,
        wake,
        stop_evt,
        vcpu_threads: threads,
        event_thread: loop_thread,
        console: Console::new(console.shared.clone()),
        console_shared: console.shared,
        pumps: console.pumps,
        raw_mode,
        _vm_fd: vm_fd,
        _kvm: kvm,
        _memory: mem,
    }))
}

fn check_cpus_fit_kvm(kvm: &Kvm, config: &VmConfig) -> Result<(), Error> {
    let max = kvm.get_max_vcpus();
    if usize::from(config.cpus) > max {
        return Err(ConfigError::CpusAboveKvm {
            value: config.cpus.into(),
            max: max as u32,
        }
        .into());
    }
    Ok(())
}

fn check_memory_fits_host(config: &VmConfig) -> Result<(), Error> {
    match memory::host_memory_bytes() {
        Some(host) if config.memory > host => Err(ConfigError::MemoryAboveHost {
            value: config.memory,
            host,
        }
        .into()),
        _ => Ok(()),
    }
}

fn create_irqchip_and_pit(vm: &VmFd) -> Result<(), Error> {
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(Error::kvm("set the identity map address"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(Error::kvm("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("create the in-kernel irqchip"))?;
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
    let extra = platform::ember_kernel_args(&config.cmdline, host);
    let cmdline = loader::build_cmdline(&config.cmdline, &extra)?;
    let cmdline_text = cmdline
        .as_cstring()
        .map(|c| c.into_string().unwrap_or_default())
        .unwrap_or_default();
    log::info!("kernel command line: {cmdline_text}");
    loader::write_cmdline(mem, &cmdline)?;
    let virtio: Vec<(u64, u32)> = (0..config.disks.len() + config.nets.len())
        .map(virtio_slot)
        .collect();
    let rsdp = acpi::write_tables(mem, config.cpus, &virtio)?;
    let ram = memory::ram_ranges(config.memory);
    let params = boot_params::build(&boot_params::ZeroPage {
        setup_header: kernel.setup_header,
        cmdline_len: cmdline_text.len(),
        initrd,
        ram: &ram,
        rsdp,
    })?;
    boot_params::write(mem, &params)?;
    Ok(kernel)
}

/// The console's host side: shared transcript/input state and the
/// output writer threads.
struct ConsoleParts {
    mode: ConsoleMode,
    shared: Arc<ConsoleShared>,
    pumps: Vec<Arc<Mutex<OutputPump>>>,
    serial: Option<Arc<Mutex<SerialDevice<SerialOut>>>>,
    rx_drained: Option<EventFd>,
}

impl ConsoleParts {
    fn new(mode: &ConsoleMode) -> Result<Self, Error> {
        let shared = ConsoleShared::new().map_err(Error::host("create the console"))?;
        Ok(Self {
            mode: mode.clone(),
            shared,
            pumps: Vec::new(),
            serial: None,
            rx_drained: None,
        })
    }

    fn pump(
        &mut self,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<Arc<Mutex<OutputPump>>, Error> {
        let p = Arc::new(Mutex::new(
            OutputPump::new(out).map_err(Error::host("start the console output thread"))?,
        ));
        self.pumps.push(p.clone());
        Ok(p)
    }

    fn serial_out(&mut self) -> Result<SerialOut, Error> {
        Ok(match self.mode {
            ConsoleMode::Terminal => SerialOut::Pump(self.pump(Box::new(std::io::stdout()))?),
            ConsoleMode::Scripted { echo } => SerialOut::Transcript {
                shared: self.shared.clone(),
                echo: if echo {
                    Some(self.pump(Box::new(std::io::stderr()))?)
                } else {
                    None
                },
            },
        })
    }

    fn input_subscriber(&self, exit: Arc<ExitSignal>) -> Result<ConsoleInput, Error> {
        let (Some(serial), Some(drained)) = (&self.serial, &self.rx_drained) else {
            return Err(Error::Host {
                what: "wire the console input",
                source: std::io::Error::other("the serial device was not created"),
            });
        };
        let source = match self.mode {
            ConsoleMode::Terminal => InputSource::Stdin {
                tty: terminal::is_tty(libc::STDIN_FILENO),
                pollable: is_pollable(libc::STDIN_FILENO),
            },
            ConsoleMode::Scripted { .. } => InputSource::Scripted(self.shared.clone()),
        };
        let drained = drained
            .try_clone()
            .map_err(Error::host("clone an eventfd"))?;
        Ok(ConsoleInput::new(serial.clone(), source, drained, exit))
    }
}

/// The device lines the event loop watches.
struct PlatformLines {
    reset: EventFd,
    poweroff: EventFd,
    panic: EventFd,
}

impl PlatformLines {
    fn into_subscriber(
        self,
        exit: Arc<ExitSignal>,
    ) -> Result<(PlatformEvents, EventFd, EventFd), Error> {
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(Error::host("create an eventfd"));
        let stop = eventfd()?;
        let wake = eventfd()?;
        let clone = |fd: &EventFd| fd.try_clone().map_err(Error::host("clone an eventfd"));
        let (stop_evt, wake_evt) = (clone(&stop)?, clone(&wake)?);
        Ok((
            PlatformEvents {
                reset: self.reset,
                poweroff: self.poweroff,
                panic: self.panic,
                stop,
                wake,
                exit,
            },
            stop_evt,
            wake_evt,
        ))
    }
}

fn create_devices(vm: &VmFd, console: &mut ConsoleParts) -> Result<(Buses, PlatformLines), Error> {
    let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(Error::host("create an eventfd"));
    let line = || SignalLine::new().map_err(Error::host("create an eventfd"));
    let clone = |l: &SignalLine| l.try_clone().map_err(Error::host("clone an eventfd"));

    let com1_irq = eventfd()?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)
        .map_err(Error::kvm("register the COM1 irqfd"))?;
    let rx_drained = eventfd()?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        com1_irq,
        rx_drained
            .try_clone()
            .map_err(Error::host("clone an eventfd"))?,
        console.serial_out()?,
    )));
    console.serial = Some(serial.clone());
    console.rx_drained = Some(rx_drained);

    let (reset, poweroff, panic) = (line()?, line()?, line()?);
    let lines = PlatformLines {
        reset: clone(&reset)?,
        poweroff: clone(&poweroff)?,
        panic: clone(&panic)?,
    };
    let mut pio = Bus::new();
    let devices: [(&'static str, u64, u64, SharedDevice); 4] = [
        ("COM1", COM1_PORT, COM1_PORT_LEN, serial),
        (
            "the i8042",
            I8042_PORT,
            I8042_PORT_LEN,
            Arc::new(Mutex::new(I8042::new(reset))),
        ),
        (
            "the ACPI sleep registers",
            ACPI_SLEEP_CONTROL_PORT,
            ACPI_SLEEP_PORT_LEN,
            Arc::new(Mutex::new(SleepControl::new(poweroff))),
        ),
        (
            "pvpanic",
            PVPANIC_PORT,
            1,
            Arc::new(Mutex::new(PvPanic::new(panic))),
        ),
    ];
    for (what, base, len, dev) in devices {
        pio.insert(base, len, dev)
            .map_err(|source| Error::Bus { what, source })?;
    }
    Ok((
        Buses {
            pio,
            mmio: Bus::new(),
        },
        lines,
    ))
}

fn create_vcpus(
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
