//! The kernel command line: a user's arguments with Ember's appended.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, Vec<String>)| {
    let (user, extra) = input;
    ember::fuzzing::cmdline(&user, &extra);
});
