//! [`Writer`]: every list push the API makes goes through one task that pipelines them.
//!
//! At thousands of messages a second, one round trip per `LPUSH` would be the bottleneck.
//! The task takes whatever is queued (up to [`MAX_BATCH`]) and sends it as one pipeline,
//! each push followed by the `LTRIM` that caps the list as rmb-rs does. A failed pipeline
//! is retried after reconnecting, so a Redis restart delays messages but loses none
//! (a batch that half-applied before the failure may be pushed twice, except answers
//! sent with [`Write::DeliverOnce`], which are pushed once).

use redis::Pipeline;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::{QueryError, RedisConn};
use super::keys::{MAX_LIST_LEN, clamp_ttl};
use super::scripts::{Answer, deliver_answers};
use crate::core::{Peer, Reason};

/// Most pushes sent in one pipeline.
pub const MAX_BATCH: usize = 512;
/// Pushes queued before producers wait.
const QUEUE: usize = 65_536;

/// One write to the local Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `LPUSH list json` then `LTRIM list 0 9999`.
    Push { list: String, json: String },
    /// `SET key value EX secs`.
    SetEx {
        key: String,
        value: Vec<u8>,
        secs: u64,
    },
    /// `DEL key`.
    Del { key: String },
    /// Pushes `json` onto `list` only if the outbox hash `outbox` still has `field`
    /// (see [`DELIVER_ONCE`](super::scripts::DELIVER_ONCE)): an answer to a client, delivered once.
    DeliverOnce {
        outbox: String,
        field: String,
        list: String,
        json: String,
    },
}

impl Write {
    /// What [`deliver_answers`] needs of a [`Write::DeliverOnce`] (`None` for the others).
    fn answer(&self) -> Option<Answer<'_>> {
        match self {
            Write::DeliverOnce {
                outbox,
                field,
                list,
                json,
            } => Some(Answer {
                outbox,
                list,
                json,
                field,
                sole: false,
            }),
            _ => None,
        }
    }

    /// The key it writes (for logs).
    pub fn key(&self) -> &str {
        match self {
            Write::Push { list, .. } | Write::DeliverOnce { list, .. } => list,
            Write::SetEx { key, .. } | Write::Del { key } => key,
        }
    }
}

/// Handle to queue writes; cheap to clone. The task ends (after flushing) when every
/// handle is dropped.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Starts the writer task on its own connection. `abort` stops retries against a
    /// Redis that is gone (queued writes are then lost, with an error log).
    ///
    /// A write Redis refuses for good (see [`is_permanent`](super::conn::is_permanent))
    /// is dropped and counted on `peer` as `redis_error`, so it cannot hold up the rest.
    pub fn spawn(
        conn: RedisConn,
        abort: CancellationToken,
        peer: Peer,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(conn, rx, abort, peer));
        (Writer { tx }, task)
    }

    /// Queues a write; waits only when the queue is full.
    pub async fn send(&self, write: Write) {
        if self.tx.send(write).await.is_err() {
            tracing::error!("redis writer has stopped; a write was dropped");
        }
    }

    /// Queues a push of `json` onto `list`.
    pub async fn push(&self, list: String, json: String) {
        self.send(Write::Push { list, json }).await;
    }
}

/// Adds `write` to `pipe`, results ignored. A pipeline with a [`Write::DeliverOnce`]
/// needs [`DELIVER_ONCE`](super::scripts::DELIVER_ONCE) loaded (a [`RedisConn`] does when it connects).
pub fn add_to_pipeline(pipe: &mut Pipeline, write: &Write) {
    add_all_to_pipeline(pipe, std::slice::from_ref(write));
}

/// Adds `writes` to `pipe` in order, results ignored; each run of consecutive
/// [`Write::DeliverOnce`] becomes one script run.
fn add_all_to_pipeline(pipe: &mut Pipeline, writes: &[Write]) {
    let mut rest = writes;
    while let Some(write) = rest.first() {
        let answers: Vec<Answer> = rest.iter().map_while(Write::answer).collect();
        if !answers.is_empty() {
            let taken = answers.len();
            pipe.invoke_script(&deliver_answers(answers)).ignore();
            rest = &rest[taken..];
            continue;
        }
        match write {
            Write::DeliverOnce { .. } => unreachable!("taken above"),
            Write::Push { list, json } => {
                pipe.cmd("LPUSH").arg(list).arg(json).ignore();
                pipe.cmd("LTRIM")
                    .arg(list)
                    .arg(0)
                    .arg(MAX_LIST_LEN - 1)
                    .ignore();
            }
            Write::SetEx { key, value, secs } => {
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value.as_slice())
                    .arg("EX")
                    .arg(clamp_ttl(*secs))
                    .ignore();
            }
            Write::Del { key } => {
                pipe.cmd("DEL").arg(key).ignore();
            }
        }
        rest = &rest[1..];
    }
}

/// A pipeline of `writes` (the scripts were loaded when the connection was made,
/// [`RedisConn`]).
fn pipeline(writes: &[Write]) -> Pipeline {
    let mut pipe = redis::pipe();
    add_all_to_pipeline(&mut pipe, writes);
    pipe
}

async fn run(
    mut conn: RedisConn,
    mut rx: mpsc::Receiver<Write>,
    abort: CancellationToken,
    peer: Peer,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match conn.query::<()>(&pipeline(&batch), &abort).await {
            Ok(()) => {}
            Err(QueryError::Shutdown) => return lost(batch.len() + rx.len()),
            Err(QueryError::Permanent(e)) => {
                tracing::warn!(error = %e, writes = batch.len(), "redis refused a write batch; writing one by one");
                for (i, write) in batch.iter().enumerate() {
                    match conn
                        .query::<()>(&pipeline(std::slice::from_ref(write)), &abort)
                        .await
                    {
                        Ok(()) => {}
                        Err(QueryError::Shutdown) => return lost(batch.len() - i + rx.len()),
                        Err(QueryError::Permanent(e)) => {
                            peer.count_refusal(Reason::RedisError);
                            if peer.log_allowed(0, Reason::RedisError) {
                                tracing::error!(error = %e, key = write.key(), "redis refused a write; dropped (logged once per 10 s)");
                            }
                        }
                    }
                }
            }
        }
        batch.clear();
    }
}

fn lost(n: usize) {
    tracing::error!(
        lost = n,
        "shutting down without redis; queued writes are lost"
    );
}
