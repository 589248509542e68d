//! A container's stream as a hostile guest writes it (any bytes, split
//! anywhere), and 9P requests through the file server's patcher.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut chunks = Vec::new();
    while let Ok(len) = u.int_in_range(0..=512usize) {
        match u.bytes(len) {
            Ok(c) if !c.is_empty() => chunks.push(c),
            _ => break,
        }
    }
    ember::fuzzing::container_stream(&chunks);
    for c in &chunks {
        ember::fuzzing::p9_request(c);
    }
});
