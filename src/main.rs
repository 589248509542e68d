//! `ember run`: parse flags → VmConfig → Vm::start → wait → exit code.

use std::path::Path;

use clap::Parser;
use ember::cli::{kit_dir, Cli, Command};
use ember::{error_chain, StopReason, StopSignals, Vm, VmExit};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A container run's own failures exit 125, as podman's do.
            let container = std::env::args().any(|a| a == "--" || a.starts_with("--rootfs"));
            if container && e.use_stderr() {
                let _ = e.print();
                std::process::exit(125);
            }
            e.exit()
        }
    };
    // A container run prints nothing but CMD's streams: Ember's own
    // warnings (a guest's misbehaving driver, say) only with --verbose.
    let container = matches!(&cli.command, Some(Command::Run(a)) if a.is_container());
    let level = match (cli.verbose, container) {
        (true, _) => "info",
        (false, true) => "error",
        (false, false) => "warn",
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    // Logging never blocks a vCPU or the event loop on a stuck stderr.
    let seccomp = match &cli.command {
        Some(Command::Run(a)) => a.seccomp.on(),
        Some(Command::Restore(a)) => a.seccomp.on(),
        None => cli.seccomp.on(),
        Some(_) => false,
    };
    if let Ok(w) = ember::LogWriter::stderr(seccomp) {
        logger.target(env_logger::Target::Pipe(Box::new(w)));
    }
    logger.init();
    ember::terminal::install_panic_hook();
    if !seccomp {
        log::info!("seccomp filters are off (--seccomp off)");
    }
    let verbose = cli.verbose;
    let code = run(cli, verbose);
    // Flushes the log; the VM's close, if one is held, ends elsewhere.
    ember::reaper::exit(code)
}

fn run(cli: Cli, verbose: bool) -> u8 {
    let command = match (cli.command, cli.api_sock) {
        (Some(c), None) => c,
        (None, Some(sock)) => return preboot(&sock, cli.seccomp.on()),
        (Some(_), Some(_)) => {
            eprintln!(
                "ember: --api-sock before a command serves the pre-boot API; \
                 give it after the command (e.g. `ember run --api-sock PATH`)"
            );
            return 2;
        }
        (None, None) => {
            eprintln!("ember: give a command (ember run, ember restore, ...) or --api-sock PATH; see ember --help");
            return 2;
        }
    };
    match command {
        Command::Run(args) if args.is_container() => match args.to_config(&kit_dir()) {
            Ok(mut config) => {
                config.console = ember::ConsoleMode::Scripted { echo: verbose };
                let mode = match args.boot {
                    true => ember::container::StartMode::Boot,
                    false => ember::container::StartMode::Template,
                };
                run_container(&config, mode, args.console_log.as_deref())
            }
            Err(e) => fail(125, &e),
        },
        Command::Run(args) => match args.to_config(&kit_dir()) {
            Ok(config) => serve(|| Vm::start(&config), args.api_sock.as_deref()),
            Err(e) => fail(2, &e),
        },
        Command::Restore(args) => match args.to_config() {
            Ok(config) => serve(|| Vm::restore(&config), args.api_sock.as_deref()),
            Err(e) => fail(2, &e),
        },
        Command::Pause(a) => api_call(&a.api_sock, "PATCH", "/vm", r#"{"state":"Paused"}"#),
        Command::Resume(a) => api_call(&a.api_sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#),
        Command::Stop(a) => api_call(&a.api_sock, "PUT", "/actions", STOP),
        Command::Snapshot(a) => snapshot(&a),
    }
}

const STOP: &str = r#"{"action_type":"Stop"}"#;

/// `ember --api-sock PATH`: Firecracker's pre-boot API; the VM it
/// configures (or the snapshot it loads) is started here, on the main
/// thread, which then waits on it as `ember run` does.
fn preboot(sock: &Path, seccomp: bool) -> u8 {
    use ember::api::preboot::Launch;
    use std::sync::mpsc::RecvTimeoutError;
    let signals = match prepare_to_run() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let socket = match ember::api::ApiSocket::bind(sock) {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    let id = format!("ember-{}", std::process::id());
    let (server, requests) = match socket.serve_preboot(id, seccomp) {
        Ok(s) => s,
        Err(e) => return fail(1, &e),
    };
    loop {
        if let Some(n) = signals.take() {
            drop(server);
            return 128u8.saturating_add(n as u8);
        }
        let request = match requests.recv_timeout(std::time::Duration::from_millis(10)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return 1,
        };
        let started = match request.launch {
            Launch::Boot(config) => Vm::start(&config),
            Launch::Restore(config) => Vm::restore(&config),
        };
        match started {
            Ok(mut vm) => {
                let _ = request.reply.send(Ok(vm.control()));
                if let Err(e) = filter_main(&vm) {
                    drop(vm);
                    drop(server);
                    return fail(1, &e);
                }
                vm.stop_on(signals);
                let exit = vm.wait();
                drop(vm);
                drop(server);
                return exit_code(&exit);
            }
            Err(e) => {
                log::warn!("API start failed: {}", error_chain(&e));
                let _ = request.reply.send(Err(error_chain(&e)));
            }
        }
    }
}

/// What a process that runs one VM sets up before the start: the stop
/// signals (a signal during the start stops the VM once it runs), and the
/// holder for the VM's close (this process ends right after its VM: the
/// slow close goes to a holder process at exit, src/reaper.rs, so the exit
/// status is out as soon as the disks are flushed and the terminal
/// restored). Err: the exit code, the failure printed.
fn prepare_to_run() -> Result<StopSignals, u8> {
    let signals = StopSignals::install().map_err(|e| {
        fail(
            1,
            &ember::Error::Host {
                what: "install signal handlers",
                source: e,
            },
        )
    })?;
    ember::reaper::hold_until_exit();
    Ok(signals)
}

/// Starts a VM with `start`, serves its API on `api_sock` if given, and
/// waits for its end; returns the exit code.
fn serve(start: impl FnOnce() -> Result<Vm, ember::Error>, api_sock: Option<&Path>) -> u8 {
    let signals = match prepare_to_run() {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Bound before the start: a bad path fails here, not with a VM running.
    let api_socket = match api_sock.map(ember::api::ApiSocket::bind) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return fail(2, &e),
    };
    let mut vm = match start() {
        Ok(vm) => vm,
        Err(e) => return fail(if e.is_usage() { 2 } else { 1 }, &e),
    };
    // Dropped before this function returns: thread joined, socket removed.
    let _api =
        match api_socket.map(|s| s.serve(vm.control(), format!("ember-{}", std::process::id()))) {
            None => None,
            Some(Ok(server)) => Some(server),
            Some(Err(e)) => {
                drop(vm);
                return fail(1, &e);
            }
        };
    if let Err(e) = filter_main(&vm) {
        drop(vm);
        return fail(1, &e);
    }
    vm.stop_on(signals);
    let exit = vm.wait();
    drop(vm);
    exit_code(&exit)
}

/// `ember run --rootfs DIR -- CMD`: CMD's exit status, podman's codes (125
/// for Ember's own failure or the guest's); a stop signal goes to CMD
/// first.
fn run_container(
    config: &ember::VmConfig,
    mode: ember::container::StartMode,
    console_log: Option<&Path>,
) -> u8 {
    use ember::container::ContainerEnd;
    // Opened before the VM (and the main thread's filter) starts.
    let mut log_file = match console_log.map(std::fs::File::create).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "ember: --console-log {}: {e}",
                console_log.unwrap_or(Path::new("")).display()
            );
            return 125;
        }
    };
    let signals = match prepare_to_run() {
        Ok(s) => s,
        Err(_) => return 125,
    };
    // -t: this terminal goes raw (restored when the guard drops, and on
    // every other exit path), so Ctrl-C is a byte for CMD's terminal.
    let raw = config
        .container
        .as_ref()
        .and_then(|c| c.tty)
        .map(|_| ember::terminal::RawMode::enter_fully());
    let _raw = match raw.transpose() {
        Ok(r) => r.flatten(),
        Err(e) => {
            eprintln!("ember: cannot put the terminal in raw mode: {e}");
            return 125;
        }
    };
    // -t: a resized terminal resizes CMD's.
    if config.container.as_ref().is_some_and(|c| c.tty.is_some()) {
        if let Err(e) = signals.watch_window_size() {
            eprintln!("ember: cannot watch the terminal's size: {e}");
            return 125;
        }
    }
    let mut vm = match ember::container::start(config, mode) {
        Ok(vm) => vm,
        Err(e) => return fail(125, &e),
    };
    if let Err(e) = filter_main(&vm) {
        drop(vm);
        return fail(125, &e);
    }
    vm.stop_on(signals);
    let exit = vm.wait();
    if let Some(f) = log_file.as_mut() {
        use std::io::Write;
        if let Err(e) = f.write_all(vm.console().transcript().as_bytes()) {
            eprintln!("ember: --console-log: {e}");
        }
    }
    let end = vm.container_end();
    drop(vm);
    log::logger().flush();
    match (end, &exit) {
        // CMD's status, once it came, whatever ended the VM after it.
        (Some(ContainerEnd::Exited(code)), _) => code,
        (_, VmExit::Stopped(StopReason::Signal(n))) => 128u8.saturating_add(*n as u8),
        (Some(ContainerEnd::InitFailed(why)), _) => {
            eprintln!("ember: the container's init failed: {why}");
            125
        }
        (Some(ContainerEnd::StreamBroken(why)), _) => {
            eprintln!("ember: the guest broke the container's stream ({why})");
            125
        }
        (_, VmExit::Crash(c)) => {
            eprintln!("ember: {c}");
            125
        }
        (_, VmExit::HostError(_)) => {
            eprintln!("ember: {exit}");
            125
        }
        (None, _) => {
            eprintln!(
                "ember: the VM ended ({exit:?}) before CMD's exit status came; see --console-log"
            );
            125
        }
    }
}

/// The main thread's own filter, once its VM runs (it only waits and
/// tears down from here on).
fn filter_main(vm: &Vm) -> Result<(), ember::seccomp::SeccompError> {
    if vm.control().seccomp() {
        ember::seccomp::install(ember::seccomp::ThreadKind::Main)?;
    }
    Ok(())
}

/// `ember pause|resume|stop`: one API request; 0 on success, 1 with the
/// API's message otherwise.
fn api_call(sock: &Path, method: &str, uri: &str, body: &str) -> u8 {
    match ember::api::client::request(sock, method, uri, Some(body)) {
        Ok(r) if (200..300).contains(&r.status) => 0,
        Ok(r) => {
            eprintln!("ember: {}", r.message());
            1
        }
        Err(e) => fail(1, &e),
    }
}

/// `ember snapshot`: pause (if running), create, then resume or stop.
fn snapshot(a: &ember::cli::SnapshotArgs) -> u8 {
    let sock = a.api_sock.as_path();
    let info = match ember::api::client::request(sock, "GET", "/", None) {
        Ok(r) => r,
        Err(e) => return fail(1, &e),
    };
    let state = serde_json::from_str::<serde_json::Value>(&info.body)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string));
    let was_running = state.as_deref() == Some("Running");
    if was_running {
        let code = api_call(sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
        if code != 0 {
            return code;
        }
    }
    // The VM's process may have another working directory.
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let body = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": absolute(&a.snapshot),
        "mem_file_path": absolute(&a.memory),
    })
    .to_string();
    let created = api_call(sock, "PUT", "/snapshot/create", &body);
    let after = match (a.stop, was_running) {
        (true, _) => api_call(sock, "PUT", "/actions", STOP),
        (false, true) => api_call(sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#),
        (false, false) => 0,
    };
    created.max(after)
}

/// 0 clean poweroff/reboot or console quit · 1 host failure · 3 guest crash ·
/// 128+N stopped by signal N.
fn exit_code(exit: &VmExit) -> u8 {
    log::logger().flush();
    match exit {
        VmExit::Poweroff | VmExit::Reboot => 0,
        VmExit::Stopped(StopReason::ConsoleQuit | StopReason::Requested) => 0,
        VmExit::Stopped(StopReason::Signal(n)) => 128u8.saturating_add(*n as u8),
        VmExit::Crash(c) => {
            eprintln!("ember: {c}");
            3
        }
        VmExit::HostError(_) => {
            // "Ember failed: what: why", the whole chain.
            eprintln!("ember: {exit}");
            1
        }
    }
}

fn fail(code: u8, e: &dyn std::error::Error) -> u8 {
    // Log lines before the error line.
    log::logger().flush();
    ember::terminal::restore_terminal();
    // Each message says what failed; its source says why.
    eprintln!("ember: {}", error_chain(e));
    code
}
