//! libFuzzer entry point of [`flowctl_fuzz::command`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowctl_fuzz::command(data));
