//! Container templates: a container guest booted once, to the point where
//! its init waits for a command, and snapshotted there. A run restores the
//! template (its RAM mapped copy-on-write from the memory file, shared by
//! every run) with the run's own shares and stream attached, and sends the
//! spec: no kernel boot per run.
//!
//! A template is made for one kernel, command line, vCPU count, memory
//! size and Ember build (its init), and holds [`TEMPLATE_SHARES`] share
//! slots: the root and up to four volumes. It is cached by those in
//! `$EMBER_CACHE/templates` (default `~/.cache/ember/templates`); the
//! first run that needs one makes it (one boot), later runs restore it.
//! Making one removes all but the most recently used few
//! (src/container/template_cache.rs).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{ConsoleMode, VmConfig};
use crate::error::Error;
use crate::exit::VmExit;
use crate::restore::RestoreConfig;
use crate::vm::Vm;

use super::template_cache::{self, TemplateLock};

/// Share slots a template has: the root and four volumes.
pub const TEMPLATE_SHARES: u8 = 5;
/// How long a template's boot may take (an emulating host boots the kit
/// in about a minute when idle, far more when busy).
const BOOT_LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the template cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cache directory: set $EMBER_CACHE or $HOME")]
    NoCacheDir,
    #[error("cannot read the kernel {path} (the template's key)")]
    Kernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("booting the template failed")]
    Boot(#[source] Box<Error>),
    #[error("the template's guest ended ({0}) before its init was ready")]
    Ended(String),
    #[error("the template's init was not ready after {0:?}; see --console-log")]
    NotReady(Duration),
    #[error("cannot pause the template")]
    Pause(#[source] crate::pause::PauseError),
    #[error("cannot snapshot the template")]
    Snapshot(#[source] crate::snapshot::SnapshotError),
}

/// How a container run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Restore the template (made first if there is none), when the run
    /// fits one (no disks or interfaces, at most four volumes); else boot.
    Template,
    /// Boot the guest kernel for this run.
    Boot,
}

/// Starts a container run (`config.container` set), CMD's streams on
/// Ember's own stdin, stdout and stderr.
pub fn start(config: &VmConfig, mode: StartMode) -> Result<Vm, Error> {
    start_inner(config, mode, None)
}

/// Starts a container run whose CMD reads `stdio.stdin` and writes
/// `stdio.stdout` and `stdio.stderr` (pipes, sockets or files of the
/// caller's): the library's streams.
pub fn start_with(
    config: &VmConfig,
    mode: StartMode,
    stdio: super::ContainerStdio,
) -> Result<Vm, Error> {
    start_inner(config, mode, Some(stdio))
}

fn start_inner(
    config: &VmConfig,
    mode: StartMode,
    stdio: Option<super::ContainerStdio>,
) -> Result<Vm, Error> {
    let Some(container) = &config.container else {
        return Err(crate::config::ConfigError::NoContainer.into());
    };
    let fits = config.disks.is_empty()
        && config.nets.is_empty()
        && container.shares().len() <= usize::from(TEMPLATE_SHARES);
    if mode == StartMode::Boot || !fits {
        return match stdio {
            Some(stdio) => Vm::start_container(config, stdio),
            None => Vm::start(config),
        };
    }
    config.validate()?;
    // A bad directory is named before any template is made or restored.
    super::check_directories(container)?;
    let ((state, memory), _in_use) = ensure(config)?;
    let mut restore = RestoreConfig::new(state, memory);
    restore.console = config.console.clone();
    restore.seccomp = config.seccomp;
    restore.container = Some(container.clone());
    // The memory file stays mapped after this (a removal cannot touch it).
    Vm::restore_container(&restore, stdio)
}

fn cache_root() -> Result<PathBuf, TemplateError> {
    if let Some(dir) = std::env::var_os("EMBER_CACHE") {
        return Ok(PathBuf::from(dir).join("templates"));
    }
    let home = std::env::var_os("HOME").ok_or(TemplateError::NoCacheDir)?;
    Ok(PathBuf::from(home).join(".cache/ember/templates"))
}

/// What a template depends on, as a name.
fn key(config: &VmConfig) -> Result<String, TemplateError> {
    let mut kernel = Vec::new();
    File::open(&config.kernel)
        .and_then(|mut f| f.read_to_end(&mut kernel))
        .map_err(|source| TemplateError::Kernel {
            path: config.kernel.clone(),
            source,
        })?;
    let described = format!(
        "snapshot format {} | cpus {} | memory {} | pit {} | cmdline {} | shares {} | host {}",
        crate::snapshot::file::FORMAT_VERSION,
        config.cpus,
        config.memory,
        config.pit,
        config.cmdline,
        TEMPLATE_SHARES,
        crate::platform::Host::detect().is_emulating(),
    );
    let mut parts: Vec<&[u8]> = vec![&kernel, super::initramfs::init_bytes()];
    parts.push(described.as_bytes());
    let (mut a, mut b) = (
        crc32fast::Hasher::new(),
        crc32fast::Hasher::new_with_initial(0x9e37_79b9),
    );
    for p in parts {
        a.update(p);
        b.update(p);
        b.update(&(p.len() as u64).to_le_bytes());
    }
    Ok(format!("{:08x}{:08x}", a.finalize(), b.finalize()))
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Cache {
        path: path.to_path_buf(),
        source,
    }
}

/// The template's state and memory files for `config`, made now if the
/// cache has none. Runs that need the same template wait for one maker.
/// The lock returned keeps the clean-up away from the files until the
/// caller has restored from them.
pub(crate) fn ensure(
    config: &VmConfig,
) -> Result<((PathBuf, PathBuf), TemplateLock), TemplateError> {
    let root = cache_root()?;
    std::fs::create_dir_all(&root).map_err(cache_err(&root))?;
    let key = key(config)?;
    let dir = root.join(&key);
    let files = (dir.join("state"), dir.join("memory"));
    let lock_path = root.join(format!("{key}.lock"));
    let lock = TemplateLock::exclusive(&lock_path).map_err(cache_err(&lock_path))?;
    if !(files.0.exists() && files.1.exists()) {
        log::info!(
            "making a container template in {} (one boot)",
            dir.display()
        );
        let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(cache_err(&tmp))?;
        let made = make(config, &tmp.join("state"), &tmp.join("memory"));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(cache_err(&dir))?;
        for old in template_cache::prune(&root, &key) {
            log::info!("removed the old container template {}", old.display());
        }
    }
    template_cache::touch(&dir);
    lock.share().map_err(cache_err(&lock_path))?;
    Ok((files, lock))
}

/// Boots the template and snapshots it once its init is ready.
fn make(config: &VmConfig, state: &Path, memory: &Path) -> Result<(), TemplateError> {
    let mut boot = config.clone();
    boot.container = None;
    boot.console = ConsoleMode::Scripted { echo: false };
    let prepared = super::prepare_template(TEMPLATE_SHARES)
        .map_err(|e| TemplateError::Boot(Box::new(e.into())))?;
    let mut vm =
        Vm::start_template(&boot, prepared).map_err(|e| TemplateError::Boot(Box::new(e)))?;
    let started = Instant::now();
    loop {
        if vm.container_ready() {
            break;
        }
        if let Some(exit) = vm.wait_timeout(Some(Duration::from_millis(5))) {
            return Err(TemplateError::Ended(describe(&exit)));
        }
        if started.elapsed() > BOOT_LIMIT {
            vm.stop();
            return Err(TemplateError::NotReady(BOOT_LIMIT));
        }
    }
    log::info!("container template ready after {:?}", started.elapsed());
    vm.pause().map_err(TemplateError::Pause)?;
    let saved = vm.snapshot(state, memory).map_err(TemplateError::Snapshot);
    vm.stop();
    saved.map(drop)
}

fn describe(exit: &VmExit) -> String {
    format!("{exit:?}")
}
