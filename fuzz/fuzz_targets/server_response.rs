//! A server's response, as the proxy's HTTP/1.1 client reads it: the head
//! (`upstream::wire::parse_head`) and, when chunked, the body
//! (`upstream::wire::Chunked`), fed in two parts split where the first byte
//! says.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use remora_proxy::upstream::wire::{Framing, parse_head};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    let head = loop {
        match parse_head(&mut buf, &Method::GET, 4096) {
            Ok(Some(h)) => break h,
            Ok(None) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            _ => return,
        }
    };
    buf.extend_from_slice(rest);
    if head.framing == Framing::Chunked {
        remora_fuzz::drain_chunked(&mut buf);
    }
});
