//! An i8042 PS/2 controller with a keyboard and no mouse: what Linux's
//! i8042 and atkbd drivers need to probe it, the CPU reset line (`reboot=k`
//! writes 0xFE to the command port), and a host-side Ctrl-Alt-Del press
//! (Firecracker's `SendCtrlAltDel`).
//!
//! Everything the guest can make it do is bounded: the output buffer holds
//! at most [`OUTPUT_CAPACITY`] bytes, and each port access does a constant
//! amount of work.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use crate::bus::BusDevice;
use crate::SignalLine;

/// Offset of the command/status port (0x64) from the data port (0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// Bytes the controller holds for the guest to read (a real keyboard
/// buffers 16); what does not fit is dropped, never queued without bound.
pub const OUTPUT_CAPACITY: usize = 16;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited (no key lock).
const STATUS_UNLOCKED: u8 = 0x10;

// Controller configuration byte ("command byte") bits.
const CONFIG_KBD_INTERRUPT: u8 = 0x01;
const CONFIG_SYSTEM: u8 = 0x04;
const CONFIG_KBD_DISABLED: u8 = 0x10;
const CONFIG_AUX_DISABLED: u8 = 0x20;
const CONFIG_TRANSLATE: u8 = 0x40;
/// As firmware leaves it: keyboard interrupt on, translation to scan code
/// set 1 on, the (absent) mouse port disabled.
const CONFIG_AT_POWER_ON: u8 =
    CONFIG_KBD_INTERRUPT | CONFIG_SYSTEM | CONFIG_AUX_DISABLED | CONFIG_TRANSLATE;

// Controller commands (written to the command port).
const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xF0..=0xFF pulse the output port's low four lines for each clear bit;
/// line 0 is the CPU reset (0xFE resets, 0xFF pulses nothing).
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
/// Aux interface test result: clock line stuck low (there is no mouse).
const AUX_CLOCK_STUCK_LOW: u8 = 0x01;
/// Output port: reset line high (not in reset), A20 enabled.
const OUTPUT_PORT_IDLE: u8 = 0x03;
const OUTPUT_PORT_RESET_HIGH: u8 = 0x01;

// Keyboard commands (written to the data port) and its answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_CODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
/// An MF2 keyboard's id, as it sends it after the ACK.
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// The only scan code set this keyboard speaks (and the default).
const SCAN_CODE_SET_2: u8 = 2;

/// Ctrl, Alt, Delete pressed and released, as the keyboard sends them
/// (scan code set 2) and as the controller hands them on when it
/// translates (set 1).
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// A data-port byte the controller or keyboard waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Awaiting {
    /// Nothing: the next data byte is a keyboard command.
    Command,
    /// The new configuration byte (after 0x60).
    Config,
    /// The new output port value (after 0xD1).
    OutputPort,
    /// A byte to hand back as if the keyboard sent it (after 0xD2).
    KbdBuffer,
    /// A byte to loop back (after 0xD3; there is no mouse, see below).
    AuxBuffer,
    /// A byte for the mouse, which is not there (after 0xD4).
    AuxByte,
    /// The argument of a keyboard command (0xED, 0xF0, 0xF3).
    KbdArgument(u8),
}

/// Why a key press did not reach the guest.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the guest has not set up its keyboard controller (no i8042 driver, or not yet)")]
    NoDriver,
    #[error("the guest has its keyboard disabled")]
    Disabled,
    #[error("the keyboard buffer is full: the guest has not read the {0} bytes in it")]
    BufferFull(usize),
}

/// Why a saved state cannot be restored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum I8042StateError {
    #[error("i8042 state holds {0} output bytes, more than its {OUTPUT_CAPACITY}-byte buffer")]
    OutputTooLong(usize),
}

/// Everything of the device a snapshot keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The guest has written the configuration byte (a driver runs).
    pub configured: bool,
    pub config: u8,
    pub last_was_command: bool,
    pub awaiting: Awaiting,
    pub output: Vec<u8>,
    pub kbd_scanning: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            configured: false,
            config: CONFIG_AT_POWER_ON,
            last_was_command: false,
            awaiting: Awaiting::Command,
            output: Vec::new(),
            kbd_scanning: true,
        }
    }
}

pub struct I8042<T: Trigger> {
    reset: SignalLine,
    irq: T,
    configured: bool,
    config: u8,
    last_was_command: bool,
    awaiting: Awaiting,
    output: VecDeque<u8>,
    kbd_scanning: bool,
}

impl<T: Trigger> I8042<T> {
    /// A controller as at power-on; `reset` is the CPU reset line, `irq`
    /// the keyboard's interrupt (IRQ 1, edge).
    pub fn new(reset: SignalLine, irq: T) -> Self {
        Self::from_state(reset, irq, &I8042State::default()).expect("the power-on state is valid")
    }

    pub fn from_state(
        reset: SignalLine,
        irq: T,
        saved: &I8042State,
    ) -> Result<Self, I8042StateError> {
        if saved.output.len() > OUTPUT_CAPACITY {
            return Err(I8042StateError::OutputTooLong(saved.output.len()));
        }
        let restored = Self {
            reset,
            irq,
            configured: saved.configured,
            config: saved.config,
            last_was_command: saved.last_was_command,
            awaiting: saved.awaiting,
            output: saved.output.iter().copied().collect(),
            kbd_scanning: saved.kbd_scanning,
        };
        // An edge the snapshot may have missed (raised just before the
        // interrupt controllers were read): the guest reads one byte per
        // interrupt, so a waiting byte without one would wait for ever.
        // A second edge costs the guest one empty read at most.
        restored.interrupt();
        Ok(restored)
    }

    pub fn state(&self) -> I8042State {
        I8042State {
            configured: self.configured,
            config: self.config,
            last_was_command: self.last_was_command,
            awaiting: self.awaiting,
            output: self.output.iter().copied().collect(),
            kbd_scanning: self.kbd_scanning,
        }
    }

    /// Presses and releases Ctrl, Alt and Delete, all or nothing: the
    /// keys are queued only if the guest's keyboard is on and the buffer
    /// has room for the whole sequence.
    pub fn press_ctrl_alt_del(&mut self) -> Result<(), KeyError> {
        // Before its driver set the controller up, keys would only fill
        // the buffer the driver flushes (and make its flush fail).
        if !self.configured {
            return Err(KeyError::NoDriver);
        }
        if !self.kbd_scanning || self.config & CONFIG_KBD_DISABLED != 0 {
            return Err(KeyError::Disabled);
        }
        let keys: &[u8] = if self.config & CONFIG_TRANSLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        if self.output.len() + keys.len() > OUTPUT_CAPACITY {
            return Err(KeyError::BufferFull(self.output.len()));
        }
        for &b in keys {
            self.push(b);
        }
        Ok(())
    }

    /// Queues a byte for the guest (dropped when the buffer is full) and
    /// raises the interrupt if it is the one the guest reads next.
    fn push(&mut self, byte: u8) {
        if self.output.len() >= OUTPUT_CAPACITY {
            return;
        }
        self.output.push_back(byte);
        if self.output.len() == 1 {
            self.interrupt();
        }
    }

    fn interrupt(&self) {
        if self.config & CONFIG_KBD_INTERRUPT != 0 && !self.output.is_empty() {
            // A failed eventfd write (its counter full) loses nothing the
            // guest needs: the byte stays in the buffer for its next poll.
            let _ = self.irq.trigger();
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if self.config & CONFIG_SYSTEM != 0 {
            s |= STATUS_SYSTEM;
        }
        if !self.output.is_empty() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            s |= STATUS_LAST_WAS_COMMAND;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        // The next byte gets its own edge, as on hardware.
        self.interrupt();
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.awaiting = Awaiting::Command;
        match cmd {
            CMD_READ_CONFIG => self.push(self.config),
            CMD_WRITE_CONFIG => self.awaiting = Awaiting::Config,
            CMD_DISABLE_AUX => self.config |= CONFIG_AUX_DISABLED,
            CMD_ENABLE_AUX => self.config &= !CONFIG_AUX_DISABLED,
            CMD_TEST_AUX => self.push(AUX_CLOCK_STUCK_LOW),
            CMD_SELF_TEST => self.push(SELF_TEST_PASSED),
            CMD_TEST_KBD => self.push(INTERFACE_OK),
            CMD_DISABLE_KBD => self.config |= CONFIG_KBD_DISABLED,
            CMD_ENABLE_KBD => self.config &= !CONFIG_KBD_DISABLED,
            CMD_READ_INPUT_PORT => self.push(0),
            CMD_READ_OUTPUT_PORT => self.push(OUTPUT_PORT_IDLE),
            CMD_WRITE_OUTPUT_PORT => self.awaiting = Awaiting::OutputPort,
            CMD_WRITE_KBD_BUFFER => self.awaiting = Awaiting::KbdBuffer,
            CMD_WRITE_AUX_BUFFER => self.awaiting = Awaiting::AuxBuffer,
            CMD_WRITE_AUX => self.awaiting = Awaiting::AuxByte,
            c if c >= CMD_PULSE_FIRST && c & OUTPUT_PORT_RESET_HIGH == 0 => self.reset.raise(),
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_was_command = false;
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::Command);
        match awaiting {
            Awaiting::Config => {
                self.config = byte;
                self.configured = true;
                // Interrupts just enabled see a byte already waiting.
                self.interrupt();
            }
            Awaiting::OutputPort => {
                if byte & OUTPUT_PORT_RESET_HIGH == 0 {
                    self.reset.raise();
                }
            }
            // After 0xD3 too: there is no mouse, so its byte comes back as
            // keyboard data, and a driver probing for one sees at once that
            // the loop does not work (rather than polling half a second).
            Awaiting::KbdBuffer | Awaiting::AuxBuffer => self.push(byte),
            Awaiting::AuxByte => {}
            Awaiting::KbdArgument(cmd) => self.keyboard_argument(cmd, byte),
            Awaiting::Command => {
                // Sending to the keyboard re-enables its interface.
                self.config &= !CONFIG_KBD_DISABLED;
                self.keyboard_command(byte);
            }
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            KBD_ECHO => self.push(KBD_ECHO),
            KBD_SET_LEDS | KBD_SCAN_CODE_SET | KBD_TYPEMATIC => {
                self.push(KBD_ACK);
                self.awaiting = Awaiting::KbdArgument(cmd);
            }
            KBD_GET_ID => {
                self.push(KBD_ACK);
                for b in KBD_ID {
                    self.push(b);
                }
            }
            KBD_ENABLE => {
                self.kbd_scanning = true;
                self.push(KBD_ACK);
            }
            KBD_DISABLE => {
                self.kbd_scanning = false;
                self.push(KBD_ACK);
            }
            KBD_RESET => {
                self.output.clear();
                self.kbd_scanning = true;
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_PASSED);
            }
            // Set defaults, resend, the set-3 key modes: acknowledged.
            _ => self.push(KBD_ACK),
        }
    }

    fn keyboard_argument(&mut self, cmd: u8, arg: u8) {
        match (cmd, arg) {
            (KBD_SCAN_CODE_SET, 0) => {
                self.push(KBD_ACK);
                self.push(SCAN_CODE_SET_2);
            }
            (KBD_SCAN_CODE_SET, SCAN_CODE_SET_2) => self.push(KBD_ACK),
            // Sets 1 and 3 are refused: the driver then stays on set 2.
            (KBD_SCAN_CODE_SET, _) => self.push(KBD_RESEND),
            _ => self.push(KBD_ACK),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (0, 1) => self.read_data(),
            (COMMAND_OFFSET, 1) => self.status(),
            // Ports 0x61-0x63 and wide accesses: nothing there.
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[byte]) => self.data(byte),
            (COMMAND_OFFSET, &[cmd]) => self.command(cmd),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counts interrupt edges.
    #[derive(Clone, Default)]
    struct Edges(Arc<AtomicU32>);

    impl Edges {
        fn get(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Trigger for Edges {
        type E = std::io::Error;
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn device() -> (I8042<Edges>, Edges, Arc<AtomicU64>) {
        let (line, resets) = SignalLine::counter();
        let edges = Edges::default();
        (I8042::new(line, edges.clone()), edges, resets)
    }

    /// Writes the configuration byte, as a driver does (0x60, then it).
    fn set_config(dev: &mut I8042<Edges>, value: u8) {
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[value]);
    }

    fn status(dev: &mut I8042<Edges>) -> u8 {
        let mut b = [0u8];
        dev.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    /// Reads what the guest would: every byte while the status says full.
    fn drain(dev: &mut I8042<Edges>) -> Vec<u8> {
        let mut out = Vec::new();
        while status(dev) & STATUS_OUTPUT_FULL != 0 {
            let mut b = [0u8];
            dev.read(0, &mut b);
            out.push(b[0]);
        }
        out
    }

    #[test]
    fn linux_probe_sequence_gets_its_answers() {
        let (mut dev, _, resets) = device();
        // i8042_platform_init: A20 on through the output port, a null pulse.
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(0, &[0xdf]);
        dev.write(COMMAND_OFFSET, &[0xff]);
        assert_eq!(resets.load(Ordering::SeqCst), 0, "neither is a reset");
        // Self test, then the configuration byte read twice.
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(drain(&mut dev), [SELF_TEST_PASSED]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CONFIG]);
        assert_eq!(drain(&mut dev), [CONFIG_AT_POWER_ON]);
        assert_ne!(status(&mut dev) & STATUS_UNLOCKED, 0, "no key lock");
        // Interrupts off, keyboard off; written back; keyboard port on.
        let config = (CONFIG_AT_POWER_ON | CONFIG_KBD_DISABLED) & !CONFIG_KBD_INTERRUPT;
        set_config(&mut dev, config);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CONFIG]);
        assert_eq!(drain(&mut dev), [config]);
        // atkbd: get the id, set the LEDs and the rate, enable scanning.
        dev.write(0, &[KBD_GET_ID]);
        assert_eq!(drain(&mut dev), [KBD_ACK, 0xab, 0x83]);
        dev.write(0, &[KBD_SET_LEDS]);
        dev.write(0, &[0x02]);
        dev.write(0, &[KBD_TYPEMATIC]);
        dev.write(0, &[0x20]);
        dev.write(0, &[KBD_ENABLE]);
        assert_eq!(drain(&mut dev), [KBD_ACK; 5]);
        dev.write(0, &[KBD_RESET]);
        assert_eq!(drain(&mut dev), [KBD_ACK, KBD_SELF_TEST_PASSED]);
    }

    #[test]
    fn a_probe_for_the_missing_mouse_fails_at_once() {
        let (mut dev, _, _) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_BUFFER]);
        dev.write(0, &[0x5a]);
        // The byte is there at once, but not marked as the mouse's.
        assert_eq!(
            status(&mut dev) & (STATUS_OUTPUT_FULL | 0x20),
            STATUS_OUTPUT_FULL
        );
        dev.write(COMMAND_OFFSET, &[CMD_TEST_AUX]);
        assert_eq!(drain(&mut dev), [0x5a, AUX_CLOCK_STUCK_LOW]);
    }

    #[test]
    fn scan_code_sets_other_than_2_are_refused() {
        let (mut dev, _, _) = device();
        dev.write(0, &[KBD_SCAN_CODE_SET]);
        dev.write(0, &[0]);
        dev.write(0, &[KBD_SCAN_CODE_SET]);
        dev.write(0, &[3]);
        assert_eq!(
            drain(&mut dev),
            [KBD_ACK, KBD_ACK, SCAN_CODE_SET_2, KBD_ACK, KBD_RESEND]
        );
    }

    #[test]
    fn reset_lines_pulse_only_for_reset_commands() {
        let (mut dev, _, resets) = device();
        dev.write(0, &[0xfe]); // data port: a keyboard resend, not a reset
        dev.write(COMMAND_OFFSET, &[0xad]);
        dev.write(COMMAND_OFFSET, &[0xff]);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        dev.write(COMMAND_OFFSET, &[0xf0]); // pulses every line, reset too
        assert_eq!(resets.load(Ordering::SeqCst), 2);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(0, &[0xfe]); // reset line driven low
        assert_eq!(resets.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn ctrl_alt_del_is_translated_as_the_configuration_says() {
        let (mut dev, edges, _) = device();
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyError::NoDriver));
        set_config(&mut dev, CONFIG_AT_POWER_ON);
        dev.press_ctrl_alt_del().unwrap();
        assert_eq!(edges.get(), 1, "one edge for the first byte");
        assert_eq!(drain(&mut dev), CTRL_ALT_DEL_SET1);
        assert_eq!(edges.get(), 8, "one edge per byte the guest reads");
        set_config(&mut dev, CONFIG_AT_POWER_ON & !CONFIG_TRANSLATE);
        dev.press_ctrl_alt_del().unwrap();
        assert_eq!(drain(&mut dev), CTRL_ALT_DEL_SET2);
    }

    #[test]
    fn no_interrupts_while_the_guest_has_them_off() {
        let (mut dev, edges, _) = device();
        set_config(&mut dev, CONFIG_AT_POWER_ON & !CONFIG_KBD_INTERRUPT);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(edges.get(), 0);
        // Turning them on with a byte waiting raises one.
        set_config(&mut dev, CONFIG_AT_POWER_ON);
        assert_eq!(edges.get(), 1);
    }

    #[test]
    fn keys_need_an_enabled_keyboard_and_room() {
        let (mut dev, _, _) = device();
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyError::NoDriver));
        set_config(&mut dev, CONFIG_AT_POWER_ON);
        dev.write(COMMAND_OFFSET, &[CMD_DISABLE_KBD]);
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyError::Disabled));
        dev.write(COMMAND_OFFSET, &[CMD_ENABLE_KBD]);
        dev.write(0, &[KBD_DISABLE]);
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyError::Disabled));
        dev.write(0, &[KBD_ENABLE]);
        drain(&mut dev);
        dev.press_ctrl_alt_del().unwrap();
        dev.press_ctrl_alt_del().unwrap();
        // A guest that never reads: the third press fits no more, and
        // nothing of it is queued.
        assert_eq!(dev.press_ctrl_alt_del(), Err(KeyError::BufferFull(16)));
        assert_eq!(dev.state().output, [CTRL_ALT_DEL_SET1; 2].concat());
    }

    #[test]
    fn the_output_buffer_is_bounded() {
        let (mut dev, _, _) = device();
        for _ in 0..1000 {
            dev.write(0, &[KBD_GET_ID]);
        }
        assert_eq!(dev.state().output.len(), OUTPUT_CAPACITY);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let (mut dev, _, _) = device();
        set_config(&mut dev, 0x45);
        dev.write(0, &[KBD_SET_LEDS]);
        let saved = dev.state();
        assert_eq!(saved.awaiting, Awaiting::KbdArgument(KBD_SET_LEDS));
        let (line, _) = SignalLine::counter();
        let back = I8042::from_state(line, Edges::default(), &saved).unwrap();
        assert_eq!(back.state(), saved);
        // A restored byte waiting gets its edge.
        let mut waiting = saved.clone();
        waiting.output = vec![0x1d];
        waiting.config = CONFIG_AT_POWER_ON;
        let edges = Edges::default();
        let (line, _) = SignalLine::counter();
        I8042::from_state(line, edges.clone(), &waiting).unwrap();
        assert_eq!(edges.get(), 1);
        let mut bad = saved;
        bad.output = vec![0; OUTPUT_CAPACITY + 1];
        let (line, _) = SignalLine::counter();
        assert_eq!(
            I8042::from_state(line, Edges::default(), &bad).err(),
            Some(I8042StateError::OutputTooLong(OUTPUT_CAPACITY + 1))
        );
    }

    #[test]
    fn wide_and_unknown_accesses_do_nothing() {
        let (mut dev, _, resets) = device();
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe]);
        dev.write(1, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        let mut b = [0xffu8; 2];
        dev.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8];
        dev.read(2, &mut b);
        assert_eq!(b, [0]);
    }
}
