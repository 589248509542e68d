//! The control API on a Unix socket (`ember run --api-sock PATH`):
//! Firecracker's HTTP API for the endpoints Ember has a meaning for, served
//! on a thread of its own that touches the VM only through `VmControl`, so
//! no client can stall a vCPU or the event loop. See routes.rs for the
//! endpoints, server.rs for the limits; client.rs is the CLI's side.

pub mod client;
pub mod preboot;
pub(crate) mod routes;
pub(crate) mod server;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::VmControl;

pub use server::{IDLE, MAX_CONNECTIONS, MAX_REQUEST};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("--api-sock {0}: a file is already there (remove it, or choose another path)")]
    Exists(PathBuf),
    #[error("--api-sock {path}: cannot listen there")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// The socket's path for `unlink_from_signal`: a leaked C string (a
/// handler may read it at any moment, so it is never freed), null when no
/// socket is bound.
static SOCKET_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Removes the API socket file; async-signal-safe, for a signal that ends
/// the process without running destructors.
pub(crate) fn unlink_from_signal() {
    let p = SOCKET_PATH.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: a NUL-terminated string that is never freed; unlink(2)
        // is async-signal-safe.
        unsafe { libc::unlink(p) };
    }
}

/// A bound API socket, not serving yet: bound before the VM starts, so a
/// bad path fails the start instead of a running VM.
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiSocket {
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::Exists(path.to_path_buf()));
        }
        let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            SOCKET_PATH.store(c.into_raw(), Ordering::SeqCst);
        }
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves the VM behind `vm` until the returned server is dropped.
    pub fn serve(self, vm: VmControl, id: String) -> Result<ApiServer, ApiError> {
        let seccomp = vm.seccomp();
        self.serve_with(Box::new(routes::Running { vm, id }), seccomp)
    }

    /// Serves the pre-boot API; the VM it configures is started by
    /// whoever takes the requests from the returned receiver.
    /// `seccomp`: the API thread runs under its filter.
    pub fn serve_preboot(
        self,
        id: String,
        seccomp: bool,
    ) -> Result<(ApiServer, std::sync::mpsc::Receiver<preboot::LaunchRequest>), ApiError> {
        let (handler, requests) = preboot::PreBoot::new(id, seccomp);
        Ok((self.serve_with(Box::new(handler), seccomp)?, requests))
    }

    fn serve_with(
        self,
        handler: Box<dyn server::Handler>,
        seccomp: bool,
    ) -> Result<ApiServer, ApiError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ApiError::Thread)?;
        let stop_fd = stop.as_raw_fd();
        let listener = self.listener.try_clone().map_err(|source| ApiError::Bind {
            path: self.path.clone(),
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("ember-api".into())
            .spawn(move || {
                crate::signals::block_stop_signals_here();
                if seccomp {
                    crate::seccomp::install_or_log(crate::seccomp::ThreadKind::Api);
                }
                server::serve(listener, stop_fd, handler)
            })
            .map_err(ApiError::Thread)?;
        Ok(ApiServer {
            socket: Some(self),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        // The leaked string stays: a handler may be reading it right now.
        SOCKET_PATH.store(std::ptr::null_mut(), Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The serving API thread. Dropping it stops the thread, closes every
/// connection and removes the socket file.
pub struct ApiServer {
    socket: Option<ApiSocket>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.socket = None;
    }
}
