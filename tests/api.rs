//! The API socket end to end: the real `ember run --api-sock` with a tiny
//! guest that prints dots, driven by `ember pause|resume|stop` and by raw
//! clients (garbage, an oversized request, a client that sends half a
//! request and waits), none of which may disturb the VM or the others.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ember::api::client::request;

const LIMIT: Duration = Duration::from_secs(20);

fn ember(args: &[&str]) -> std::process::Output {
    Command::new(ember_bin()).args(args).output().unwrap()
}

fn state(sock: &Path) -> String {
    let r = request(sock, "GET", "/", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

/// Bytes the guest has printed so far (stdout goes to a file).
fn printed(out: &Path) -> u64 {
    std::fs::metadata(out).map(|m| m.len()).unwrap_or(0)
}

fn wait_growth(out: &Path, from: u64) {
    let deadline = Instant::now() + LIMIT;
    while printed(out) <= from {
        assert!(Instant::now() < deadline, "no guest output for {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn raw_exchange(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

fn start(dir: &Path, sock: &Path) -> Child {
    let elf = tiny_guest("api_ticker", "ticker.S");
    let out = std::fs::File::create(dir.join("out")).unwrap();
    let child = Command::new(ember_bin())
        .args(["run", "--memory", "32M", "--kernel"])
        .arg(&elf)
        .arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "no API socket at {sock:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn pause_resume_and_stop_through_the_api_and_bad_clients_cost_nothing() {
    require_kvm();
    let dir = scratch("api");
    let sock = dir.join("api.sock");
    let out = dir.join("out");
    let mut child = start(&dir, &sock);
    wait_growth(&out, "ready\n".len() as u64);
    assert_eq!(state(&sock), "Running");
    let mc = request(&sock, "GET", "/machine-config", None).unwrap();
    assert!(mc.body.contains(r#""mem_size_mib":32"#), "{}", mc.body);

    // A client that sends half a request and waits holds only itself.
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"st")
        .unwrap();

    let p = ember(&["pause", "--api-sock", sock.to_str().unwrap()]);
    assert!(p.status.success(), "{}", text(&p.stderr));
    assert_eq!(state(&sock), "Paused");
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = printed(&out);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(printed(&out), paused_at, "the guest printed while paused");

    let garbage = raw_exchange(&sock, b"\x00\x01 nonsense\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(garbage.contains("fault_message"), "{garbage}");
    let huge = format!(
        "PUT /actions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        ember::api::MAX_REQUEST
    );
    let refused = raw_exchange(&sock, huge.as_bytes());
    assert!(refused.contains("larger than"), "{refused}");
    let bad = request(&sock, "PATCH", "/vm", Some(r#"{"state":"Frozen"}"#)).unwrap();
    assert_eq!(bad.status, 400);
    assert!(
        bad.message().contains("unknown variant `Frozen`"),
        "{}",
        bad.body
    );
    assert_eq!(state(&sock), "Paused", "bad requests changed nothing");

    // A client that half-closes after its request still gets the reply.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    half.set_read_timeout(Some(LIMIT)).unwrap();
    half.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("Paused"),
        "{reply}"
    );
    // Every slot taken by idle clients: a new client still gets served.
    let idle: Vec<UnixStream> = (0..ember::api::MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(&sock), "Paused");
    drop(idle);

    let r = ember(&["resume", "--api-sock", sock.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(state(&sock), "Running");
    wait_growth(&out, paused_at);

    drop(slow);
    let s = ember(&["stop", "--api-sock", sock.to_str().unwrap()]);
    assert!(s.status.success(), "{}", text(&s.stderr));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "ember still running after stop");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert!(!sock.exists(), "the socket file is removed at exit");
    let gone = ember(&["pause", "--api-sock", sock.to_str().unwrap()]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        text(&gone.stderr).contains("cannot reach the API"),
        "{}",
        text(&gone.stderr)
    );
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn send_ctrl_alt_del_presses_the_keys_on_the_guests_keyboard() {
    require_kvm();
    let dir = scratch("api_cad");
    let sock = dir.join("api.sock");
    let out = dir.join("out");
    let elf = tiny_guest("api_cad", "keyboard.S");
    let child = spawn_ember(
        &[
            "run".as_ref(),
            "--memory".as_ref(),
            "32M".as_ref(),
            "--kernel".as_ref(),
            elf.as_os_str(),
            "--api-sock".as_ref(),
            sock.as_os_str(),
        ],
        &out,
    );
    wait_socket(&sock);
    wait_growth(&out, 0);
    let r = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    // The guest prints what it read, then resets: a reboot ends the VM.
    let (code, err) = exit_of(child);
    assert_eq!(code, Some(0), "stderr: {err}");
    let printed = std::fs::read_to_string(&out).unwrap();
    assert_eq!(printed, "ready\n1d 38 e0 53 e0 d3 b8 9d \n");
}

/// Each endpoint through curl, as a user drives it from a shell: states,
/// a snapshot, bad bodies, the wrong state, the keys, the stop.
#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn curl_drives_every_endpoint() {
    require_kvm();
    let dir = scratch("api_curl");
    let sock = dir.join("api.sock");
    let out = dir.join("out");
    let mut child = start(&dir, &sock);
    wait_growth(&out, 0);
    let curl = |method: &str, path: &str, body: Option<&str>| -> (u16, String) {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&sock)
            .args(["-X", method]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-raw", b]);
        }
        c.arg(format!("http://localhost{path}"));
        let o = c
            .output()
            .expect("curl is installed (resources/install-deps.sh)");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
        (code.parse().expect("an HTTP status"), body.to_string())
    };
    let (code, body) = curl("GET", "/", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""state":"Running""#), "{body}");
    let (code, body) = curl("GET", "/machine-config", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""mem_size_mib":32"#), "{body}");
    let snap = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": dir.join("state"),
        "mem_file_path": dir.join("mem"),
    })
    .to_string();
    // The wrong state: a snapshot of a running VM.
    let (code, body) = curl("PUT", "/snapshot/create", Some(&snap));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("fault_message"), "{body}");
    // Bad JSON, an unknown field, an unknown path.
    let (code, body) = curl("PATCH", "/vm", Some("{not json"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl("PATCH", "/vm", Some(r#"{"state":"Paused","extra":1}"#));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field `extra`"), "{body}");
    assert_eq!(curl("GET", "/no-such-thing", None).0, 400);
    assert!(
        curl("GET", "/", None).1.contains("Running"),
        "nothing changed"
    );
    assert_eq!(curl("PATCH", "/vm", Some(r#"{"state":"Paused"}"#)).0, 204);
    assert!(curl("GET", "/", None).1.contains(r#""state":"Paused""#));
    let (code, body) = curl("PUT", "/snapshot/create", Some(&snap));
    assert_eq!(code, 204, "{body}");
    assert!(dir.join("state").exists() && dir.join("mem").exists());
    assert_eq!(curl("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#)).0, 204);
    // This guest has no keyboard driver: the press is refused, saying so.
    let cad = r#"{"action_type":"SendCtrlAltDel"}"#;
    let (code, body) = curl("PUT", "/actions", Some(cad));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("not set up its keyboard controller"),
        "{body}"
    );
    assert_eq!(
        curl("PUT", "/actions", Some(r#"{"action_type":"Stop"}"#)).0,
        204
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_existing_file_at_the_socket_path_is_a_usage_error_naming_it() {
    let dir = scratch("api_exists");
    let sock = dir.join("taken");
    std::fs::write(&sock, b"mine").unwrap();
    let out = Command::new(ember_bin())
        .args([
            "run",
            "--kernel",
            "/nonexistent-but-not-reached",
            "--api-sock",
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--api-sock") && err.contains("taken"), "{err}");
    assert_eq!(
        std::fs::read(&sock).unwrap(),
        b"mine",
        "the file is untouched"
    );
}

/// The "n=" counts a counter guest printed into `out`.
fn printed_counts(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.strip_prefix("n=")?.get(..16)?, 16).ok())
        .collect()
}

fn wait_counts(out: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let c = printed_counts(out);
        if c.len() >= n {
            return c;
        }
        assert!(Instant::now() < deadline, "{} counts in {LIMIT:?}", c.len());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spawn_ember(args: &[&std::ffi::OsStr], out: &Path) -> Child {
    Command::new(ember_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_socket(sock: &Path) {
    let deadline = Instant::now() + LIMIT;
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "no API socket at {sock:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn exit_of(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stderr))
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn ember_snapshot_and_ember_restore_from_the_command_line() {
    require_kvm();
    let dir = scratch("api_snapshot");
    let elf = tiny_guest("api_snapshot_guest", "counter.S");
    let sock = dir.join("api.sock");
    let out = dir.join("out");
    let os = |s: &str| std::ffi::OsString::from(s);
    let run = spawn_ember(
        &[
            &os("run"),
            &os("--memory"),
            &os("32M"),
            &os("--kernel"),
            elf.as_os_str(),
            &os("--api-sock"),
            sock.as_os_str(),
        ],
        &out,
    );
    wait_socket(&sock);
    wait_counts(&out, 2);
    // Relative paths are the client's: `ember snapshot` makes them absolute.
    let snap = Command::new(ember_bin())
        .current_dir(&dir)
        .args(["snapshot", "--api-sock"])
        .arg(&sock)
        .args(["state", "mem"])
        .output()
        .unwrap();
    assert!(snap.status.success(), "{}", text(&snap.stderr));
    assert_eq!(state(&sock), "Running", "resumed after the snapshot");
    let r = request(
        &sock,
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path":"/x","mem_file_path":"/y"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.message().contains("pause it first"), "{}", r.message());
    let stop = ember(&["stop", "--api-sock", sock.to_str().unwrap()]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    assert_eq!(exit_of(run).0, Some(0));
    let before = printed_counts(&out);

    let sock2 = dir.join("restored.sock");
    let out2 = dir.join("out2");
    let restored = spawn_ember(
        &[
            &os("restore"),
            dir.join("state").as_os_str(),
            dir.join("mem").as_os_str(),
            &os("--paused"),
            &os("--api-sock"),
            sock2.as_os_str(),
        ],
        &out2,
    );
    wait_socket(&sock2);
    assert_eq!(state(&sock2), "Paused");
    let resume = ember(&["resume", "--api-sock", sock2.to_str().unwrap()]);
    assert!(resume.status.success(), "{}", text(&resume.stderr));
    let after = wait_counts(&out2, 1);
    // The snapshot was taken after the last count printed before it (the
    // guest printed on after being resumed): the restored guest goes on
    // from a count the first run had passed, not from zero.
    assert!(
        after[0] > before[1] && after[0] <= *before.last().unwrap() + 0x400,
        "restored at {:#x}; the first run printed {before:x?}",
        after[0]
    );
    assert!(!std::fs::read_to_string(&out2).unwrap().contains("ready"));
    let stop = ember(&["stop", "--api-sock", sock2.to_str().unwrap()]);
    assert!(stop.status.success());
    assert_eq!(exit_of(restored).0, Some(0));

    // A damaged snapshot: exit 2, the file named.
    std::fs::write(dir.join("state"), b"EMBERSNP\x01").unwrap();
    let bad = ember(&[
        "restore",
        dir.join("state").to_str().unwrap(),
        dir.join("mem").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let msg = text(&bad.stderr);
    assert!(
        msg.contains("state: truncated or damaged snapshot header"),
        "{msg}"
    );
}

fn put_ok(sock: &Path, uri: &str, body: &str) {
    let r = request(sock, "PUT", uri, Some(body)).unwrap();
    assert_eq!(r.status, 204, "PUT {uri} {body}: {}", r.body);
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn the_pre_boot_api_starts_a_vm_and_loads_a_snapshot() {
    require_kvm();
    let dir = scratch("api_preboot");
    let elf = tiny_guest("api_preboot_guest", "counter.S");
    let sock = dir.join("api.sock");
    let out = dir.join("out");
    let os = |s: &str| std::ffi::OsString::from(s);
    let vmm = spawn_ember(&[&os("--api-sock"), sock.as_os_str()], &out);
    wait_socket(&sock);
    assert_eq!(state(&sock), "Not started");
    let boot = serde_json::json!({ "kernel_image_path": elf, "boot_args": "console=ttyS0" });
    put_ok(&sock, "/boot-source", &boot.to_string());
    put_ok(
        &sock,
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":32}"#,
    );
    // A bad start is a 400 that names the problem; the VMM waits on.
    let bad = serde_json::json!({ "kernel_image_path": dir.join("none") });
    put_ok(&sock, "/boot-source", &bad.to_string());
    let r = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.message().contains("none"), "{}", r.message());
    put_ok(&sock, "/boot-source", &boot.to_string());
    put_ok(&sock, "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert_eq!(state(&sock), "Running");
    wait_counts(&out, 2);
    let r = request(&sock, "GET", "/machine-config", None).unwrap();
    assert!(
        r.body.contains(r#""vcpu_count":2,"mem_size_mib":32"#),
        "{}",
        r.body
    );
    let again = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    )
    .unwrap();
    assert_eq!(again.status, 400, "started twice: {}", again.body);
    request(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#)).unwrap();
    let create = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": dir.join("state"),
        "mem_file_path": dir.join("mem"),
    });
    put_ok(&sock, "/snapshot/create", &create.to_string());
    let last = *printed_counts(&out).last().unwrap();
    put_ok(&sock, "/actions", STOP_BODY);
    assert_eq!(exit_of(vmm).0, Some(0));

    let sock2 = dir.join("load.sock");
    let out2 = dir.join("out2");
    let vmm = spawn_ember(&[&os("--api-sock"), sock2.as_os_str()], &out2);
    wait_socket(&sock2);
    let load = serde_json::json!({
        "snapshot_path": dir.join("state"),
        "mem_backend": { "backend_type": "File", "backend_path": dir.join("mem") },
        "resume_vm": true,
    });
    put_ok(&sock2, "/snapshot/load", &load.to_string());
    assert_eq!(state(&sock2), "Running");
    assert_eq!(
        wait_counts(&out2, 1)[0],
        last + 0x400,
        "on from the snapshot"
    );
    put_ok(&sock2, "/actions", STOP_BODY);
    assert_eq!(exit_of(vmm).0, Some(0));
}

const STOP_BODY: &str = r#"{"action_type":"Stop"}"#;
