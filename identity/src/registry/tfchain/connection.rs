//! [`Connection`]: one live RPC connection to one tfchain node.
//!
//! It owns the websocket, the `subxt` client built on it and the client at the latest
//! finalized block. That last one is kept between calls: taking a block costs a runtime
//! version call (tens of milliseconds under chopsticks), while a storage read at a known
//! block costs well under one, so a lookup only re-takes the block when the head moved.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use subxt::backend::{Backend, CombinedBackend, LegacyBackend};
use subxt::client::OnlineClientAtBlock;
use subxt::rpcs::RpcClient;
use subxt::rpcs::client::{JsonrpseeRpcClient, jsonrpsee_client};
use subxt::{OnlineClient, PolkadotConfig};

/// Which `subxt` backend (set of RPC methods) to drive the node with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RpcBackend {
    /// The legacy `chain_*`/`state_*`/`author_*` methods. Every tfchain node serves them,
    /// and chopsticks (our local chain) only streams blocks correctly through these.
    #[default]
    Legacy,
    /// subxt's default: the newer `chainHead_v1_*` methods where the node serves them,
    /// legacy ones otherwise. Suits real nodes; chopsticks answers `chainHead_v1_follow`
    /// in a shape subxt cannot follow (reads work, block streams end at once).
    Combined,
}

/// `PolkadotConfig` fits tfchain (MultiAddress, MultiSignature, standard extensions); the
/// Polkadot relay chain's historic types are left out, as tfchain's metadata is V14.
fn config() -> PolkadotConfig {
    PolkadotConfig::builder().use_historic_types(false).build()
}

/// How long the liveness probe after a failed call may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to one node; dropped (and replaced) when the node stops answering.
pub struct Connection {
    url: String,
    ws: Arc<JsonrpseeRpcClient>,
    rpc: RpcClient,
    client: OnlineClient<PolkadotConfig>,
    backend: Arc<dyn Backend<PolkadotConfig>>,
    latest: Mutex<Option<OnlineClientAtBlock<PolkadotConfig>>>,
}

impl Connection {
    /// Connects to `url` and reads the chain's genesis hash and metadata, so a node that
    /// accepts the socket but cannot serve us fails here rather than on the first call.
    pub async fn open(url: &str, kind: RpcBackend) -> Result<Connection, String> {
        let ws = Arc::new(jsonrpsee_client(url).await.map_err(|e| e.to_string())?);
        let rpc = RpcClient::new(Arc::clone(&ws));
        let (client, backend): (_, Arc<dyn Backend<PolkadotConfig>>) = match kind {
            RpcBackend::Legacy => {
                let backend = Arc::new(LegacyBackend::builder().build(rpc.clone()));
                let client =
                    OnlineClient::from_backend_with_config(config(), Arc::clone(&backend)).await;
                (client, backend)
            }
            RpcBackend::Combined => {
                let backend = CombinedBackend::builder()
                    .build_with_background_driver(rpc.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let backend = Arc::new(backend);
                let client =
                    OnlineClient::from_backend_with_config(config(), Arc::clone(&backend)).await;
                (client, backend)
            }
        };
        let connection = Connection {
            url: url.to_string(),
            ws,
            rpc,
            client: client.map_err(|e| e.to_string())?,
            backend,
            latest: Mutex::new(None),
        };
        connection.latest().await.map_err(|e| e.to_string())?;
        Ok(connection)
    }

    /// The URL this connection was opened to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `subxt` client (for block streams).
    pub fn client(&self) -> &OnlineClient<PolkadotConfig> {
        &self.client
    }

    /// A client at the latest finalized block, reused while the head has not moved.
    pub async fn latest(&self) -> Result<OnlineClientAtBlock<PolkadotConfig>, subxt::Error> {
        let head = self.backend.latest_finalized_block_ref().await?;
        let cached = self.latest.lock().expect("latest block lock").clone();
        if let Some(at) = cached.filter(|at| at.block_hash() == head.hash()) {
            return Ok(at);
        }
        let at = self.client.at_block(head).await?;
        *self.latest.lock().expect("latest block lock") = Some(at.clone());
        Ok(at)
    }

    /// True if the node still answers: the socket is open and a cheap request succeeds.
    ///
    /// Asked after a call failed, to tell "the node refused or could not do it" (keep
    /// the connection) from "the node is gone" (drop it and try the next URL).
    pub async fn is_alive(&self) -> bool {
        if !self.ws.is_connected() {
            return false;
        }
        let probe = self
            .rpc
            .request::<serde_json::Value>("chain_getFinalizedHead", subxt::rpcs::rpc_params![]);
        matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
    }
}
