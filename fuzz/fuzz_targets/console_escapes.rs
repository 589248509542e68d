//! The console's Ctrl-A escape filter over input split anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|chunks: Vec<Vec<u8>>| {
    let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    ember::fuzzing::console_escapes(&chunks);
});
