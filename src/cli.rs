//! The command line: `ember run ...`, a thin shell over `VmConfig`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::{parse_size, ConfigError, ConsoleMode, VmConfig};

#[derive(Debug, Parser)]
#[command(name = "ember", version, about = "A microVM monitor on Linux KVM")]
pub struct Cli {
    /// Log what Ember does (the final kernel command line, devices); RUST_LOG works too.
    /// In a container run, also the guest's console on stderr.
    #[arg(long, global = true)]
    pub verbose: bool,
    /// With no command: serve Firecracker's pre-boot API here (PUT
    /// /boot-source, /machine-config, /drives/ID, /network-interfaces/ID,
    /// then /actions InstanceStart, or /snapshot/load), e.g.
    /// `ember --api-sock /tmp/ember.sock`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// With --api-sock alone: seccomp filters on Ember's threads.
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: Seccomp,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a Linux kernel with COM1 on this terminal. Quit with Ctrl-A x.
    Run(Box<RunArgs>),
    /// Pause a VM started with --api-sock (its vCPUs stop; devices finish what is queued).
    Pause(ApiArgs),
    /// Resume a paused VM started with --api-sock.
    Resume(ApiArgs),
    /// Stop a VM started with --api-sock (disks flushed; `ember run` exits 0).
    Stop(ApiArgs),
    /// Write a full snapshot of a VM started with --api-sock: it is paused
    /// for the snapshot and resumed after (unless --stop or already paused).
    Snapshot(SnapshotArgs),
    /// Start a VM from a snapshot's two files; it runs on from where the
    /// snapshot was taken.
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// The VM's API socket, as given to `ember run --api-sock`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// Where the VM's state goes (created or replaced).
    #[arg(value_name = "SNAPSHOT_PATH")]
    pub snapshot: PathBuf,
    /// Where the guest's RAM goes (created or replaced; sparse).
    #[arg(value_name = "MEM_PATH")]
    pub memory: PathBuf,
    /// End the VM once the snapshot is written.
    #[arg(long)]
    pub stop: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The state file `ember snapshot` wrote.
    #[arg(value_name = "SNAPSHOT_PATH")]
    pub snapshot: PathBuf,
    /// Its memory file (mapped copy-on-write: it is never changed).
    #[arg(value_name = "MEM_PATH")]
    pub memory: PathBuf,
    /// Disks in place of the snapshot's own, in order (as many, same
    /// sizes), e.g. --disk copy.ext4. Default: the snapshot's.
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<String>,
    /// Interfaces in place of the snapshot's own, in order, e.g.
    /// --net tap=tap1 (the guest keeps its MAC unless mac= is given).
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// Leave the guest paused until `ember resume` (needs --api-sock).
    #[arg(long, requires = "api_sock")]
    pub paused: bool,
    /// Serve the control API on a Unix socket created here.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Seccomp filters on Ember's threads (on by default; `off` to debug).
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: Seccomp,
}

impl RestoreArgs {
    pub fn to_config(&self) -> Result<crate::RestoreConfig, CliError> {
        let mut config = crate::RestoreConfig::new(&self.snapshot, &self.memory);
        if !self.disk.is_empty() {
            config.disks = Some(
                self.disk
                    .iter()
                    .map(|d| crate::config::DiskConfig::parse(d))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        if !self.net.is_empty() {
            config.nets = Some(
                self.net
                    .iter()
                    .map(|n| crate::config::NetConfig::parse(n))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        config.resume = !self.paused;
        config.seccomp = self.seccomp.on();
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The VM's API socket, as given to `ember run --api-sock`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Kernel: an ELF vmlinux or a bzImage, e.g. --kernel vmlinux.
    /// Default: the guest kit's target/guest/vmlinux.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk, e.g. --initrd initrd.cpio.gz. Default with the kit
    /// kernel: the kit's target/guest/initramfs.cpio.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// The guest's arguments, e.g. --cmdline "console=ttyS0 quiet". Ember
    /// appends what it needs itself (see --verbose).
    #[arg(long, value_name = "STR", default_value = crate::config::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Number of vCPUs, e.g. --cpus 2.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,
    /// Guest memory with a K/M/G suffix, e.g. --memory 512M or --memory 4G.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub memory: String,
    /// A disk image as the next /dev/vdX (repeatable), e.g. --disk rootfs.ext4
    /// or --disk data.img,ro for read-only.
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<String>,
    /// A network interface as the next ethX (repeatable) over a host TAP,
    /// created if missing, e.g. --net tap=tap0,mac=52:54:00:12:34:56.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// Give the guest an i8254 PIT (off by default: Linux on Ember's
    /// hardware-reduced ACPI platform does not use it), e.g. --pit.
    #[arg(long)]
    pub pit: bool,
    /// Serve Firecracker's control API (GET /, GET /machine-config,
    /// PATCH /vm, PUT /actions) on a Unix socket created here, e.g.
    /// --api-sock /tmp/ember.sock; `ember pause|resume|stop` use it.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Seccomp filters on Ember's threads (on by default; `off` to debug).
    #[arg(long, value_enum, default_value = "on")]
    pub seccomp: Seccomp,
    /// Run CMD (after `--`) in a container whose root is DIR, shared live
    /// (written in place); DIR:O overlays it (writes stay in guest memory),
    /// e.g. `ember run --rootfs ./alpine -- /bin/sh -c 'echo hi'`. Exit
    /// status: CMD's (128+N if killed by signal N, 127 not found, 126 not
    /// executable, 125 Ember's own failure).
    #[arg(long, value_name = "DIR[:O]")]
    pub rootfs: Option<String>,
    /// An environment variable for CMD (repeatable), e.g. -e LANG=C.
    #[arg(
        short = 'e',
        long = "env",
        value_name = "KEY=VALUE",
        requires = "rootfs"
    )]
    pub env: Vec<std::ffi::OsString>,
    /// CMD's working directory in the guest (created if missing).
    #[arg(
        short = 'w',
        long = "workdir",
        value_name = "GUEST_DIR",
        requires = "rootfs"
    )]
    pub workdir: Option<PathBuf>,
    /// Share a host directory at GUEST_DIR (repeatable); `:ro` refuses
    /// writes, e.g. -v ./data:/data:ro.
    #[arg(
        short = 'v',
        long = "volume",
        value_name = "HOST_DIR:GUEST_DIR[:ro]",
        requires = "rootfs"
    )]
    pub volume: Vec<String>,
    /// The container's hostname.
    #[arg(long, value_name = "NAME", requires = "rootfs")]
    pub hostname: Option<String>,
    /// Where the guest's console goes in a container run (kernel and init
    /// messages); written when the run ends.
    #[arg(long, value_name = "FILE", requires = "rootfs")]
    pub console_log: Option<PathBuf>,
    /// Boot the guest kernel for this container run instead of restoring
    /// the cached template of a booted init (made by the first run).
    #[arg(long, requires = "rootfs")]
    pub boot: bool,
    /// A pseudo-terminal for CMD in the guest, this terminal in raw mode
    /// (Ctrl-C reaches CMD as SIGINT), its size passed on.
    #[arg(short = 't', long = "tty", requires = "rootfs")]
    pub tty: bool,
    /// CMD and its arguments, after `--`, for a container run.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// `--seccomp on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Seccomp {
    On,
    Off,
}

impl Seccomp {
    pub fn on(self) -> bool {
        self == Seccomp::On
    }
}

/// Where the guest kit's outputs are: $EMBER_GUEST_DIR, else target/guest
/// next to the directory holding this executable (target/release/ember
/// → target/guest), else ./target/guest.
pub fn kit_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMBER_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("guest")));
    match beside_exe {
        Some(dir) if dir.join("vmlinux").exists() => dir,
        _ => PathBuf::from("target/guest"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no --kernel given and the guest kit kernel {0} is not built; build it with `make guest` (or pass --kernel PATH)")]
    NoKitKernel(PathBuf),
    #[error("a command after `--` needs --rootfs DIR (the container's root)")]
    CommandWithoutRootfs,
    #[error("--rootfs needs a command after `--`, e.g. `ember run --rootfs DIR -- /bin/sh`")]
    RootfsWithoutCommand,
    #[error("--initrd: a container run boots Ember's own initramfs")]
    InitrdWithRootfs,
    #[error(transparent)]
    Container(#[from] crate::container::ContainerConfigError),
}

impl RunArgs {
    /// A container run (`--rootfs` or a command after `--`).
    pub fn is_container(&self) -> bool {
        self.rootfs.is_some() || !self.command.is_empty()
    }

    fn container(&self) -> Result<Option<crate::container::ContainerConfig>, CliError> {
        use crate::container::{ContainerConfig, VolumeConfig};
        let rootfs = match (&self.rootfs, self.command.is_empty()) {
            (None, true) => return Ok(None),
            (None, false) => return Err(CliError::CommandWithoutRootfs),
            (Some(_), true) => return Err(CliError::RootfsWithoutCommand),
            (Some(r), false) => r,
        };
        if self.initrd.is_some() {
            return Err(CliError::InitrdWithRootfs);
        }
        let (dir, overlay) = ContainerConfig::parse_rootfs(rootfs);
        let mut c = ContainerConfig::new(dir, self.command.clone());
        c.overlay = overlay;
        c.env = self.env.clone();
        c.workdir = self.workdir.clone();
        c.volumes = self
            .volume
            .iter()
            .map(|v| VolumeConfig::parse(v))
            .collect::<Result<_, _>>()?;
        if let Some(h) = &self.hostname {
            c.hostname = h.clone();
        }
        if self.tty {
            c.tty = Some(crate::terminal::window_size().unwrap_or((24, 80)));
        }
        c.validate()?;
        Ok(Some(c))
    }

    pub fn to_config(&self, kit: &Path) -> Result<VmConfig, CliError> {
        let container = self.container()?;
        let (kernel, default_initrd) = match &self.kernel {
            Some(k) => (k.clone(), None),
            None => {
                let k = kit.join("vmlinux");
                if !k.exists() {
                    return Err(CliError::NoKitKernel(k));
                }
                (k, Some(kit.join("initramfs.cpio")))
            }
        };
        let memory = parse_size(&self.memory).map_err(|_| ConfigError::Size {
            text: self.memory.clone(),
        })?;
        let disks = self
            .disk
            .iter()
            .map(|d| crate::config::DiskConfig::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let nets = self
            .net
            .iter()
            .map(|n| crate::config::NetConfig::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let default_initrd = default_initrd.filter(|_| container.is_none());
        let config = VmConfig {
            disks,
            nets,
            kernel,
            initrd: self.initrd.clone().or(default_initrd),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory,
            console: match container {
                // The guest's console is kept (for --console-log) and
                // shown only with --verbose: stdout and stderr are CMD's.
                Some(_) => ConsoleMode::Scripted { echo: false },
                None => ConsoleMode::Terminal,
            },
            pit: self.pit,
            seccomp: self.seccomp.on(),
            container,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["ember", "run"];
        full.extend(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Some(Command::Run(a)) => *a,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn api_commands_need_the_socket() {
        let c = Cli::try_parse_from(["ember", "pause", "--api-sock", "/tmp/s"]).unwrap();
        assert!(matches!(c.command, Some(Command::Pause(a)) if a.api_sock == Path::new("/tmp/s")));
        let c = Cli::try_parse_from(["ember", "--api-sock", "/tmp/p"]).unwrap();
        assert!(c.command.is_none() && c.api_sock.as_deref() == Some(Path::new("/tmp/p")));
        assert!(Cli::try_parse_from(["ember", "stop"]).is_err());
        assert_eq!(
            args(&["--api-sock", "/tmp/a"]).api_sock.as_deref(),
            Some(Path::new("/tmp/a"))
        );
    }

    #[test]
    fn restore_flags_become_a_restore_config() {
        let c = Cli::try_parse_from([
            "ember", "restore", "s", "m", "--disk", "d.img,ro", "--net", "tap=t1",
        ])
        .unwrap();
        let Some(Command::Restore(a)) = c.command else {
            panic!("not a restore")
        };
        let r = a.to_config().unwrap();
        assert_eq!(
            (r.snapshot.as_path(), r.memory.as_path()),
            (Path::new("s"), Path::new("m"))
        );
        assert!(r.disks.unwrap()[0].read_only);
        assert_eq!(r.nets.unwrap()[0].tap, "t1");
        assert!(r.resume);
        assert!(
            Cli::try_parse_from(["ember", "restore", "s", "m", "--paused"]).is_err(),
            "--paused without a socket could never be resumed"
        );
        assert!(Cli::try_parse_from(["ember", "snapshot", "--api-sock", "a", "s"]).is_err());
    }

    #[test]
    fn flags_become_a_config() {
        let c = args(&[
            "--kernel",
            "vmlinux",
            "--initrd",
            "i.gz",
            "--cpus",
            "2",
            "--memory",
            "512M",
            "--cmdline",
            "console=ttyS0 quiet",
        ])
        .to_config(Path::new("/nowhere"))
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("vmlinux"));
        assert_eq!(c.initrd, Some(PathBuf::from("i.gz")));
        assert_eq!((c.cpus, c.memory), (2, 512 << 20));
        assert_eq!(c.cmdline, "console=ttyS0 quiet");
    }

    #[test]
    fn the_kit_is_the_default_and_its_absence_says_how_to_build_it() {
        let e = args(&[]).to_config(Path::new("/nowhere")).unwrap_err();
        assert!(e.to_string().contains("make guest"), "{e}");
        let dir = std::env::temp_dir().join(format!("ember-kit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), b"x").unwrap();
        let c = args(&[]).to_config(&dir).unwrap();
        assert_eq!(c.kernel, dir.join("vmlinux"));
        assert_eq!(c.initrd, Some(dir.join("initramfs.cpio")));
    }

    #[test]
    fn a_command_after_dashes_is_a_container_run() {
        let kit = Path::new("/nowhere");
        let a = args(&[
            "--kernel", "k", "--rootfs", "/r:O", "-e", "A=1", "-w", "/work", "-v", "/h:/g:ro",
            "--", "sh", "-c", "echo hi",
        ]);
        assert!(a.is_container());
        let c = a.to_config(kit).unwrap();
        let ct = c.container.unwrap();
        assert_eq!(ct.rootfs, PathBuf::from("/r"));
        assert!(ct.overlay);
        assert_eq!(ct.command, ["sh", "-c", "echo hi"]);
        assert_eq!(ct.env, ["A=1"]);
        assert!(ct.volumes[0].read_only);
        assert_eq!(c.initrd, None);
        assert!(matches!(c.console, ConsoleMode::Scripted { .. }));
        let e = args(&["--kernel", "k", "--", "sh"])
            .to_config(kit)
            .unwrap_err();
        assert!(matches!(e, CliError::CommandWithoutRootfs), "{e}");
        let e = args(&["--kernel", "k", "--rootfs", "/r"])
            .to_config(kit)
            .unwrap_err();
        assert!(matches!(e, CliError::RootfsWithoutCommand), "{e}");
        let e = args(&["--kernel", "k", "--rootfs", "/r", "-e", "X", "--", "sh"])
            .to_config(kit)
            .unwrap_err();
        assert!(e.to_string().contains("\"X\""), "{e}");
        assert!(
            Cli::try_parse_from(["ember", "run", "-e", "A=1"]).is_err(),
            "-e needs --rootfs"
        );
        assert!(!args(&[]).is_container());
    }

    #[test]
    fn bad_sizes_and_counts_name_the_flag() {
        let e = args(&["--kernel", "k", "--memory", "lots"])
            .to_config(Path::new("."))
            .unwrap_err();
        assert!(e.to_string().starts_with("--memory \"lots\""), "{e}");
        let e = args(&["--kernel", "k", "--cpus", "0"])
            .to_config(Path::new("."))
            .unwrap_err();
        assert!(e.to_string().starts_with("--cpus 0"), "{e}");
        assert!(Cli::try_parse_from(["ember", "run", "--cpus", "300"]).is_err());
    }
}
