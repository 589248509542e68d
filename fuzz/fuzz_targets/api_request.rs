//! The API socket: HTTP requests and JSON bodies, through the parser and
//! both handlers (pre-boot and running).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember::fuzzing::api_request(data);
});
