//! A sampling profiler of the guest, for finding where a guest kernel spends
//! its time on hosts that emulate it (where the host's own profilers only
//! see KVM's instruction emulator).
//!
//! `EMBER_GUEST_PROFILE=FILE` makes each vCPU thread arm a POSIX timer that
//! sends it the kick signal every [`PERIOD_NS`] of wall time. The kick ends
//! KVM_RUN with EINTR; the thread reads RIP, records it and re-enters the
//! guest. When the vCPU thread ends, it appends `cpu rip` lines (hex RIP) to
//! FILE. `bench/guest-profile.py FILE vmlinux` turns them into a per-function
//! table. Halted vCPUs are sampled too (at the idle loop), so the table
//! splits wall time, not only busy time. A debugging aid: off unless the
//! variable is set, and failures to arm or write are logged, not fatal.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

/// 2 ms: ~500 samples per second of guest wall time per vCPU.
const PERIOD_NS: i64 = 2_000_000;

/// The samples of one vCPU thread and the timer that produces them.
pub struct GuestProfile {
    path: PathBuf,
    cpu: u8,
    timer: libc::timer_t,
    samples: Vec<u64>,
}

impl GuestProfile {
    /// Arms the timer for the calling vCPU thread when the variable is set.
    pub fn from_env(cpu: u8, signal: i32) -> Option<Self> {
        let path = PathBuf::from(std::env::var_os("EMBER_GUEST_PROFILE")?);
        // SAFETY: plain FFI on a zeroed sigevent that targets this thread.
        let timer = unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_THREAD_ID;
            ev.sigev_signo = signal;
            ev.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) != 0 {
                log::warn!(
                    "guest profile: timer_create: {}",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            let period = libc::timespec {
                tv_sec: 0,
                tv_nsec: PERIOD_NS,
            };
            let spec = libc::itimerspec {
                it_interval: period,
                it_value: period,
            };
            if libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) != 0 {
                log::warn!(
                    "guest profile: timer_settime: {}",
                    std::io::Error::last_os_error()
                );
                libc::timer_delete(timer);
                return None;
            }
            timer
        };
        Some(GuestProfile {
            path,
            cpu,
            timer,
            samples: Vec::new(),
        })
    }

    pub fn record(&mut self, rip: u64) {
        self.samples.push(rip);
    }
}

impl Drop for GuestProfile {
    fn drop(&mut self) {
        // SAFETY: the timer was created by from_env and is deleted once.
        unsafe { libc::timer_delete(self.timer) };
        let mut text = String::with_capacity(self.samples.len() * 20);
        for rip in &self.samples {
            text.push_str(&format!("{} {rip:x}\n", self.cpu));
        }
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            log::warn!("guest profile: writing {}: {e}", self.path.display());
        }
    }
}
