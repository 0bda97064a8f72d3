//! PROXY protocol v1 (text) and v2 (binary) header parsing.
//!
//! Strict and bounded: a v1 header is at most 107 bytes, a v2 header at most
//! 16 + [`MAX_V2_PAYLOAD`] bytes. The reader consumes exactly the header and
//! nothing after it, so the HTTP stream that follows is untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that starts a v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (from the specification).
pub const MAX_V1_LEN: usize = 107;
/// Largest v2 payload accepted (addresses plus TLVs).
pub const MAX_V2_PAYLOAD: usize = 1024;

/// Why a PROXY header was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The stream does not start with a PROXY header.
    #[error("missing PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// Reading failed.
    #[error("reading PROXY protocol header")]
    Io(#[source] std::io::Error),
}

/// What the header says about the original connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedAddr {
    /// The original client address.
    Source(SocketAddr),
    /// `UNKNOWN` / `LOCAL` / unsupported family: keep the socket's peer address.
    Unknown,
}

fn io(e: std::io::Error) -> ProxyHeaderError {
    ProxyHeaderError::Io(e)
}

/// Reads one PROXY header (v1 or v2) from `r`.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxiedAddr, ProxyHeaderError> {
    let mut start = [0u8; 6];
    r.read_exact(&mut start).await.map_err(io)?;
    if &start == b"PROXY " {
        let mut line = Vec::with_capacity(MAX_V1_LEN);
        line.extend_from_slice(&start);
        loop {
            if line.len() >= MAX_V1_LEN {
                return Err(ProxyHeaderError::Malformed("v1 header too long"));
            }
            let b = r.read_u8().await.map_err(io)?;
            line.push(b);
            if line.ends_with(b"\r\n") {
                break;
            }
        }
        parse_v1(&line)
    } else if start[..] == V2_SIGNATURE[..6] {
        let mut head = [0u8; 16];
        head[..6].copy_from_slice(&start);
        r.read_exact(&mut head[6..]).await.map_err(io)?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > MAX_V2_PAYLOAD {
            return Err(ProxyHeaderError::Malformed("v2 payload too long"));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await.map_err(io)?;
        parse_v2(&head, &payload)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

/// Parses a complete v1 line (`PROXY ... \r\n`).
pub fn parse_v1(line: &[u8]) -> Result<ProxiedAddr, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 not ASCII"))?;
    let text = text.strip_suffix("\r\n").ok_or(bad("v1 missing CRLF"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad("v1 missing PROXY"));
    }
    let family = parts.next().ok_or(bad("v1 missing family"))?;
    if family == "UNKNOWN" {
        return Ok(ProxiedAddr::Unknown);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(bad("v1 needs 4 fields"));
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| bad("v1 bad IPv4"))?
                .into(),
            dst.parse::<Ipv4Addr>()
                .map_err(|_| bad("v1 bad IPv4"))?
                .into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| bad("v1 bad IPv6"))?
                .into(),
            dst.parse::<Ipv6Addr>()
                .map_err(|_| bad("v1 bad IPv6"))?
                .into(),
        ),
        _ => return Err(bad("v1 unknown family")),
    };
    let _ = dst;
    let port = |p: &str| -> Result<u16, ProxyHeaderError> {
        if p.is_empty() || p.len() > 5 || (p.len() > 1 && p.starts_with('0')) {
            return Err(bad("v1 bad port"));
        }
        p.parse().map_err(|_| bad("v1 bad port"))
    };
    let sport = port(sport)?;
    port(dport)?;
    Ok(ProxiedAddr::Source(SocketAddr::new(src, sport)))
}

/// Parses a v2 header: the 16 fixed bytes and the payload.
pub fn parse_v2(head: &[u8; 16], payload: &[u8]) -> Result<ProxiedAddr, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    if head[..12] != V2_SIGNATURE {
        return Err(bad("v2 bad signature"));
    }
    let ver_cmd = head[12];
    if ver_cmd >> 4 != 2 {
        return Err(bad("v2 bad version"));
    }
    match ver_cmd & 0x0f {
        0 => return Ok(ProxiedAddr::Unknown), // LOCAL
        1 => {}                               // PROXY
        _ => return Err(bad("v2 bad command")),
    }
    let fam = head[13];
    match fam >> 4 {
        1 => {
            if payload.len() < 12 {
                return Err(bad("v2 short IPv4 block"));
            }
            let ip = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
            let port = u16::from_be_bytes([payload[8], payload[9]]);
            Ok(ProxiedAddr::Source(SocketAddr::new(ip.into(), port)))
        }
        2 => {
            if payload.len() < 36 {
                return Err(bad("v2 short IPv6 block"));
            }
            let mut b = [0u8; 16];
            b.copy_from_slice(&payload[..16]);
            let port = u16::from_be_bytes([payload[32], payload[33]]);
            Ok(ProxiedAddr::Source(SocketAddr::new(
                Ipv6Addr::from(b).into(),
                port,
            )))
        }
        0 | 3 => Ok(ProxiedAddr::Unknown),
        _ => Err(bad("v2 bad address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<ProxiedAddr, ProxyHeaderError> {
        let mut r = bytes;
        read_header(&mut r).await
    }

    #[tokio::test]
    async fn v1_tcp4_and_rest_untouched() {
        let data = b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        let mut r = &data[..];
        let a = read_header(&mut r).await.unwrap();
        assert_eq!(a, ProxiedAddr::Source("192.0.2.7:5555".parse().unwrap()));
        assert_eq!(r, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v1_tcp6_unknown_and_errors() {
        let a = read(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n").await.unwrap();
        assert_eq!(a, ProxiedAddr::Source("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(
            read(b"PROXY UNKNOWN\r\n").await.unwrap(),
            ProxiedAddr::Unknown
        );
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(
                read(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        assert!(matches!(
            read(&long).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn v2_ipv4_ipv6_local_and_bounds() {
        let p4 = [203, 0, 113, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80, 0xAA];
        let a = read(&v2(1, 0x11, &p4)).await.unwrap();
        assert_eq!(a, ProxiedAddr::Source("203.0.113.9:8080".parse().unwrap()));
        let mut p6 = vec![0u8; 36];
        p6[15] = 1;
        p6[32] = 0;
        p6[33] = 7;
        let a = read(&v2(1, 0x21, &p6)).await.unwrap();
        assert_eq!(a, ProxiedAddr::Source("[::1]:7".parse().unwrap()));
        assert_eq!(read(&v2(0, 0, &[])).await.unwrap(), ProxiedAddr::Unknown);
        assert!(read(&v2(1, 0x11, &p4[..5])).await.is_err());
        assert!(read(&v2(5, 0x11, &p4)).await.is_err());
        let mut huge = v2(1, 0x11, &p4);
        huge[14] = 0xff;
        assert!(read(&huge).await.is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(read(&data));
            let mut with_sig = V2_SIGNATURE.to_vec();
            with_sig.extend_from_slice(&data);
            let _ = rt.block_on(read(&with_sig));
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&data);
            let _ = rt.block_on(read(&v1));
        }
    }
}
