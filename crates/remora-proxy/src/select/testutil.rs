//! Helpers shared by the selection and affinity tests.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Uri};

use super::{EligibilityTable, ServerEntry};

/// Servers `s0..s{n}` with the given weights, none backup.
pub fn servers(weights: &[u32]) -> Vec<ServerEntry> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| ServerEntry::new(format!("s{i}"), w, false))
        .collect()
}

/// Servers with explicit names.
pub fn named(names: &[&str]) -> Vec<ServerEntry> {
    names
        .iter()
        .map(|&n| ServerEntry::new(n, 1, false))
        .collect()
}

/// Everyone ready.
pub fn ready(servers: &[ServerEntry]) -> EligibilityTable {
    EligibilityTable::all_ready(servers)
}

/// An owned request: headers, URI and client IP.
pub struct Req {
    pub headers: HeaderMap,
    pub uri: Uri,
    pub ip: IpAddr,
    pub tls: bool,
}

impl Req {
    pub fn new() -> Self {
        Self {
            headers: HeaderMap::new(),
            uri: Uri::from_static("/"),
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            tls: false,
        }
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            self.headers.append(name, v);
        }
        self
    }

    pub fn key(&self) -> super::RequestKey<'_> {
        super::RequestKey {
            client_ip: self.ip,
            fields: crate::fields::ClientFields::Map(&self.headers),
            uri: &self.uri,
            tls: self.tls,
        }
    }
}
