#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postel::fuzzing::queue_file(data));
