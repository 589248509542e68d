//! --disk, --net and --memory parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, String, String)| {
    let (disk, net, size) = input;
    let _ = ember::DiskConfig::parse(&disk);
    let _ = ember::NetConfig::parse(&net);
    let _ = ember::parse_size(&size);
});
