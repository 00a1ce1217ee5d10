//! Following twin changes through chain events, to keep caches fresh without waiting
//! for their TTL.
//!
//! Every finalized block's events are read; `TfgridModule.TwinStored` and `TwinUpdated`
//! carry the whole new twin, which is passed on as [`Change::Updated`].

use std::sync::Arc;

use subxt::PolkadotConfig;
use subxt::events::Events;
use tokio::sync::mpsc;

use super::super::{Change, RegistryError};
use super::connection::Connection;
use super::runtime::{ChainTwin, PALLET, TWIN_EVENTS};

/// Why following stopped.
pub enum FollowEnd {
    /// The receiver went away: nobody is interested any more.
    SinkClosed,
    /// The block stream failed or ended; this says how.
    Lost(String),
}

/// Streams finalized blocks from `connection` and reports twin changes into `sink`.
///
/// [`Change::Reset`] is sent once the block stream is open, so a receiver that saw it
/// knows later changes will reach it.
pub async fn follow(connection: &Arc<Connection>, sink: &mpsc::Sender<Change>) -> FollowEnd {
    let mut blocks = match connection.client().stream_blocks().await {
        Ok(blocks) => blocks,
        Err(e) => return FollowEnd::Lost(format!("cannot stream blocks: {e}")),
    };
    if sink.send(Change::Reset).await.is_err() {
        return FollowEnd::SinkClosed;
    }
    while let Some(block) = blocks.next().await {
        let block = match block {
            Ok(block) => block,
            Err(e) => return FollowEnd::Lost(format!("block stream failed: {e}")),
        };
        let events = match block.at().await {
            Ok(at) => at.events().fetch().await,
            Err(e) => return FollowEnd::Lost(format!("cannot read block {}: {e}", block.number())),
        };
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                return FollowEnd::Lost(format!(
                    "cannot read events of block {}: {e}",
                    block.number()
                ));
            }
        };
        for change in twin_changes(&events, block.number()) {
            if sink.send(change).await.is_err() {
                return FollowEnd::SinkClosed;
            }
        }
    }
    FollowEnd::Lost("block stream ended".into())
}

/// The twin changes among one block's events; undecodable ones are logged and skipped
/// (a reader that sees too little only falls back on the cache TTL).
fn twin_changes(events: &Events<PolkadotConfig>, block: u64) -> Vec<Change> {
    let mut changes = Vec::new();
    for event in events.iter() {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(block, error = %e, "cannot decode an event; skipping the rest");
                break;
            }
        };
        if event.pallet_name() != PALLET || !TWIN_EVENTS.contains(&event.event_name()) {
            continue;
        }
        let twin = event
            .decode_fields_unchecked_as::<(ChainTwin,)>()
            .map_err(|e| RegistryError::Invalid(e.to_string()))
            .and_then(|(twin,)| twin.into_twin());
        match twin {
            Ok(twin) => {
                tracing::debug!(
                    block,
                    id = twin.id,
                    event = event.event_name(),
                    "twin changed"
                );
                changes.push(Change::Updated(twin));
            }
            Err(e) => tracing::warn!(block, error = %e, "cannot decode a twin event"),
        }
    }
    changes
}
