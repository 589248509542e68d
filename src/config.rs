//! What a VM is made of: plain data and its validation. Nothing here opens
//! a file or touches KVM; the builder checks what needs the host.

use std::path::PathBuf;

use crate::layout::{CMDLINE_MAX, MAX_CPUS, MAX_VIRTIO_DEVICES, PAGE_SIZE};

/// Default guest memory: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Smallest guest memory Ember accepts: room for the boot structures below
/// 1 MiB and a small kernel above it.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Default guest arguments when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// Where the guest's COM1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleMode {
    /// Standard input and output of this process; raw mode when stdin is a
    /// terminal, with Ctrl-A x to quit.
    Terminal,
    /// Driven through [`crate::Console`]: input sent by the program,
    /// output kept in a transcript; `echo` copies output to stderr too.
    /// The guest's init sees `EMBER_CONSOLE=scripted` (the kit then turns
    /// the console's echo and line editing off); a program relaying a
    /// person's keys passes `EMBER_CONSOLE=terminal` in the command line.
    Scripted { echo: bool },
}

/// A virtio-blk disk backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Opened O_RDONLY and advertised with VIRTIO_BLK_F_RO.
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses `PATH[,ro]`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (path, read_only) = match text.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some((_, opt)) => {
                return Err(ConfigError::DiskOption {
                    text: text.to_string(),
                    option: opt.to_string(),
                })
            }
            None => (text, false),
        };
        if path.is_empty() {
            return Err(ConfigError::EmptyPath { flag: "--disk" });
        }
        Ok(Self {
            path: path.into(),
            read_only,
        })
    }
}

/// A virtio-net interface over a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP interface; Ember creates it if it does not exist.
    pub tap: String,
    /// The guest's MAC; a random locally administered one when None.
    pub mac: Option<[u8; 6]>,
}

impl NetConfig {
    /// Parses `tap=NAME[,mac=MAC]`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Net {
            text: text.to_string(),
            why: why.to_string(),
        };
        let (mut tap, mut mac) = (None, None);
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) if !name.is_empty() && name.len() < 16 => {
                    tap = Some(name.to_string())
                }
                Some(("tap", _)) => return Err(bad("the TAP name must be 1 to 15 bytes")),
                Some(("mac", m)) => {
                    mac = Some(
                        parse_mac(m)
                            .ok_or_else(|| bad("the MAC must look like 52:54:00:12:34:56"))?,
                    )
                }
                _ => return Err(bad("expected tap=NAME[,mac=MAC]")),
            }
        }
        Ok(Self {
            tap: tap.ok_or_else(|| bad("tap=NAME is required"))?,
            mac,
        })
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Everything needed to start a VM. Build one, call [`VmConfig::validate`]
/// (or let [`crate::Vm::start`] do it), then start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// ELF vmlinux (with or without a PVH note) or bzImage.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The guest's own arguments; Ember appends what it needs itself.
    pub cmdline: String,
    pub cpus: u8,
    /// Guest RAM in bytes, a multiple of 4 KiB.
    pub memory: u64,
    pub console: ConsoleMode,
    /// Disks in order: /dev/vda, /dev/vdb, ...
    pub disks: Vec<DiskConfig>,
    /// Network interfaces in order: eth0, eth1, ...
    pub nets: Vec<NetConfig>,
    /// An in-kernel i8254 PIT. Off by default: Linux on Ember's
    /// hardware-reduced ACPI platform never touches it (it uses kvm-clock
    /// and the LAPIC timer), and a PIT makes closing the VM ~7.7 ms slower
    /// here (`cargo bench --bench floor`). On for guests that need one.
    pub pit: bool,
    /// A seccomp filter on each of this VM's threads (src/seccomp): on by
    /// default; off only to debug.
    pub seccomp: bool,
    /// Run a command in a container instead of the kernel's own init:
    /// Ember's init, the root and volumes shared, CMD's streams on
    /// Ember's (see [`crate::container`]). `initrd` is then Ember's own.
    pub container: Option<crate::container::ContainerConfig>,
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            cpus: 1,
            memory: DEFAULT_MEMORY,
            console: ConsoleMode::Terminal,
            disks: Vec::new(),
            nets: Vec::new(),
            pit: false,
            seccomp: true,
            container: None,
        }
    }

    /// Virtio devices the VM gets: disks, interfaces and, for a
    /// container, its console and one share per directory.
    pub fn virtio_device_count(&self) -> usize {
        let container = self.container.as_ref().map_or(0, |c| 2 + c.volumes.len());
        self.disks.len() + self.nets.len() + container
    }

    /// Checks every field that can be checked without the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath { flag: "--kernel" });
        }
        if matches!(&self.initrd, Some(p) if p.as_os_str().is_empty()) {
            return Err(ConfigError::EmptyPath { flag: "--initrd" });
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus {
                value: self.cpus.into(),
                max: MAX_CPUS.into(),
            });
        }
        if self.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall { value: self.memory });
        }
        if self.memory % PAGE_SIZE != 0 {
            return Err(ConfigError::MemoryNotAligned { value: self.memory });
        }
        if let Some(c) = &self.container {
            c.validate()?;
        }
        let devices = self.virtio_device_count();
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices {
                count: devices,
                max: MAX_VIRTIO_DEVICES,
            });
        }
        if self.disks.iter().any(|d| d.path.as_os_str().is_empty()) {
            return Err(ConfigError::EmptyPath { flag: "--disk" });
        }
        validate_cmdline(&self.cmdline)
    }
}

fn validate_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    if let Some(pos) = cmdline.bytes().position(|b| !(b' '..=b'~').contains(&b)) {
        return Err(ConfigError::CmdlineChar {
            byte: cmdline.as_bytes()[pos],
            pos,
        });
    }
    if cmdline.len() >= CMDLINE_MAX {
        return Err(ConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    Ok(())
}

/// Parses a size such as `512M`, `2G`, `65536K` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::Size {
        text: text.to_string(),
    };
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last().ok_or_else(bad)? {
        (i, 'k' | 'K') => (&t[..i], 10),
        (i, 'm' | 'M') => (&t[..i], 20),
        (i, 'g' | 'G') => (&t[..i], 30),
        (i, 't' | 'T') => (&t[..i], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(transparent)]
    Container(#[from] crate::container::ContainerConfigError),
    #[error("a container start needs VmConfig::container (the root and the command)")]
    NoContainer,
    #[error("{flag}: the path is empty")]
    EmptyPath { flag: &'static str },
    #[error("--cpus {value}: must be between 1 and {max}")]
    Cpus { value: u32, max: u32 },
    #[error("--cpus {value}: KVM on this host allows at most {max} vCPUs")]
    CpusAboveKvm { value: u32, max: u32 },
    #[error("--memory {value} bytes: must be at least 4M")]
    MemoryTooSmall { value: u64 },
    #[error("--memory {value} bytes: must be a multiple of 4K (4096 bytes)")]
    MemoryNotAligned { value: u64 },
    #[error("--memory {value} bytes: more than this host's {host} bytes of RAM")]
    MemoryAboveHost { value: u64, host: u64 },
    #[error("--memory {text:?}: not a size (examples: 512M, 2G, 65536K)")]
    Size { text: String },
    #[error("--cmdline: byte {byte:#04x} at position {pos} is not printable ASCII")]
    CmdlineChar { byte: u8, pos: usize },
    #[error("--cmdline: {len} bytes is too long (at most {max})")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "--cmdline: with Ember's own arguments ({extra:?}) the command line exceeds {max} bytes"
    )]
    CmdlineNoRoom { extra: String, max: usize },
    #[error("--disk {text:?}: unknown option {option:?} (use PATH or PATH,ro)")]
    DiskOption { text: String, option: String },
    #[error("{count} virtio devices: at most {max} fit the IRQ lines")]
    TooManyDevices { count: usize, max: usize },
    #[error("--net {text:?}: {why}")]
    Net { text: String, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig::new("/boot/vmlinux")
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in [
            "",
            "M",
            "12Q",
            "-1G",
            "1.5G",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(
                matches!(parse_size(bad), Err(ConfigError::Size { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn disk_specs_parse() {
        assert_eq!(
            DiskConfig::parse("a.img,ro"),
            Ok(DiskConfig {
                path: "a.img".into(),
                read_only: true
            })
        );
        assert_eq!(
            DiskConfig::parse("dir,x/b.img"),
            Err(ConfigError::DiskOption {
                text: "dir,x/b.img".into(),
                option: "x/b.img".into()
            })
        );
        assert!(!DiskConfig::parse("b.img").unwrap().read_only);
        assert_eq!(
            DiskConfig::parse(",ro"),
            Err(ConfigError::EmptyPath { flag: "--disk" })
        );
    }

    #[test]
    fn net_specs_parse() {
        assert_eq!(
            NetConfig::parse("tap=tap0,mac=52:54:00:12:34:56"),
            Ok(NetConfig {
                tap: "tap0".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            })
        );
        assert_eq!(NetConfig::parse("tap=t1").unwrap().mac, None);
        for bad in [
            "",
            "tap=",
            "mac=52:54:00:12:34:56",
            "tap=x,mac=52:54",
            "tap=x,mac=zz:54:00:12:34:56",
            "tap=x,y=1",
            "tap=sixteen-bytes-xx",
        ] {
            assert!(
                matches!(NetConfig::parse(bad), Err(ConfigError::Net { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(cfg().validate(), Ok(()));
    }

    #[test]
    fn bad_fields_name_their_flag() {
        let mut c = cfg();
        c.memory = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--memory"));
        c.memory = (256 << 20) + 100;
        assert_eq!(
            c.validate(),
            Err(ConfigError::MemoryNotAligned { value: c.memory })
        );
        let mut c = cfg();
        c.cpus = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--cpus 0"));
        c.cpus = 255;
        assert!(matches!(c.validate(), Err(ConfigError::Cpus { .. })));
        let mut c = cfg();
        c.cmdline = "console=ttyS0\0evil".into();
        assert_eq!(
            c.validate(),
            Err(ConfigError::CmdlineChar { byte: 0, pos: 13 })
        );
        c.cmdline = "a".repeat(CMDLINE_MAX);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
        let mut c = cfg();
        c.kernel = "".into();
        assert_eq!(
            c.validate(),
            Err(ConfigError::EmptyPath { flag: "--kernel" })
        );
    }
}
