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
    let Command::Run(args) = cli.command;

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
    let mut vm = match Vm::start(&config) {
        Ok(vm) => vm,
        Err(e) => return fail(if e.is_usage() { 2 } else { 1 }, &e),
    };
    vm.stop_on(signals);
    let exit = vm.wait();
    drop(vm);
    exit_code(&exit)
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
