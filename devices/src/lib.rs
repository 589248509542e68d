//! Ember's emulated devices. Nothing here touches KVM: devices see port or
//! MMIO offsets on a [`bus::Bus`] and signal the VMM through `EventFd`s, so
//! every test in this crate runs without `/dev/kvm`.

pub mod bus;
pub mod i8042;
pub mod pvpanic;
pub mod ratelimit;
pub mod serial;
pub mod sleep;
pub mod virtio;

mod signal_line;
pub use signal_line::SignalLine;
