//! What a container run is: plain data and its validation.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ember_guest_proto::{RootShare, Spec, Volume as SpecVolume};

/// Mount tag of the root share; volumes are `ember-vol0`, `ember-vol1`...
pub(crate) const ROOT_TAG: &str = "ember-root";
/// Bytes of arguments and environment a run may pass (Linux's own limit
/// for one execve is 2 MiB; the spec is read whole by the init).
pub const MAX_ARGS_BYTES: usize = 1 << 20;

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    pub host: PathBuf,
    /// Absolute, in the guest.
    pub guest: PathBuf,
    /// Refused writes (EROFS), enforced on the host.
    pub read_only: bool,
}

impl VolumeConfig {
    /// Parses `HOST_DIR:GUEST_DIR[:ro|:rw]`.
    pub fn parse(text: &str) -> Result<Self, ContainerConfigError> {
        let bad = |why: &'static str| ContainerConfigError::Volume {
            text: text.to_string(),
            why,
        };
        let mut parts: Vec<&str> = text.split(':').collect();
        let read_only = match parts.last() {
            Some(&"ro") if parts.len() == 3 => true,
            Some(&"rw") if parts.len() == 3 => false,
            _ if parts.len() == 2 => false,
            _ => return Err(bad("expected HOST_DIR:GUEST_DIR[:ro]")),
        };
        parts.truncate(2);
        let (host, guest) = (parts[0], parts[1]);
        if host.is_empty() {
            return Err(bad("the host directory is empty"));
        }
        if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
            return Err(bad("the guest directory must be absolute, without '..'"));
        }
        Ok(Self {
            host: host.into(),
            guest: guest.into(),
            read_only,
        })
    }
}

/// What a container run adds to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The root directory, shared live (written in place unless `overlay`).
    pub rootfs: PathBuf,
    /// podman's `DIR:O`: writes go to a tmpfs in the guest; DIR is only read.
    pub overlay: bool,
    /// CMD and its arguments (at least CMD).
    pub command: Vec<OsString>,
    /// `KEY=VALUE`, in order; PATH, HOME and HOSTNAME get defaults.
    pub env: Vec<OsString>,
    /// Where CMD starts (created if missing); `/` by default.
    pub workdir: Option<PathBuf>,
    pub volumes: Vec<VolumeConfig>,
    pub hostname: String,
    /// A pseudo-terminal in the guest for CMD, this size (rows, columns);
    /// None: pipes.
    pub tty: Option<(u16, u16)>,
}

impl ContainerConfig {
    pub fn new(rootfs: impl Into<PathBuf>, command: Vec<OsString>) -> Self {
        Self {
            rootfs: rootfs.into(),
            overlay: false,
            command,
            env: Vec::new(),
            workdir: None,
            volumes: Vec::new(),
            hostname: "ember".to_string(),
            tty: None,
        }
    }

    /// Parses `DIR[:O]` into the root and its overlay flag.
    pub fn parse_rootfs(text: &str) -> (PathBuf, bool) {
        match text.strip_suffix(":O") {
            Some(dir) if !dir.is_empty() => (dir.into(), true),
            _ => (text.into(), false),
        }
    }

    /// Everything that can be checked without opening a file.
    pub fn validate(&self) -> Result<(), ContainerConfigError> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(ContainerConfigError::NoCommand);
        }
        let nul = |s: &[u8]| s.contains(&0);
        if self.command.iter().any(|a| nul(a.as_bytes())) {
            return Err(ContainerConfigError::Nul {
                what: "an argument",
            });
        }
        for e in &self.env {
            let b = e.as_bytes();
            if nul(b) {
                return Err(ContainerConfigError::Nul {
                    what: "an environment entry",
                });
            }
            if !b.contains(&b'=') || b.starts_with(b"=") {
                return Err(ContainerConfigError::Env(e.to_string_lossy().into_owned()));
            }
        }
        if let Some(w) = &self.workdir {
            if !w.is_absolute() || nul(w.as_os_str().as_bytes()) {
                return Err(ContainerConfigError::Workdir(w.clone()));
            }
        }
        let total: usize = self
            .command
            .iter()
            .chain(&self.env)
            .map(|a| a.len() + 1)
            .sum();
        if total > MAX_ARGS_BYTES {
            return Err(ContainerConfigError::ArgsTooLong {
                total,
                max: MAX_ARGS_BYTES,
            });
        }
        let hostname_ok = !self.hostname.is_empty()
            && self.hostname.len() <= 64
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !hostname_ok {
            return Err(ContainerConfigError::Hostname(self.hostname.clone()));
        }
        Ok(())
    }

    /// The init's spec.
    pub(crate) fn spec(&self) -> Spec {
        let bytes = |s: &std::ffi::OsStr| s.as_bytes().to_vec();
        Spec {
            args: self.command.iter().map(|a| bytes(a)).collect(),
            env: self.env.iter().map(|e| bytes(e)).collect(),
            workdir: self.workdir.as_ref().map(|w| bytes(w.as_os_str())),
            hostname: self.hostname.clone(),
            root: RootShare {
                tag: ROOT_TAG.to_string(),
                overlay: self.overlay,
            },
            volumes: self
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| SpecVolume {
                    tag: volume_tag(i),
                    guest_path: bytes(v.guest.as_os_str()),
                    read_only: v.read_only,
                })
                .collect(),
            tty: self.tty,
        }
    }

    /// Every share: (tag, host directory, read-only on the host).
    pub(crate) fn shares(&self) -> Vec<(String, &Path, bool)> {
        std::iter::once((ROOT_TAG.to_string(), self.rootfs.as_path(), self.overlay))
            .chain(
                self.volumes
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (volume_tag(i), v.host.as_path(), v.read_only)),
            )
            .collect()
    }
}

fn volume_tag(i: usize) -> String {
    format!("ember-vol{i}")
}

/// The tag of share `i`: the root, then the volumes.
pub(crate) fn share_tag(i: usize) -> String {
    match i {
        0 => ROOT_TAG.to_string(),
        n => volume_tag(n - 1),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerConfigError {
    #[error("no command to run: give one after `--`")]
    NoCommand,
    #[error("{what} holds a NUL byte")]
    Nul { what: &'static str },
    #[error("-e {0:?}: expected KEY=VALUE")]
    Env(String),
    #[error("-w {0}: must be an absolute path")]
    Workdir(PathBuf),
    #[error("-v {text:?}: {why}")]
    Volume { text: String, why: &'static str },
    #[error("--hostname {0:?}: expected 1 to 64 letters, digits, '-' or '.'")]
    Hostname(String),
    #[error("arguments and environment are {total} bytes, over the {max} a run may pass")]
    ArgsTooLong { total: usize, max: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_and_bad_ones_say_why() {
        let v = VolumeConfig::parse("/data:/mnt/data:ro").unwrap();
        assert_eq!(
            (v.host.as_path(), v.guest.as_path(), v.read_only),
            (Path::new("/data"), Path::new("/mnt/data"), true)
        );
        assert!(!VolumeConfig::parse("d:/x").unwrap().read_only);
        for bad in ["d", "d:x", ":/x", "d:/x:rx", "d:/a/../b", "a:b:c:d"] {
            let e = VolumeConfig::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("-v {bad:?}")), "{e}");
        }
    }

    #[test]
    fn rootfs_overlay_suffix() {
        assert_eq!(
            ContainerConfig::parse_rootfs("/r:O"),
            (PathBuf::from("/r"), true)
        );
        assert_eq!(
            ContainerConfig::parse_rootfs("/r"),
            (PathBuf::from("/r"), false)
        );
        assert_eq!(
            ContainerConfig::parse_rootfs(":O"),
            (PathBuf::from(":O"), false)
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let ok = ContainerConfig::new("/r", vec!["sh".into()]);
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.command.clear();
        assert!(matches!(c.validate(), Err(ContainerConfigError::NoCommand)));
        let mut c = ok.clone();
        c.env = vec!["NOEQUALS".into()];
        assert!(c.validate().unwrap_err().to_string().contains("NOEQUALS"));
        let mut c = ok.clone();
        c.command.push(OsString::from("a\0b"));
        assert!(matches!(
            c.validate(),
            Err(ContainerConfigError::Nul { .. })
        ));
        let mut c = ok.clone();
        c.workdir = Some("rel".into());
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.env = vec![OsString::from(format!(
            "BIG={}",
            "x".repeat(MAX_ARGS_BYTES)
        ))];
        assert!(matches!(
            c.validate(),
            Err(ContainerConfigError::ArgsTooLong { .. })
        ));
        let mut c = ok;
        c.hostname = "bad host".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_spec_carries_arguments_exactly() {
        let mut c = ContainerConfig::new(
            "/r",
            vec!["printf".into(), "a b\n\"c\"".into(), "".into(), "é".into()],
        );
        c.env = vec!["K=v w".into()];
        c.volumes = vec![VolumeConfig::parse("/h:/g:ro").unwrap()];
        let s = c.spec();
        assert_eq!(s.args[1], b"a b\n\"c\"");
        assert_eq!(s.args[2], b"");
        assert_eq!(s.args[3], "é".as_bytes());
        assert_eq!(s.volumes[0].tag, "ember-vol0");
        assert!(s.volumes[0].read_only);
        let shares = c.shares();
        assert_eq!(shares[0].0, ROOT_TAG);
        assert_eq!(shares[1], ("ember-vol0".to_string(), Path::new("/h"), true));
    }
}
