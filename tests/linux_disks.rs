//! virtio-blk and snapshots with a real Linux guest (tier 3): one boot,
//! two disks. The guest mounts an ext4 image made here, checks a known
//! file, writes a new one and syncs; a read-only disk refuses writes. Then,
//! with the disk mounted again, a file in tmpfs and a counter running in
//! the background, the VM is snapshotted and stopped, and restored three
//! times (each on its own copy of the disk): every restore answers at its
//! shell, sees the file, counts on and uses the mounted disk. The host
//! finds the new file in the image and the read-only image unchanged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kit::*;
use common::{require_kvm, scratch};
use ember::{ConsoleMode, DiskConfig, RestoreConfig, StopReason, Vm, VmExit};

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
    let (mut vm, console, slot) = boot_with(1, 256 << 20, "console=ttyS0", disks);
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

    run(&console, "mount /dev/vda /mnt");
    run(&console, "echo made-before-the-snapshot > /tmp/note");
    run(
        &console,
        "(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) &",
    );
    run(&console, "sleep 0.5");
    let counted: u64 = run(&console, "cat /tmp/count").parse().unwrap();
    vm.pause().unwrap();
    let (state, mem) = (dir.join("state"), dir.join("mem"));
    let info = vm.snapshot(&state, &mem).unwrap();
    eprintln!("snapshot of the kit: {info:?}");
    // Each clone gets the disk as it was at the snapshot: two VMs must
    // never write one ext4 image.
    let clones: Vec<PathBuf> = (0..3)
        .map(|i| {
            let c = dir.join(format!("clone{i}.ext4"));
            std::fs::copy(&rw, &c).unwrap();
            c
        })
        .collect();
    assert_eq!(vm.stop(), VmExit::Stopped(StopReason::Requested));
    // Checks the boot's transcript for crash lines, frees the boot slot.
    drop(slot);

    for (i, clone) in clones.iter().enumerate() {
        let mut config = RestoreConfig::new(&state, &mem);
        config.console = ConsoleMode::Scripted {
            echo: std::env::var_os("EMBER_TEST_ECHO").is_some(),
        };
        config.disks = Some(vec![
            DiskConfig {
                path: clone.clone(),
                read_only: false,
            },
            DiskConfig {
                path: ro.clone(),
                read_only: true,
            },
        ]);
        let mut restored = Vm::restore(&config).unwrap();
        let c = restored.console();
        assert_eq!(run(&c, "cat /tmp/note"), "made-before-the-snapshot");
        let first: u64 = run(&c, "cat /tmp/count").parse().unwrap();
        assert!(first >= counted, "clone {i}: count {first} < {counted}");
        run(&c, "sleep 0.5");
        let later: u64 = run(&c, "cat /tmp/count").parse().unwrap();
        assert!(later > first, "clone {i}: the counter stopped at {first}");
        let sum = run(&c, "md5sum /mnt/known.bin");
        assert_eq!(sum.split_whitespace().next().unwrap(), md5(&known));
        let wrote = run(
            &c,
            &format!("echo clone{i} > /mnt/clone.txt && sync && cat /mnt/clone.txt"),
        );
        assert_eq!(wrote, format!("clone{i}"));
        let transcript = c.transcript();
        let crashes = crash_lines(&transcript);
        assert!(crashes.is_empty(), "clone {i}:\n{}", crashes.join("\n"));
        if i < 2 {
            c.send_line("poweroff").unwrap();
            assert_eq!(restored.wait(), VmExit::Poweroff, "{}", c.transcript());
            continue;
        }
        // The last clone ends as Firecracker's SendCtrlAltDel ends a VM:
        // the keys on the i8042, the kernel's keyboard handler signals
        // init, init reboots in order, the reset ends the VM.
        restored.ctrl_alt_del().unwrap();
        assert_eq!(restored.wait(), VmExit::Reboot, "{}", c.transcript());
        let transcript = c.transcript();
        assert!(
            transcript.contains("reboot: Restarting system"),
            "{transcript}"
        );
    }
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
