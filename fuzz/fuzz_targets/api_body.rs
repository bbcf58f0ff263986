#![no_main]
// Fuzz target: thermoformer::untrusted::Target::ApiBody (see src/untrusted.rs).
use libfuzzer_sys::fuzz_target;
use thermoformer::untrusted::{feed, Target};

fuzz_target!(|data: &[u8]| {
    let _ = feed(Target::ApiBody, data);
});
