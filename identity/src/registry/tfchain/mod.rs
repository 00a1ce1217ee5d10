//! [`TfchainRegistry`]: ThreeFold's chain as the twin registry, as rmb-rs uses it.
//!
//! Twins live in tfchain's `TfgridModule` pallet. We talk to it with `subxt`'s dynamic
//! API, so no code is generated from the runtime's metadata and no metadata file ships
//! with us; [`runtime`] names everything we rely on. Extrinsics are signed with the
//! twin's own key ([`signer`]). Several node URLs can be given; [`endpoints`] holds one
//! connection at a time and fails over when a node goes away. Changes are followed
//! through chain events ([`events`]) to keep a `CachedRegistry` fresh.

mod connection;
mod endpoints;
mod errors;
mod events;
mod runtime;
mod signer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use subxt::PolkadotConfig;
use subxt::client::OnlineClientAtBlock;
use subxt::tx::Payload;
use subxt::utils::AccountId32;
use tokio::sync::mpsc;

use super::twin::encode_relays;
use super::{Change, Registry, RegistryError, Twin, TwinUpdate};
use crate::account::AccountId;
use crate::signer::Signer;
use connection::Connection;
pub use connection::RpcBackend;
use endpoints::{Endpoints, OpError};
use errors::{finalization_failed, invalid, submit_failed, suspect};
use events::FollowEnd;
use signer::ChainSigner;

/// Tunables of [`TfchainRegistry`]; the defaults suit both public nodes and a local chain.
#[derive(Debug, Clone)]
pub struct TfchainOptions {
    /// Which RPC methods to use (legacy by default: see [`RpcBackend`]).
    pub backend: RpcBackend,
    /// Longest wait for one node to accept a connection and serve the metadata.
    pub connect_timeout: Duration,
    /// Longest wait for one lookup on one node.
    pub read_timeout: Duration,
    /// Longest wait for one publish (up to two transactions, each to finality).
    pub publish_timeout: Duration,
}

impl Default for TfchainOptions {
    fn default() -> Self {
        TfchainOptions {
            backend: RpcBackend::Legacy,
            connect_timeout: Duration::from_secs(8),
            read_timeout: Duration::from_secs(15),
            // tfchain finalizes in ~12-30 s; two transactions must fit.
            publish_timeout: Duration::from_secs(120),
        }
    }
}

/// The twin registry on tfchain, reached through one or more node URLs.
pub struct TfchainRegistry {
    endpoints: Endpoints,
    options: TfchainOptions,
}

impl TfchainRegistry {
    /// Connects with default options; fails if none of `urls` answers.
    ///
    /// Later calls reconnect by themselves, trying the URLs in turn.
    pub async fn connect(urls: Vec<String>) -> Result<TfchainRegistry, RegistryError> {
        Self::connect_with(urls, TfchainOptions::default()).await
    }

    /// Connects with the given options; fails if none of `urls` answers.
    pub async fn connect_with(
        urls: Vec<String>,
        options: TfchainOptions,
    ) -> Result<TfchainRegistry, RegistryError> {
        if urls.is_empty() {
            return Err(RegistryError::Invalid("no tfchain URL given".into()));
        }
        let endpoints = Endpoints::new(urls, options.backend, options.connect_timeout);
        endpoints.acquire(1).await?;
        Ok(TfchainRegistry { endpoints, options })
    }
}

#[async_trait]
impl Registry for TfchainRegistry {
    async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
        self.endpoints
            .run(self.options.read_timeout, |connection| async move {
                let at = connection.latest().await.map_err(suspect)?;
                read_twin(&at, id).await
            })
            .await
    }

    async fn twin_id_by_account(&self, account: &AccountId) -> Result<Option<u32>, RegistryError> {
        let account = *account;
        self.endpoints
            .run(self.options.read_timeout, |connection| async move {
                let at = connection.latest().await.map_err(suspect)?;
                read_twin_id(&at, &account).await
            })
            .await
    }

    async fn publish(&self, signer: &Signer, update: &TwinUpdate) -> Result<Twin, RegistryError> {
        self.endpoints
            .run(self.options.publish_timeout, |connection| {
                publish_on(connection, signer, update)
            })
            .await
    }

    async fn follow(&self, sink: mpsc::Sender<Change>) -> Result<(), RegistryError> {
        let connection = self.endpoints.acquire(2).await?;
        match events::follow(&connection, &sink).await {
            FollowEnd::SinkClosed => Ok(()),
            FollowEnd::Lost(why) => {
                self.endpoints.report_failure(&connection).await;
                Err(RegistryError::Unavailable(format!(
                    "{}: {why}",
                    connection.url()
                )))
            }
        }
    }

    fn describe(&self) -> String {
        format!("tfchain ({})", self.endpoints.current_url())
    }

    fn kind(&self) -> super::RegistryKind {
        super::RegistryKind::Tfchain
    }
}

type AtBlock = OnlineClientAtBlock<PolkadotConfig>;

async fn read_twin(at: &AtBlock, id: u32) -> Result<Option<Twin>, OpError> {
    let value = at
        .storage()
        .try_fetch(runtime::twins(), (id,))
        .await
        .map_err(suspect)?;
    match value {
        None => Ok(None),
        Some(value) => {
            let twin = value.decode().map_err(|e| invalid("Twins entry", e))?;
            Ok(Some(twin.into_twin()?))
        }
    }
}

async fn read_twin_id(at: &AtBlock, account: &AccountId) -> Result<Option<u32>, OpError> {
    let value = at
        .storage()
        .try_fetch(runtime::twin_id_by_account(), (AccountId32(account.0),))
        .await
        .map_err(suspect)?;
    value
        .map(|v| {
            v.decode()
                .map_err(|e| invalid("TwinIdByAccountID entry", e))
        })
        .transpose()
}

/// One publish on one connection: read, then update or create, then read back.
///
/// Safe to repeat after a lost connection: it re-reads the chain first, so a create that
/// went through becomes an update (or nothing, if the twin already matches).
async fn publish_on(
    connection: Arc<Connection>,
    signer: &Signer,
    update: &TwinUpdate,
) -> Result<Twin, OpError> {
    let account = signer.account();
    let at = connection.latest().await.map_err(suspect)?;
    let relay = (!update.relays.is_empty()).then(|| encode_relays(&update.relays).into_bytes());
    let args = (relay, update.pk.clone());
    match read_twin_id(&at, &account).await? {
        Some(id) => {
            let current = read_twin(&at, id).await?;
            if let Some(twin) = current.filter(|twin| twin.matches(update)) {
                tracing::debug!(id, "twin already up to date on tfchain");
                return Ok(twin);
            }
            tracing::info!(id, %account, "updating twin on tfchain");
            submit(&connection, signer, &runtime::update_twin(args)).await?;
        }
        None if update.create => {
            tracing::info!(%account, "registering a twin on tfchain");
            submit(&connection, signer, &runtime::accept_terms()).await?;
            submit(&connection, signer, &runtime::create_twin(args)).await?;
        }
        None => return Err(RegistryError::NotRegistered(account).into()),
    }
    let at = connection.latest().await.map_err(suspect)?;
    let missing =
        || RegistryError::Invalid(format!("the twin of {account} is missing after publishing"));
    let id = read_twin_id(&at, &account).await?.ok_or_else(missing)?;
    read_twin(&at, id).await?.ok_or_else(|| missing().into())
}

/// Signs and submits `call` at the latest finalized block, and waits until it is
/// finalized, so the next transaction of the same account gets the next nonce.
async fn submit(
    connection: &Connection,
    signer: &Signer,
    call: &impl Payload,
) -> Result<(), OpError> {
    let at = connection.latest().await.map_err(suspect)?;
    let progress = at
        .transactions()
        .sign_and_submit_then_watch_default(call, &ChainSigner(signer))
        .await
        .map_err(submit_failed)?;
    progress
        .wait_for_finalized_success()
        .await
        .map_err(finalization_failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connecting_needs_a_url_and_says_which_failed() {
        assert!(matches!(
            TfchainRegistry::connect(vec![]).await,
            Err(RegistryError::Invalid(_))
        ));

        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ws://127.0.0.1:{port}");
        let Err(RegistryError::Unavailable(message)) =
            TfchainRegistry::connect(vec![url.clone()]).await
        else {
            panic!("a dead URL must be unavailable");
        };
        assert!(message.contains(&url), "{message}");
    }
}
