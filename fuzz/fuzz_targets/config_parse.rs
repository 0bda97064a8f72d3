//! Configuration parser: `remora_proxy::config::Config::parse(text, path)`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use remora_proxy::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // A directory that does not exist: relative file names in the input
    // (token_file, keys, tls) resolve under it and are never read.
    let path = Path::new("/nonexistent-remora-fuzz/remora.toml");
    if let Err(ConfigError::At { line, col, .. }) = Config::parse(&text, path) {
        assert!(line >= 1 && line <= text.split('\n').count() && col >= 1);
    }
});
