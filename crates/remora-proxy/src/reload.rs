//! The run-time snapshot ([`Runtime`]) built from a [`Config`], and how a
//! reload builds the next one from the previous.
//!
//! A snapshot is immutable and swapped atomically (`ArcSwap`): a request
//! keeps the snapshot it started with. Live facts that must survive a reload
//! (server health, state, counters) live in [`crate::pool::ServerLive`] and
//! are carried over for servers that keep their name and address; the
//! keyring is kept when the config has no `[keys]` so affinity cookies stay
//! valid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use remora_seal::{Keyring, KeyringError, Purpose, Sealer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, ListenerConfig};
use crate::pool::Pool;
use crate::tls::{self, TlsError};

/// Why a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener's TLS material is unusable.
    #[error("listener {listener:?}: TLS")]
    Tls {
        /// Listener name.
        listener: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// A pool's affinity settings cannot work.
    #[error("pool {pool:?}: affinity")]
    Affinity {
        /// Pool name.
        pool: String,
        /// Why.
        #[source]
        source: crate::affinity::AffinityConfigError,
    },
    /// The keyring file is unusable.
    #[error("keys")]
    Keys(#[source] KeyringError),
    /// A new listener address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A change that needs a restart.
    #[error("{0} cannot change on reload; restart remora")]
    NeedsRestart(&'static str),
}

/// One listener in a snapshot.
pub struct ListenerRt {
    /// Its configuration (limits merged).
    pub config: ListenerConfig,
    /// TLS acceptor, when the listener has TLS.
    pub tls: Option<TlsAcceptor>,
}

/// An immutable run-time snapshot of the configuration.
pub struct Runtime {
    /// The configuration it was built from.
    pub config: Config,
    /// Pools by name.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Listeners by address.
    pub listeners: HashMap<SocketAddr, Arc<ListenerRt>>,
    /// The sealing keyring.
    pub keyring: Arc<Keyring>,
}

impl Runtime {
    /// Builds a snapshot, carrying live state over from `previous`.
    pub fn build(config: Config, previous: Option<&Runtime>) -> Result<Runtime, ReloadError> {
        let keyring = match &config.keys {
            Some(k) => Arc::new(Keyring::load(&k.file).map_err(ReloadError::Keys)?),
            None => match previous {
                Some(p) if p.config.keys.is_none() => p.keyring.clone(),
                _ => Arc::new(Keyring::generate()),
            },
        };
        let sealer = Arc::new(Sealer::new(&keyring, Purpose::Affinity));
        let mut pools = HashMap::new();
        for pc in &config.pools {
            let prev = previous.and_then(|p| p.pools.get(&pc.name));
            let pool = Pool::new(pc.clone(), prev.map(|p| &**p), &sealer).map_err(|source| {
                ReloadError::Affinity {
                    pool: pc.name.clone(),
                    source,
                }
            })?;
            pools.insert(pc.name.clone(), Arc::new(pool));
        }
        let mut listeners = HashMap::new();
        for lc in &config.listeners {
            let tls = match &lc.tls {
                Some(t) => Some(tls::acceptor(t).map_err(|source| ReloadError::Tls {
                    listener: lc.name.clone(),
                    source,
                })?),
                None => None,
            };
            listeners.insert(
                lc.listen,
                Arc::new(ListenerRt {
                    config: lc.clone(),
                    tls,
                }),
            );
        }
        Ok(Runtime {
            config,
            pools,
            listeners,
            keyring,
        })
    }
}
