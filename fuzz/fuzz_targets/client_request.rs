//! A client's request, as Remora's HTTP/1.1 server side reads it: the head
//! (`h1::head::parse`) and, when chunked, the body
//! (`upstream::wire::Chunked`), fed in two parts split where the first byte
//! says.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use remora_proxy::h1::head::{BodyFraming, parse, skip_empty_lines};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    let head = loop {
        skip_empty_lines(&mut buf);
        match parse(&mut buf, 4096) {
            Ok(Some(h)) => break h,
            Ok(None) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(None) => return,
            Err(e) => {
                let _ = e.status();
                return;
            }
        }
    };
    buf.extend_from_slice(rest);
    if head.body == BodyFraming::Chunked {
        remora_fuzz::drain_chunked(&mut buf);
    }
});
