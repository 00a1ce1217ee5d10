//! [`HostedRegistry`]: the embedded registry's rules, on top of a [`TwinStore`].
//!
//! A publish request is accepted only if it is well formed, signed by the account it is
//! about, stamped within [`MAX_CLOCK_SKEW_MS`] of our clock, and newer than the last
//! request accepted for that twin. The same path serves HTTP clients and the hosting
//! relay itself (through the `Registry` trait), so both obey identical rules.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rmb_identity::registry::api::{MAX_CLOCK_SKEW_MS, PublishRequest};
use rmb_identity::registry::{Change, Registry, RegistryError, Twin, TwinUpdate};
use rmb_identity::{AccountId, SignatureError, Signer};
use tokio::sync::mpsc;

use super::changes::{ChangeLog, DEFAULT_CAPACITY};
use super::recent::RecentTwins;
use super::store::{StoreError, TwinStore, Upsert};

/// Why a publish request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request signature does not verify for account {account}: {source}")]
    BadSignature {
        account: AccountId,
        source: SignatureError,
    },
    #[error(
        "request timestamp {timestamp_ms} is {skew_ms} ms away from the registry's clock; at most {MAX_CLOCK_SKEW_MS} ms is allowed"
    )]
    ClockSkew { timestamp_ms: u64, skew_ms: u64 },
    #[error(
        "request timestamp {timestamp_ms} is not newer than the last accepted one ({last_ms}): replayed or out of order"
    )]
    Stale { timestamp_ms: u64, last_ms: u64 },
    #[error("account {0} has no twin; set \"create\": true to register it")]
    NotRegistered(AccountId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The registry a relay hosts.
pub struct HostedRegistry {
    store: Arc<dyn TwinStore>,
    changes: ChangeLog,
    /// What `get_twin` read lately (the relay's own lookups; the HTTP API reads the store).
    recent: RecentTwins,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl HostedRegistry {
    /// A registry keeping its twins in `store`.
    pub fn new(store: Arc<dyn TwinStore>) -> Arc<Self> {
        Arc::new(HostedRegistry {
            store,
            changes: ChangeLog::new(DEFAULT_CAPACITY),
            recent: RecentTwins::default(),
        })
    }

    /// The store (for lookups).
    pub fn store(&self) -> &dyn TwinStore {
        &*self.store
    }

    /// The change log behind `/changes`.
    pub fn changes(&self) -> &ChangeLog {
        &self.changes
    }

    /// Checks and applies a publish request received at `now_ms`.
    pub async fn apply(&self, request: &PublishRequest, now_ms: u64) -> Result<Twin, PublishError> {
        request.check_content().map_err(PublishError::BadRequest)?;
        request
            .verify_signature()
            .map_err(|source| PublishError::BadSignature {
                account: request.account,
                source,
            })?;
        let skew_ms = now_ms.abs_diff(request.timestamp_ms);
        if skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(PublishError::ClockSkew {
                timestamp_ms: request.timestamp_ms,
                skew_ms,
            });
        }
        let outcome = self
            .store
            .upsert(&request.account, &request.update(), request.timestamp_ms)
            .await?;
        let (twin, created) = match outcome {
            Upsert::Created(twin) => (twin, true),
            Upsert::Updated(twin) => (twin, false),
            Upsert::NotRegistered => return Err(PublishError::NotRegistered(request.account)),
            Upsert::Stale { last_ms } => {
                return Err(PublishError::Stale {
                    timestamp_ms: request.timestamp_ms,
                    last_ms,
                });
            }
        };
        tracing::info!(twin = twin.id, account = %twin.account, relays = ?twin.relays, created, "twin published");
        self.recent.forget(twin.id);
        self.changes.record(twin.id);
        Ok(twin)
    }

    /// Twins changed since `since` in `epoch`, or `None` if the caller must reset.
    pub async fn changed_since(
        &self,
        epoch: &str,
        since: u64,
    ) -> Result<Option<Vec<Twin>>, StoreError> {
        if epoch != self.changes.epoch() {
            return Ok(None);
        }
        let Some(ids) = self.changes.since(since) else {
            return Ok(None);
        };
        let mut twins = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(twin) = self.store.get(id).await? {
                twins.push(twin);
            }
        }
        Ok(Some(twins))
    }
}

fn unavailable(e: StoreError) -> RegistryError {
    RegistryError::Unavailable(e.to_string())
}

#[async_trait]
impl Registry for HostedRegistry {
    async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
        let now = now_ms();
        if let Some(twin) = self.recent.get(id, now) {
            return Ok(Some(twin));
        }
        let twin = self.store.get(id).await.map_err(unavailable)?;
        if let Some(twin) = &twin {
            self.recent.remember(twin, now);
        }
        Ok(twin)
    }

    async fn twin_id_by_account(&self, account: &AccountId) -> Result<Option<u32>, RegistryError> {
        self.store.id_by_account(account).await.map_err(unavailable)
    }

    async fn publish(&self, signer: &Signer, update: &TwinUpdate) -> Result<Twin, RegistryError> {
        // Two publishes within one millisecond would look like a replay: step past the last.
        let mut now = now_ms();
        loop {
            let request = PublishRequest::signed(signer, update, now);
            match self.apply(&request, now).await {
                Ok(twin) => return Ok(twin),
                Err(PublishError::Stale { last_ms, .. })
                    if last_ms < now + MAX_CLOCK_SKEW_MS / 2 =>
                {
                    now = last_ms + 1;
                }
                Err(PublishError::NotRegistered(account)) => {
                    return Err(RegistryError::NotRegistered(account));
                }
                Err(PublishError::Store(e)) => return Err(unavailable(e)),
                Err(e) => return Err(RegistryError::Refused(e.to_string())),
            }
        }
    }

    async fn follow(&self, sink: mpsc::Sender<Change>) -> Result<(), RegistryError> {
        if sink.send(Change::Reset).await.is_err() {
            return Ok(());
        }
        let epoch = self.changes.epoch().to_string();
        let mut seen = self.changes.version();
        loop {
            self.changes.wait_past(seen, Duration::from_secs(60)).await;
            let version = self.changes.version();
            let changes = match self
                .changed_since(&epoch, seen)
                .await
                .map_err(unavailable)?
            {
                Some(twins) => twins.into_iter().map(Change::Updated).collect(),
                None => vec![Change::Reset],
            };
            seen = version;
            for change in changes {
                if sink.send(change).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("embedded registry hosted here ({})", self.store.describe())
    }

    fn kind(&self) -> rmb_identity::registry::RegistryKind {
        rmb_identity::registry::RegistryKind::Embedded
    }

    fn cache_stats(&self) -> Option<rmb_identity::registry::CacheStats> {
        Some(self.recent.stats())
    }
}
