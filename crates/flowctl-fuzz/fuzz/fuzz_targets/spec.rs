//! libFuzzer entry point of [`flowctl_fuzz::spec`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowctl_fuzz::spec(data));
