//! The ELF and bzImage loaders on arbitrary files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember::fuzzing::kernel_file(data);
});
