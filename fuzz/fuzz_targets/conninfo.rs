//! libpq conninfo strings and URIs, as `--source` / `--target` take them:
//! a configuration or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |_: &str| None;
        let _ = pgrepl::conn::ConnConfig::resolve(text, &env);
    }
});
