//! `ember run`: parse flags → VmConfig → Vm::start → wait → exit code.

use clap::Parser;
use ember::cli::{kit_dir, Cli, Command};
use ember::{StopReason, StopSignals, Vm, VmExit};

fn main() {
    let cli = Cli::parse();
    let level = if cli.verbose { "info" } else { "warn" };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    // Logging never blocks a vCPU or the event loop on a stuck stderr.
    if let Ok(w) = ember::LogWriter::stderr() {
        logger.target(env_logger::Target::Pipe(Box::new(w)));
    }
    logger.init();
    ember::terminal::install_panic_hook();
    let code = run(cli);
    // Flushes the log; the VM's close, if one is held, ends elsewhere.
    ember::reaper::exit(code)
}

fn run(cli: Cli) -> u8 {
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Pause(a) => return api_call(&a, "PATCH", "/vm", r#"{"state":"Paused"}"#),
        Command::Resume(a) => return api_call(&a, "PATCH", "/vm", r#"{"state":"Resumed"}"#),
        Command::Stop(a) => return api_call(&a, "PUT", "/actions", r#"{"action_type":"Stop"}"#),
    };

    let config = match args.to_config(&kit_dir()) {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    // Before the start: a signal during it stops the VM once it runs.
    let signals = match StopSignals::install() {
        Ok(s) => s,
        Err(e) => {
            return fail(
                1,
                &ember::Error::Host {
                    what: "install signal handlers",
                    source: e,
                },
            )
        }
    };
    // This process ends right after its VM: the VM's slow close goes to a
    // holder process at exit (src/reaper.rs), so the exit status is out
    // as soon as the disks are flushed and the terminal restored.
    ember::reaper::hold_until_exit();
    // Bound before the start: a bad path fails here, not with a VM running.
    let api_socket = match args.api_sock.as_deref().map(ember::api::ApiSocket::bind) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return fail(2, &e),
    };
    let mut vm = match Vm::start(&config) {
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
    vm.stop_on(signals);
    let exit = vm.wait();
    drop(vm);
    exit_code(&exit)
}

/// `ember pause|resume|stop`: one API request; 0 on success, 1 with the
/// API's message otherwise.
fn api_call(args: &ember::cli::ApiArgs, method: &str, uri: &str, body: &str) -> u8 {
    match ember::api::client::request(&args.api_sock, method, uri, Some(body)) {
        Ok(r) if (200..300).contains(&r.status) => 0,
        Ok(r) => {
            eprintln!("ember: {}", r.message());
            1
        }
        Err(e) => fail(1, &e),
    }
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
    let mut msg = format!("ember: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{msg}");
    code
}
