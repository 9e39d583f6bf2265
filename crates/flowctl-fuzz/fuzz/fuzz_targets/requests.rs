//! libFuzzer entry point of [`flowctl_fuzz::requests`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowctl_fuzz::requests(data));
