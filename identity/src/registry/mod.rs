//! The twin registry: who twin N is (account, relays, encryption key).
//!
//! Relay, peer and tools all ask one trait, [`Registry`], and never care which backend
//! answers:
//!
//! - [`tfchain`] (feature `tfchain`): ThreeFold's chain, through `subxt`, as rmb-rs does;
//! - [`http`]: the embedded registry that an `rmb-relay` hosts for self-hosted networks
//!   (its server side lives in the relay crate; its wire format in [`api`]).
//!
//! [`CachedRegistry`] sits in front of either: it answers repeated lookups from memory
//! for a TTL and, where the backend can signal changes ([`Registry::follow`]), applies
//! them as they happen instead of waiting for the TTL. [`select`] turns the command-line
//! choice (`--substrate`, `--registry`) into a backend.

pub mod api;
pub mod cache;
pub mod http;
pub mod resolve;
pub mod select;
#[cfg(feature = "tfchain")]
pub mod tfchain;
pub mod twin;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::account::AccountId;
use crate::signer::Signer;

pub use cache::CachedRegistry;
pub use resolve::RelayResolver;
pub use select::{RegistryChoice, connect};
pub use twin::{Twin, TwinUpdate};

/// Why a registry lookup or update failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The backend could not be reached (network, chain down). Retrying may help.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The backend answered, but refused the request; the message says why.
    #[error("registry refused the request: {0}")]
    Refused(String),
    /// The signer's account has no twin and registration was not asked for.
    #[error("account {0} has no twin; register it first (e.g. `rmb twin register`)")]
    NotRegistered(AccountId),
    /// The backend answered with something that does not make sense.
    #[error("registry answered with invalid data: {0}")]
    Invalid(String),
    /// The backend cannot signal changes; callers rely on cache expiry instead.
    #[error("this registry backend cannot signal changes")]
    NoChangeFeed,
}

/// A change a backend reports, used to keep caches fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A twin was created or updated; this is its new value.
    Updated(Twin),
    /// Changes may have been missed (reconnect, gap): forget everything cached.
    Reset,
}

/// Which kind of registry answers, because the two differ in what they accept and in who
/// else reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryKind {
    /// ThreeFold's chain: relay names are bare host names (no scheme, no port), and
    /// rmb-rs peers and ThreeFold's SDKs read the same entries, so published keys must
    /// be ones they understand.
    Tfchain,
    /// The registry an `rmb-relay` hosts: relay names may carry `:port`, and only rmb
    /// peers are expected to read it.
    Embedded,
}

impl RegistryKind {
    /// The name to publish for a relay at `host` with an explicit `port`, if any:
    /// tfchain refuses ports, so only the host goes there.
    pub fn relay_name(self, host: &str, port: Option<u16>) -> String {
        match (self, port) {
            (RegistryKind::Embedded, Some(port)) => format!("{host}:{port}"),
            _ => host.to_string(),
        }
    }
}

/// A source of twins. Implementations must be cheap to share (`Arc<dyn Registry>`).
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The twin with this id, or `None` if it does not exist.
    async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError>;

    /// The id of the twin owned by `account`, or `None` if it has none.
    async fn twin_id_by_account(&self, account: &AccountId) -> Result<Option<u32>, RegistryError>;

    /// Creates or updates the twin of `signer`'s account so that it carries `update`.
    ///
    /// When the account has no twin: creates one if `update.create` is set, otherwise
    /// fails with [`RegistryError::NotRegistered`]. Returns the twin as stored.
    async fn publish(&self, signer: &Signer, update: &TwinUpdate) -> Result<Twin, RegistryError>;

    /// Reports changes into `sink` until the connection ends or the sink closes.
    ///
    /// Returns `Err(NoChangeFeed)` at once if the backend cannot signal changes. Every
    /// (re)start begins with [`Change::Reset`] since changes may have been missed.
    async fn follow(&self, sink: mpsc::Sender<Change>) -> Result<(), RegistryError> {
        let _ = sink;
        Err(RegistryError::NoChangeFeed)
    }

    /// One line for logs and `rmb status`, e.g. `tfchain (ws://127.0.0.1:9944)`.
    fn describe(&self) -> String;

    /// Which kind of registry this is (decides relay names and the default e2e key).
    fn kind(&self) -> RegistryKind;

    /// What the memory cache in front of the backend has done, if this registry has
    /// one: a relay exports it at `/metrics` (rmb-rs's `rmb_cache_*`), so an operator
    /// sees whether routing reads the registry for every envelope.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// Counts of a twin cache since it was made, read when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Twin lookups answered from memory.
    pub hits: u64,
    /// Twin lookups that had to ask the backend.
    pub misses: u64,
    /// Times the whole cache was emptied (the change feed was lost, changes may have
    /// been missed).
    pub flushes: u64,
    /// Twins held now (approximate where the cache evicts in the background).
    pub entries: u64,
}
