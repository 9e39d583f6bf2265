//! libFuzzer entry point of [`flowctl_fuzz::state_codec`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowctl_fuzz::state_codec(data));
