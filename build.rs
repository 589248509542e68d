//! Builds `ember-init` (the container guest's PID 1, in init/) as a static
//! executable that Ember carries inside itself: a container run needs only
//! `ember` and a kernel. A nested cargo build with a target directory of
//! its own, so it never waits on the outer build's lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for dir in [
        "init/src",
        "init/Cargo.toml",
        "guest-proto/src",
        "guest-proto/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=EMBER_INIT_BIN");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dest = out.join("ember-init");
    if let Some(prebuilt) = std::env::var_os("EMBER_INIT_BIN") {
        std::fs::copy(&prebuilt, &dest).expect("copy $EMBER_INIT_BIN");
        println!("cargo:rustc-env=EMBER_INIT_PATH={}", dest.display());
        return;
    }
    let target = std::env::var("TARGET").expect("TARGET");
    let target_dir = out.join("init-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "ember-init",
            "--target",
            &target,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags (a fuzzer's sanitizers, clippy's driver,
        // coverage) are not for the guest's init.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\x1f-Cstrip=symbols\x1f-Copt-level=s",
        )
        .status()
        .expect("run cargo to build ember-init");
    assert!(status.success(), "building ember-init failed");
    let built = target_dir.join(&target).join("release").join("ember-init");
    std::fs::copy(&built, &dest).expect("copy ember-init");
    println!("cargo:rustc-env=EMBER_INIT_PATH={}", dest.display());
}
