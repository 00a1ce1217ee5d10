//! What became of an envelope sent to another relay ([`Posted`]), and where a lane
//! hands that over: to a task waiting for it ([`Queued`]) or to a callback ([`Then`]),
//! so that nothing has to wait (see [`Lanes::queue_then`](super::lane::Lanes::queue_then)).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rmb_identity::registry::http::error_chain;
use tokio::sync::oneshot;

use super::batch::Outcome;
use super::target::refused_by_resolver;

/// Longest an envelope waits in its lane for its batch's answer. One whose sender gave
/// up is left out of the batches that follow (see the lane's `fill`).
pub(super) const LANE_WAIT: Duration = Duration::from_secs(20);

/// What a request to a relay made of one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// The relay took it (202).
    Accepted,
    /// The relay refused it for good (a 4xx): `answer` is the start of its text.
    Refused { status: StatusCode, answer: String },
    /// The relay could not be reached, or failed (5xx, timeout…): try another.
    Failed(String),
    /// The relay's address is not an allowed federation target.
    NotAllowed(String),
    /// Not sent: post it alone (`POST /`).
    Alone,
}

impl Posted {
    /// What a request that got no answer (`error`) made of its envelopes.
    pub fn unsent(error: &reqwest::Error) -> Posted {
        if refused_by_resolver(error) {
            Posted::NotAllowed(error_chain(error))
        } else {
            Posted::Failed(error_chain(error))
        }
    }

    pub(super) fn from_outcome(outcome: Outcome) -> Posted {
        let answer = outcome.error.unwrap_or_default();
        match StatusCode::from_u16(outcome.status) {
            Ok(StatusCode::ACCEPTED) => Posted::Accepted,
            Ok(status) if status.is_client_error() => Posted::Refused { status, answer },
            _ => Posted::Failed(format!("{} {answer}", outcome.status)),
        }
    }
}

/// An envelope queued in a lane: its outcome, once its batch is answered.
pub struct Queued(pub(super) oneshot::Receiver<Posted>);

impl Queued {
    /// Waits for the outcome (at most [`LANE_WAIT`]).
    pub async fn outcome(self) -> Posted {
        match tokio::time::timeout(LANE_WAIT, self.0).await {
            Ok(Ok(posted)) => posted,
            Ok(Err(_)) => Posted::Failed(SHUTTING_DOWN.into()),
            Err(_) => Posted::Failed(NO_ANSWER_IN_TIME.into()),
        }
    }
}

pub(super) const SHUTTING_DOWN: &str = "relay shutting down";
pub(super) const NO_ANSWER_IN_TIME: &str = "no answer to the batch in time";

/// Takes an envelope's outcome in its lane, so that nothing has to wait for it (see
/// [`Lanes::queue_then`]). It runs in the lane's actor: it must not block.
pub type Then = Box<dyn FnOnce(Posted) + Send>;

/// Where a queued envelope's outcome goes.
pub(super) enum Reply {
    /// To a task waiting on [`Queued::outcome`] (`None` once sent).
    Waiting(Option<oneshot::Sender<Posted>>),
    /// To a callback (`None` once called); if the envelope is dropped unanswered (the
    /// lane shut down), the callback hears so, as a waiting task would.
    Then {
        then: Option<Then>,
        queued_at: Instant,
    },
}

impl Reply {
    pub(super) fn send(mut self, posted: Posted) {
        match &mut self {
            Reply::Waiting(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(posted);
                }
            }
            Reply::Then { then, .. } => {
                if let Some(then) = then.take() {
                    then(posted);
                }
            }
        }
    }

    /// True if the envelope is no longer to go in a batch: its waiting sender gave up
    /// after [`LANE_WAIT`] (and sends it some other way), or a callback's envelope has
    /// waited that long (it hears so when the lane fills its next batch).
    pub(super) fn given_up(&self) -> bool {
        match self {
            Reply::Waiting(tx) => tx.as_ref().is_none_or(oneshot::Sender::is_closed),
            Reply::Then { queued_at, .. } => queued_at.elapsed() >= LANE_WAIT,
        }
    }

    /// The callback, not called (for a sender that takes its envelope back).
    pub(super) fn into_then(mut self) -> Option<Then> {
        match &mut self {
            Reply::Then { then, .. } => then.take(),
            Reply::Waiting(_) => None,
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Reply::Then { then, .. } = self
            && let Some(then) = then.take()
        {
            then(Posted::Failed(SHUTTING_DOWN.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_mean_what_the_same_status_means_for_post_alone() {
        assert_eq!(Posted::from_outcome(Outcome::accepted()), Posted::Accepted);
        assert_eq!(
            Posted::from_outcome(Outcome::refused(404, "destination offline")),
            Posted::Refused {
                status: StatusCode::NOT_FOUND,
                answer: "destination offline".into()
            }
        );
        // A failure of the relay (or a status that is no status): try another relay.
        for status in [503, 500, 200, 0, 1000] {
            assert!(
                matches!(
                    Posted::from_outcome(Outcome::refused(status, "x")),
                    Posted::Failed(_)
                ),
                "{status}"
            );
        }
    }
}
