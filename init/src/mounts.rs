//! The guest's file systems: the kernel's own, the 9P root (or a tmpfs
//! overlay over it) and volumes, then the switch to the new root.

use std::ffi::CString;

use ember_guest_proto::Spec;

use crate::{check, cstr};

/// 9P over virtio, Linux's dialect, a message size the host's server
/// takes (64 KiB of payload), the page cache kept (one client: the share
/// belongs to this guest while it runs; `sync` before power-off writes it
/// back).
const NINEP_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=65560,cache=loose";

fn mount(
    source: &str,
    target: &[u8],
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let what = format!(
        "mount {fstype} {source} on {}",
        String::from_utf8_lossy(target)
    );
    let (s, t, f) = (
        cstr(source.as_bytes())?,
        cstr(target)?,
        cstr(fstype.as_bytes())?,
    );
    let d = data.map(|d| cstr(d.as_bytes())).transpose()?;
    let dp = d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    check(&what, unsafe {
        libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, dp)
    })
    .map(drop)
}

/// `mkdir -p`: every missing directory of `path`, mode 0755.
pub(crate) fn mkdir_p(path: &[u8]) -> Result<(), String> {
    let mut at = Vec::new();
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        at.push(b'/');
        at.extend_from_slice(part);
        let c = cstr(&at)?;
        // SAFETY: c is a NUL-terminated string.
        if unsafe { libc::mkdir(c.as_ptr(), 0o755) } == -1 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("mkdir {}: {e}", String::from_utf8_lossy(&at)));
            }
        }
    }
    Ok(())
}

/// /dev, /sys and /proc of the initramfs: the port is found through them.
pub(crate) fn early() -> Result<(), String> {
    for (fs, dir) in [("devtmpfs", "/dev"), ("sysfs", "/sys"), ("proc", "/proc")] {
        mkdir_p(dir.as_bytes())?;
        mount(fs, dir.as_bytes(), fs, 0, None)?;
    }
    Ok(())
}

fn ninep(tag: &str, target: &[u8], read_only: bool) -> Result<(), String> {
    let flags = if read_only { libc::MS_RDONLY } else { 0 };
    mount(tag, target, "9p", flags, Some(NINEP_OPTIONS))
}

/// Mounts the root and volumes at /newroot, the kernel's file systems in
/// it, and makes it `/`.
pub(crate) fn prepare_root(spec: &Spec) -> Result<(), String> {
    const NEW: &[u8] = b"/newroot";
    mkdir_p(NEW)?;
    if spec.root.overlay {
        mkdir_p(b"/lower")?;
        ninep(&spec.root.tag, b"/lower", true)?;
        mkdir_p(b"/upper")?;
        mount("tmpfs", b"/upper", "tmpfs", 0, Some("mode=0755"))?;
        mkdir_p(b"/upper/data")?;
        mkdir_p(b"/upper/work")?;
        mount(
            "overlay",
            NEW,
            "overlay",
            0,
            Some("lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work"),
        )?;
    } else {
        ninep(&spec.root.tag, NEW, false)?;
    }
    for v in &spec.volumes {
        let mut at = NEW.to_vec();
        at.extend_from_slice(&v.guest_path);
        mkdir_p(&at)?;
        ninep(&v.tag, &at, v.read_only)?;
    }
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let kernel: [(&str, &[u8], libc::c_ulong, Option<&str>); 7] = [
        ("proc", b"/proc", nosuid, None),
        ("sysfs", b"/sys", nosuid, None),
        ("devtmpfs", b"/dev", libc::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            b"/dev/pts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (
            "tmpfs",
            b"/dev/shm",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            b"/tmp",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            b"/run",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (fs, dir, flags, data) in kernel {
        let mut at = NEW.to_vec();
        at.extend_from_slice(dir);
        mkdir_p(&at)?;
        mount(fs, &at, fs, flags, data)?;
    }
    let new = CString::new(NEW).map_err(|e| e.to_string())?;
    let dot = CString::new(".").map_err(|e| e.to_string())?;
    let slash = CString::new("/").map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated strings that outlive each call.
    unsafe {
        check("chdir /newroot", libc::chdir(new.as_ptr()))?;
        check(
            "move /newroot to /",
            libc::mount(
                dot.as_ptr(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ),
        )?;
        check("chroot", libc::chroot(dot.as_ptr()))?;
        check("chdir /", libc::chdir(slash.as_ptr()))?;
    }
    let host = spec.hostname.as_bytes();
    // SAFETY: host points to host.len() readable bytes.
    check("sethostname", unsafe {
        libc::sethostname(host.as_ptr().cast(), host.len())
    })?;
    Ok(())
}
