//! The snapshot file parser (envelope, checksum, body).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember::fuzzing::snapshot_file(data);
});
