//! Lanes: actors that send the envelopes for one relay as batches
//! (`POST /federation/batch`, [`super::batch`]).
//!
//! Envelopes for one relay are spread over `--federation-lanes-per-relay` lanes by
//! destination twin. A lane has one batch under way at a time: an envelope for an idle
//! lane is sent at once, alone in its batch, so batching adds no wait; envelopes arriving
//! while a batch is under way queue in the lane, and the next batch takes what queued (up
//! to `--federation-batch` envelopes and `--federation-batch-bytes`). Under load the
//! batches grow by themselves; when idle every envelope travels on its own. As one lane
//! carries all batched envelopes for a twin, one batch after the other, and the receiver
//! starts routing a batch's envelopes in their order, a twin gets them in the order they
//! were routed here: a topic burst's pushes do not overtake each other (which would make
//! the subscriber pull what it thinks is missing).
//!
//! A relay that answers the batch path with 404, 405, 501 or 400, or with a success
//! that is not a batch's answer, does not batch (rmb-rs answers 404; a web server in
//! front of a relay may answer anything): it is remembered as such for
//! [`UNBATCHED_FOR`](super::unbatched::UNBATCHED_FOR), and envelopes for it are posted
//! one by one (`POST /`) by their own tasks, as before batching. Any other refusal of a batch as a whole (413, 429…)
//! has its envelopes posted alone this once.
//!
//! An envelope's outcome goes to a task waiting for it ([`Lanes::queue`]) or, on the
//! routing path, to a callback run in the lane ([`Lanes::queue_then`]): a topic fan-out
//! forwards hundreds of envelopes at once, and a task apiece, each waking a worker
//! thread, cost the forwarding relay about a tenth of its CPU. Only an envelope its
//! relay did not take then starts a task, for the retries.
//!
//! Each lane is an actor under the relay's supervisor ([`RelayState::tasks`]), watching
//! shutdown; it retires after [`IDLE`] without envelopes. At most [`MAX_LANES`] lanes are
//! open at once, each holding at most [`MAX_WAITING`] envelopes, and all of them at most
//! [`LANE_BUDGET_KIB`]; envelopes beyond any of these are posted alone.
//!
//! [`RelayState::tasks`]: crate::state::RelayState::tasks

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch::{self, BATCH_CONTENT_TYPE, BATCH_PATH};
use super::outcome::{NO_ANSWER_IN_TIME, Posted, Queued, Reply, Then};
use super::unbatched::{Unbatched, does_not_batch};

/// Timeout of one batch request (a receiver handles up to 32 of its envelopes at once).
const BATCH_TIMEOUT: Duration = Duration::from_secs(6);
/// Most KiB of envelopes in all lanes at once (waiting, or in a batch under way). Past
/// it, envelopes are posted alone, as before batching: a relay that answers slowly
/// cannot make lanes hold more.
pub const LANE_BUDGET_KIB: usize = 64 * 1024;
/// A lane without envelopes for this long retires.
const IDLE: Duration = Duration::from_secs(30);
/// Most lanes open at once.
pub const MAX_LANES: usize = 1024;
/// Most envelopes waiting in one lane; further ones are posted alone (and may then
/// overtake those waiting). Generous: a topic burst to one subscriber queues hundreds
/// of pushes while a batch is under way, and all lanes are bounded in bytes together
/// ([`LANE_BUDGET_KIB`]).
const MAX_WAITING: usize = 4096;

/// Default of `--federation-batch-envelope-bytes`.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// How envelopes are batched (`--federation-batch`, `--federation-batch-bytes`,
/// `--federation-batch-envelope-bytes`, `--federation-lanes-per-relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most envelopes in one batch; 0 or 1 turns batching off.
    pub max_envelopes: usize,
    /// Most bytes of one batch body.
    pub max_bytes: usize,
    /// Envelopes larger than this are posted alone: they gain little from sharing a
    /// request, and the receiver reads a whole batch before it routes any of it, so
    /// they would hold up the small ones (and bulk connection frames each other).
    pub max_envelope_bytes: usize,
    /// Lanes to one relay (destination twins are spread over them); each has one batch
    /// under way at a time.
    pub lanes_per_relay: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_envelopes: 256,
            max_bytes: batch::MIN_BATCH_BODY,
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
            lanes_per_relay: 2,
        }
    }
}

impl BatchSettings {
    fn enabled(&self) -> bool {
        self.max_envelopes > 1 && self.lanes_per_relay > 0
    }
}

/// The counters of batching, kept in the relay's metrics.
#[derive(Clone)]
pub struct BatchCounters {
    /// `relay_federation_batches_out_total`.
    pub batches_out: IntCounter,
    /// `relay_federation_batched_envelopes_out_total`.
    pub envelopes_out: IntCounter,
    /// `relay_federation_unbatched_relays_total`: relays found not to batch.
    pub relays_unbatched: IntCounter,
}

/// One envelope waiting in a lane, and where its outcome goes.
struct Job {
    bytes: Bytes,
    reply: Reply,
    /// Its share of [`LANE_BUDGET_KIB`], given back when the job is answered or dropped.
    _budget: OwnedSemaphorePermit,
}

/// What every lane shares.
struct Shared {
    client: reqwest::Client,
    settings: BatchSettings,
    counters: BatchCounters,
    /// KiB of envelopes in lanes (waiting, or in a batch under way).
    budget: Arc<Semaphore>,
    /// Relays that do not batch.
    unbatched: Unbatched,
}

/// A lane as the senders see it.
struct LaneHandle {
    /// Tells this lane from a later one for the same relay.
    id: u64,
    jobs: mpsc::Sender<Job>,
}

/// Which lane: the relay's base URL (`http://host:port`) and the destination's shard.
type LaneKey = (String, usize);

type OpenLanes = Arc<Mutex<HashMap<LaneKey, LaneHandle>>>;

/// The open lanes.
pub struct Lanes {
    shared: Arc<Shared>,
    open: OpenLanes,
    next_id: AtomicU64,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Lanes {
    /// Lanes posting with `client`, run under `tasks` until `shutdown`.
    pub fn new(
        client: reqwest::Client,
        settings: BatchSettings,
        counters: BatchCounters,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Lanes {
            shared: Arc::new(Shared {
                client,
                settings,
                unbatched: Unbatched::new(counters.relays_unbatched.clone()),
                counters,
                budget: Arc::new(Semaphore::new(LANE_BUDGET_KIB)),
            }),
            open: Arc::default(),
            next_id: AtomicU64::new(0),
            tasks,
            shutdown,
        }
    }

    /// Queues `bytes`, for twin `destination`, in its lane to the relay at `base`, now,
    /// without waiting: envelopes queued one after another for one twin are sent in
    /// that order. `None` when it is to be posted alone: it is too large, the relay
    /// does not batch, or its lane (or all lanes' budget) is full.
    pub fn queue(&self, base: &str, destination: u32, bytes: &Bytes) -> Option<Queued> {
        let (reply, outcome) = oneshot::channel();
        self.enqueue(base, destination, bytes, Reply::Waiting(Some(reply)))
            .ok()?;
        Some(Queued(outcome))
    }

    /// As [`queue`](Lanes::queue), but the outcome goes to `then`, called in the lane
    /// when the batch is answered: no task waits for it (a topic fan-out forwards
    /// hundreds of envelopes at once). Gives `then` back, uncalled, when the envelope is
    /// to be posted alone.
    pub fn queue_then(
        &self,
        base: &str,
        destination: u32,
        bytes: &Bytes,
        then: Then,
    ) -> Result<(), Then> {
        let reply = Reply::Then {
            then: Some(then),
            queued_at: Instant::now(),
        };
        self.enqueue(base, destination, bytes, reply)
            .map_err(|reply| reply.into_then().expect("a callback not yet called"))
    }

    fn enqueue(
        &self,
        base: &str,
        destination: u32,
        bytes: &Bytes,
        reply: Reply,
    ) -> Result<(), Reply> {
        let Some(jobs) = self.lane_for(base, destination, bytes) else {
            return Err(reply);
        };
        let kib = u32::try_from(bytes.len() / 1024 + 1).unwrap_or(u32::MAX);
        let Ok(budget) = Arc::clone(&self.shared.budget).try_acquire_many_owned(kib) else {
            return Err(reply);
        };
        let job = Job {
            bytes: bytes.clone(),
            reply,
            _budget: budget,
        };
        jobs.try_send(job).map_err(|e| e.into_inner().reply)
    }

    /// Sends `bytes`, for twin `destination`, to the relay at `base` in a batch and waits
    /// for its outcome; [`Posted::Alone`] when it is to be posted alone instead.
    pub async fn post(&self, base: &str, destination: u32, bytes: &Bytes) -> Posted {
        match self.queue(base, destination, bytes) {
            Some(queued) => queued.outcome().await,
            None => Posted::Alone,
        }
    }

    /// The lane for an envelope of `bytes` for `destination` to `base`, if it is to be
    /// batched at all.
    fn lane_for(&self, base: &str, destination: u32, bytes: &Bytes) -> Option<mpsc::Sender<Job>> {
        let settings = &self.shared.settings;
        if !settings.enabled()
            || bytes.len() > settings.max_envelope_bytes
            || bytes.len().saturating_add(batch::PREFIX) > settings.max_bytes
            || self
                .shared
                .unbatched
                .knows(base, rmb_proto::time::unix_now())
        {
            return None;
        }
        let shard = destination as usize % settings.lanes_per_relay;
        self.lane((base.to_string(), shard))
    }

    /// The lane `key`, opened if need be; `None` when too many are open.
    fn lane(&self, key: LaneKey) -> Option<mpsc::Sender<Job>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = open.get(&key) {
            return Some(lane.jobs.clone());
        }
        if open.len() >= MAX_LANES {
            return None;
        }
        let (jobs, waiting) = mpsc::channel(MAX_WAITING);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let actor = Lane {
            id,
            url: reqwest::Url::parse(&format!("{}{BATCH_PATH}", key.0)).ok(),
            key: key.clone(),
            waiting,
            shared: Arc::clone(&self.shared),
            open: Arc::clone(&self.open),
            shutdown: self.shutdown.clone(),
        };
        self.tasks.spawn(actor.run());
        open.insert(
            key,
            LaneHandle {
                id,
                jobs: jobs.clone(),
            },
        );
        Some(jobs)
    }
}

/// The actor of one lane.
struct Lane {
    id: u64,
    key: LaneKey,
    /// Where its batches go (`{base}/federation/batch`), parsed once: parsing it for
    /// every batch was a twentieth of a forwarding relay's CPU in a topic fan-out.
    /// `None` when `base` does not parse; its envelopes are then posted alone.
    url: Option<reqwest::Url>,
    waiting: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    open: OpenLanes,
    shutdown: CancellationToken,
}

impl Lane {
    async fn run(mut self) {
        let mut carried: Option<Job> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => break,
                    job = self.waiting.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                    _ = tokio::time::sleep(IDLE) => {
                        if self.retire() {
                            break;
                        }
                        continue;
                    }
                },
            };
            let (jobs, carry) = self.fill(first);
            carried = carry;
            if jobs.is_empty() {
                continue;
            }
            let base = &self.key.0;
            let Some(url) = &self.url else {
                for job in jobs {
                    job.reply.send(Posted::Alone);
                }
                continue;
            };
            if self
                .shared
                .unbatched
                .knows(base, rmb_proto::time::unix_now())
            {
                // Found out while these waited: no further batch to find it out again.
                for job in jobs {
                    job.reply.send(Posted::Alone);
                }
                continue;
            }
            // Envelopes arriving meanwhile wait in `waiting`, for the next batch.
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                () = send_batch(&self.shared, base, url, jobs) => {}
            }
        }
        // On shutdown, a batch under way is dropped: its senders hear "shutting down".
        // Envelopes still waiting hear the same when `waiting` drops.
        self.forget();
    }

    /// `first` and what waits behind it, within the batch limits; the envelope that
    /// did not fit is carried to the next batch. Envelopes whose sender stopped waiting
    /// ([`LANE_WAIT`](super::outcome::LANE_WAIT)) are left out: it tries again elsewhere, and sending them too would
    /// deliver them twice.
    fn fill(&mut self, first: Job) -> (Vec<Job>, Option<Job>) {
        let settings = &self.shared.settings;
        let mut bytes = 0;
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if job.reply.given_up() {
                job.reply.send(Posted::Failed(NO_ANSWER_IN_TIME.into()));
            } else {
                let size = job.bytes.len() + batch::PREFIX;
                if !jobs.is_empty() && bytes + size > settings.max_bytes {
                    return (jobs, Some(job));
                }
                bytes += size;
                jobs.push(job);
            }
            if jobs.len() < settings.max_envelopes {
                next = self.waiting.try_recv().ok();
            }
        }
        (jobs, None)
    }

    /// Retires this lane if nothing waits in it: senders that took it before are told
    /// to post alone.
    fn retire(&mut self) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !self.waiting.is_empty() {
            return false;
        }
        if open.get(&self.key).is_some_and(|lane| lane.id == self.id) {
            open.remove(&self.key);
        }
        drop(open);
        self.waiting.close();
        while let Ok(job) = self.waiting.try_recv() {
            job.reply.send(Posted::Alone);
        }
        true
    }

    fn forget(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(&self.key).is_some_and(|lane| lane.id == self.id) {
            open.remove(&self.key);
        }
    }
}

/// Sends one batch to `url` (of the relay at `base`) and tells each envelope's sender
/// its outcome.
async fn send_batch(shared: &Shared, base: &str, url: &reqwest::Url, jobs: Vec<Job>) {
    let count = jobs.len();
    shared.counters.batches_out.inc();
    shared.counters.envelopes_out.inc_by(count as u64);
    let body = batch::encode(jobs.iter().map(|job| &job.bytes));
    let sent = shared
        .client
        .post(url.clone())
        .header("content-type", BATCH_CONTENT_TYPE)
        .timeout(BATCH_TIMEOUT)
        .body(body)
        .send()
        .await;
    let all = |posted: Posted| vec![posted; count];
    let outcomes = match sent {
        Err(e) => all(Posted::unsent(&e)),
        Ok(answer) if answer.status() == StatusCode::OK => {
            match read_answer(answer, batch::max_answer_bytes(count))
                .await
                .and_then(|body| batch::decode_answer(&body, count))
            {
                Some(outcomes) => outcomes.into_iter().map(Posted::from_outcome).collect(),
                // Something that answers any path (a web server in front of a relay):
                // not a relay of ours, which always answers a batch with its outcomes.
                None => {
                    shared.unbatched.remember(base, rmb_proto::time::unix_now());
                    all(Posted::Alone)
                }
            }
        }
        Ok(answer) if does_not_batch(answer.status()) => {
            shared.unbatched.remember(base, rmb_proto::time::unix_now());
            all(Posted::Alone)
        }
        // Refused as a whole for its size or a limit of the receiver's (413, 429…):
        // each alone, this once.
        Ok(answer) if answer.status().is_client_error() => all(Posted::Alone),
        Ok(answer) => all(Posted::Failed(answer.status().to_string())),
    };
    for (job, posted) in jobs.into_iter().zip(outcomes) {
        job.reply.send(posted);
    }
}

/// The body of `answer`, if it has at most `limit` bytes.
async fn read_answer(mut answer: reqwest::Response, limit: usize) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::batch::Outcome;
    use crate::federation::outcome::SHUTTING_DOWN;

    /// Lanes with `settings`, their supervisor and their shutdown.
    fn lanes(settings: BatchSettings) -> (Lanes, TaskTracker, CancellationToken) {
        let counter = |name: &str| IntCounter::new(name, "test").unwrap();
        let counters = BatchCounters {
            batches_out: counter("b"),
            envelopes_out: counter("e"),
            relays_unbatched: counter("u"),
        };
        let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let lanes = Lanes::new(
            reqwest::Client::new(),
            settings,
            counters,
            tasks.clone(),
            shutdown.clone(),
        );
        (lanes, tasks, shutdown)
    }

    /// A relay that accepts connections and reads nothing (a first batch stays under
    /// way): its base URL, and the task holding its connections.
    async fn silent_relay() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                kept.push(socket);
            }
        });
        (base, held)
    }

    #[tokio::test]
    async fn a_relay_that_never_answers_makes_lanes_hold_a_bounded_number_of_envelopes() {
        let (base, held) = silent_relay().await;
        let (lanes, tasks, shutdown) = lanes(BatchSettings {
            max_envelopes: 4,
            lanes_per_relay: 2,
            ..BatchSettings::default()
        });
        let envelope = Bytes::from_static(b"envelope");
        let mut queued = Vec::new();
        for _ in 0..MAX_WAITING + 100 {
            if let Some(q) = lanes.queue(&base, 7, &envelope) {
                queued.push(q);
            }
            if queued.len() == 1 {
                // Let the lane take the first into a batch, which stays under way.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // The batch under way (taken out of the lane) and the most that may wait.
        assert!(
            (MAX_WAITING..=MAX_WAITING + 4).contains(&queued.len()),
            "{} queued",
            queued.len()
        );
        // Another twin's lane is not held up by this one's.
        assert!(lanes.queue(&base, 8, &envelope).is_some());
        assert_eq!(lanes.post(&base, 7, &envelope).await, Posted::Alone);
        // Shutdown: the lanes end, and every queued envelope hears it.
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        for q in queued {
            assert!(matches!(q.outcome().await, Posted::Failed(_)));
        }
        held.abort();
    }

    #[tokio::test]
    async fn all_lanes_together_hold_at_most_their_budget() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (lanes, _tasks, shutdown) = lanes(BatchSettings {
            max_envelope_bytes: 2 << 20,
            max_bytes: 4 << 20,
            ..BatchSettings::default()
        });
        let envelope = Bytes::from(vec![0u8; 1 << 20]);
        let queued: Vec<Queued> = (0..200)
            .filter_map(|twin| lanes.queue(&base, twin, &envelope))
            .collect();
        // 1 MiB and 1 KiB each, within 64 MiB.
        assert_eq!(queued.len(), LANE_BUDGET_KIB / 1025);
        shutdown.cancel();
        drop(listener);
    }

    /// A stand-in relay taking batches: envelopes reading `ok` are accepted, others
    /// refused with 404.
    async fn relay_taking_batches() -> String {
        use axum::routing::post;
        let answer = |body: Bytes| async move {
            let envelopes = batch::decode(&body, 1 << 20, 1024).unwrap();
            let outcomes: Vec<Outcome> = envelopes
                .iter()
                .map(|e| match &e[..] {
                    b"ok" => Outcome::accepted(),
                    _ => Outcome::refused(404, "not here"),
                })
                .collect();
            serde_json::to_string(&outcomes).unwrap()
        };
        let app = axum::Router::new().route(BATCH_PATH, post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// A callback sending what it is called with to the returned receiver.
    fn collect() -> (impl Fn() -> Then, mpsc::UnboundedReceiver<Posted>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let make = move || -> Then {
            let tx = tx.clone();
            Box::new(move |posted| tx.send(posted).unwrap())
        };
        (make, rx)
    }

    async fn next(heard: &mut mpsc::UnboundedReceiver<Posted>) -> Posted {
        tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("an outcome in time")
            .expect("the sender lives")
    }

    #[tokio::test]
    async fn callbacks_hear_their_envelopes_outcome_once_and_uncalled_ones_come_back() {
        let base = relay_taking_batches().await;
        let (lanes, tasks, shutdown) = lanes(BatchSettings::default());
        let (then, mut heard) = collect();
        for body in ["ok", "no", "ok"] {
            assert!(
                lanes
                    .queue_then(&base, 7, &Bytes::from(body), then())
                    .is_ok()
            );
        }
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            outcomes.push(next(&mut heard).await);
        }
        assert_eq!(outcomes[0], Posted::Accepted);
        assert!(
            matches!(&outcomes[1], Posted::Refused { status, .. } if *status == StatusCode::NOT_FOUND)
        );
        assert_eq!(outcomes[2], Posted::Accepted);
        // Too large for a batch: given back uncalled, for the sender to post alone.
        let large = Bytes::from(vec![0u8; DEFAULT_MAX_ENVELOPE_BYTES + 1]);
        assert!(lanes.queue_then(&base, 7, &large, then()).is_err());
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        // Each was called once: nothing more comes.
        assert!(heard.try_recv().is_err());
    }

    #[tokio::test]
    async fn callbacks_of_envelopes_dropped_at_shutdown_hear_it() {
        let (base, held) = silent_relay().await;
        let (lanes, tasks, shutdown) = lanes(BatchSettings::default());
        let (then, mut heard) = collect();
        let envelope = Bytes::from_static(b"ok");
        assert!(lanes.queue_then(&base, 7, &envelope, then()).is_ok());
        // Let the lane take the first into a batch; the second waits behind it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(lanes.queue_then(&base, 7, &envelope, then()).is_ok());
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        for _ in 0..2 {
            let posted = next(&mut heard).await;
            assert_eq!(posted, Posted::Failed(SHUTTING_DOWN.into()));
        }
        assert!(heard.try_recv().is_err());
        held.abort();
    }
}
