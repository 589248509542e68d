//! virtio-blk with a real Linux guest (tier 3): one boot, two disks. The
//! guest mounts an ext4 image made here, checks a known file, writes a new
//! one and syncs; a read-only disk refuses writes. After poweroff the host
//! finds the new file in the image and the read-only image unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kit::*;
use common::{require_kvm, scratch};
use ember::{DiskConfig, VmExit};

fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install e2fsprogs)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 image holding `known.bin`: 256 KiB of deterministic bytes.
fn ext4_image(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let img = dir.join(name);
    let known: Vec<u8> = (0u32..256 * 1024)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let src = dir.join(format!("{name}.known"));
    std::fs::write(&src, &known).unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    tool(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("write {} known.bin", src.display()))
            .arg(&img),
    );
    (img, known)
}

fn md5(data: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("ember-md5-{}", std::process::id()));
    std::fs::write(&dir, data).unwrap();
    let out = tool(Command::new("md5sum").arg(&dir));
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
#[ignore = "needs /dev/kvm and the guest kit; make test runs it"]
fn guest_uses_an_ext4_disk_and_a_read_only_disk() {
    require_kvm();
    let dir = scratch("linux_disks");
    let (rw, known) = ext4_image(&dir, "rw.ext4");
    let (ro, _) = ext4_image(&dir, "ro.ext4");
    let ro_before = std::fs::read(&ro).unwrap();
    let disks = vec![
        DiskConfig {
            path: rw.clone(),
            read_only: false,
        },
        DiskConfig {
            path: ro.clone(),
            read_only: true,
        },
    ];
    let (mut vm, console, _slot) = boot_with(1, 256 << 20, "console=ttyS0", disks);
    wait_boot(&console, PROMPT);

    assert_eq!(
        run(&console, "cat /sys/block/vda/ro /sys/block/vdb/ro"),
        "0\n1"
    );
    run(&console, "mount /dev/vda /mnt");
    let sum = run(&console, "md5sum /mnt/known.bin");
    assert_eq!(sum.split_whitespace().next().unwrap(), md5(&known));
    run(&console, "echo written-by-the-guest > /mnt/new.txt");
    run(&console, "umount /mnt");
    // Writes to the read-only disk fail in the guest.
    let dd = run(
        &console,
        "dd if=/dev/zero of=/dev/vdb count=1 2>&1; echo rc=$?",
    );
    assert!(dd.ends_with("rc=1"), "{dd}");
    console.send_line("poweroff").unwrap();
    assert_eq!(vm.wait(), VmExit::Poweroff, "{}", console.transcript());

    let new = tool(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat new.txt")
            .arg(&rw),
    );
    assert_eq!(new.trim(), "written-by-the-guest");
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_before,
        "read-only image changed"
    );
}
