//! PROXY protocol v1/v2: the streaming `read_header` and the `parse_v1` /
//! `parse_v2` parsers, on the same bytes.
#![no_main]

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use remora_proxy::proxy_protocol::{MAX_V1_LEN, MAX_V2_PAYLOAD, parse_v1, parse_v2, read_header};

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let result = read_header(&mut r)
        .now_or_never()
        .expect("an in-memory stream never waits");
    let used = data.len() - r.len();
    assert!(used <= MAX_V1_LEN.max(16 + MAX_V2_PAYLOAD));
    if data.starts_with(b"PROXY ") && result.is_ok() {
        let line = parse_v1(&data[..used]).map_err(|e| e.to_string());
        assert_eq!(line, result.map_err(|e| e.to_string()));
    }
    let _ = parse_v1(data);
    if data.len() >= 16 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&data[..16]);
        let _ = parse_v2(&head, &data[16..]);
    }
});
