//! The subscriber's side of topics: every message pushed by an owner is handed to local
//! apps exactly once and in id order, whatever order (and how often) it arrives in.
//!
//! One task owns the state of every subscription: the last id handed to apps (kept in
//! Redis, moved by a script only from the value the task saw, so a message is never
//! handed over twice, even across restarts), a bounded buffer of messages that came
//! early, and whether a pull is running. A message after a hole is buffered and the hole
//! is pulled from the owner (`rmb.topic.pull`); ids the owner no longer keeps
//! (retention) become a gap event for apps. Subscriptions are renewed with their owners
//! at start and every [`TopicsOptions::renew`](super::TopicsOptions::renew), or at
//! least three times per lease when an owner gives shorter leases (it drops subscribers
//! that do not renew, [`leases`](super::leases)); a renewal also reveals messages whose
//! push was lost (a subscriber that was offline catches up so).
//!
//! Pulls and renewals are requests to other twins; they run in a `JoinSet` the task owns,
//! so the task never waits on the network.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rmb_proto::Address;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::alarm::Alarm;
use super::counters::Counters;
use super::error::{TopicError, parse};
use super::handover::{PULL_BACKOFF, Sub, drain, gap, offer, record_all};
use super::reply::{reply, reply_error};
use super::shared::{REQUEST_EXPIRATION, Shared};
use super::sub_input::Input;
use super::wire::{self, AckMode, MessageJson, TopicName, codes};
use crate::core::{InboundRequest, OutgoingRequest, Reason};

/// Messages asked for per pull.
pub const PULL_PAGE: u32 = 256;
/// Most messages kept for a subscription that is being made.
pub const MAX_EARLY: usize = 1024;
/// Most queued inputs the task takes at once.
const INPUT_BATCH: usize = 64;
/// Wait before writing records again after Redis refused.
const RECORD_RETRY: Duration = Duration::from_millis(500);
/// How often subscriptions that are behind are looked at.
const TICK: Duration = Duration::from_millis(500);
/// Acknowledgements of recorded pushes wait this long (or until [`ACK_BATCH`] are due)
/// and go together: a message fanned out to many subscribers then reaches them all
/// before their acknowledgements compete with it for the CPU and the relay. Owners
/// resend only after a second or more ([`rtt`](crate::core::rtt)), so this costs nothing.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Most acknowledgements held back at once.
const ACK_BATCH: usize = 256;
/// Pushes an owner sent with [`AckMode::Cumulative`] are acknowledged together, one
/// [`wire::ACK`] per topic at most this long after the first of them: the owner sends
/// again only what stays unacknowledged for a second
/// ([`progress`](super::progress)), and a fan-out to many subscribers then costs one
/// acknowledgement per subscriber per quarter of a second, not one per push. (At a
/// tenth of a second the acknowledgements of 100 subscribers, all due at once after the
/// same fan-out, took a few percent of topic-bench's CPU; a quarter still leaves the
/// owner three quarters of a second before it sends anything again.)
const CUMULATIVE_ACK_DELAY: Duration = Duration::from_millis(250);

/// A finished network job.
enum Job {
    Pulled {
        topic: TopicName,
        result: Result<wire::Pulled, TopicError>,
    },
    Renewed {
        topic: TopicName,
        result: Result<wire::Subscribed, TopicError>,
    },
    /// The owner of a topic we do not subscribe to was asked to stop pushing it.
    ToldUnsubscribed(TopicName),
}

/// The subscriber task.
pub(crate) async fn run(shared: Arc<Shared>, mut input: mpsc::Receiver<Input>) {
    let mut subs = load(&shared).await;
    let mut early: HashMap<TopicName, Vec<MessageJson>> = HashMap::new();
    let mut jobs = JoinSet::new();
    for topic in subs.keys() {
        jobs.spawn(renew(Arc::clone(&shared), topic.clone()));
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew_tick = tokio::time::interval(shared.options.renew);
    renew_tick.reset();
    // Topics whose owner's lease is too short for `renew`: when each is renewed next.
    let mut soon = RenewSoon::default();
    // Answers due to pushes that want one each, and topics due a cumulative ack.
    let mut acks: Vec<InboundRequest> = Vec::new();
    let mut ack_at = Alarm::default();
    let mut ack_due: HashSet<TopicName> = HashSet::new();
    let mut cumulative_at = Alarm::default();
    // Owners being told we do not subscribe to a topic they push (one call at a time).
    let mut telling: HashSet<TopicName> = HashSet::new();
    // When the records of handed-over messages are written next.
    let mut record_at = Alarm::default();
    // Made once: this loop turns once per push.
    let stop = shared.stop.clone().cancelled_owned();
    tokio::pin!(stop);
    loop {
        if !record_at.is_set() && subs.values().any(Sub::unrecorded) {
            // Handed-over messages of subscriptions without a Redis list are recorded
            // at most this long after the first of them, together.
            record_at.set(Instant::now() + shared.options.record_delay);
        }
        tokio::select! {
            _ = &mut stop => {
                // What was handed over is recorded if Redis answers in time; otherwise
                // it is pulled and handed over again after the restart.
                let _ = tokio::time::timeout(Duration::from_secs(2), record_all(&shared, &mut subs)).await;
                break;
            }
            _ = record_at.ring(), if record_at.is_set() => {
                if !record_all(&shared, &mut subs).await {
                    record_at.set(Instant::now() + RECORD_RETRY);
                }
            }
            _ = ack_at.ring(), if !acks.is_empty() => {
                // Answered means recorded.
                record_all(&shared, &mut subs).await;
                send_acks(&shared, &mut acks).await;
            }
            _ = cumulative_at.ring(), if !ack_due.is_empty() => {
                send_cumulative_acks(&shared, &subs, &mut ack_due).await;
            }
            next = input.recv() => {
                let Some(first) = next else { break };
                // What else is queued goes with it: a burst costs one Redis call per
                // topic, and each request is answered once its messages are recorded.
                let mut inputs = vec![first];
                while inputs.len() < INPUT_BATCH {
                    match input.try_recv() {
                        Ok(more) => inputs.push(more),
                        Err(_) => break,
                    }
                }
                let mut recorded = Vec::new();
                let mut touched: Vec<TopicName> = Vec::new();
                for item in inputs {
                    match item {
                        Input::Message(request) => {
                            match accept(&shared, &mut subs, &mut early, &request).await {
                                Taken::Recorded { filled, topic, acks } => {
                                    if filled && !touched.contains(&topic) {
                                        touched.push(topic.clone());
                                    }
                                    // Handed over now rather than after the whole batch
                                    // of inputs when the next push might not fit: 64
                                    // pushes of up to 64 messages overflowed the buffer,
                                    // and what it dropped was pulled again.
                                    if let Some(sub) = subs.get_mut(&topic)
                                        && sub.nearly_full()
                                    {
                                        drain(&shared, &topic, sub).await;
                                    }
                                    match acks {
                                        AckMode::Each => recorded.push(request),
                                        AckMode::Cumulative => {
                                            if ack_due.is_empty() {
                                                cumulative_at.set(Instant::now() + CUMULATIVE_ACK_DELAY);
                                            }
                                            ack_due.insert(topic);
                                        }
                                    }
                                }
                                Taken::NotSubscribed(topic) => {
                                    if telling.insert(topic.clone()) {
                                        let shared = Arc::clone(&shared);
                                        jobs.spawn(async move {
                                            if let Err(e) = super::subscription::tell_owner_unsubscribed(&shared, &topic).await {
                                                tracing::debug!(%topic, error = %e, "could not tell an owner we do not subscribe");
                                            }
                                            Job::ToldUnsubscribed(topic)
                                        });
                                    }
                                }
                                Taken::Refused => {}
                            }
                        }
                        Input::Added { topic, last, list, owner_last, lease } => {
                            soon.lease(&topic, lease, shared.options.renew, Instant::now());
                            let sub = subs.entry(topic.clone()).or_insert_with(|| Sub::new(last, list));
                            sub.list = list;
                            sub.known_last = sub.known_last.max(owner_last);
                            shared.lock_subscribing().remove(&topic);
                            for message in early.remove(&topic).unwrap_or_default() {
                                offer(&shared, sub, message);
                            }
                            drain(&shared, &topic, sub).await;
                            start_pull(&shared, &topic, sub, &mut jobs);
                        }
                        Input::Removed(topic) => {
                            soon.forget(&topic);
                            subs.remove(&topic);
                            shared.unrecorded.forget(&topic);
                        }
                    }
                }
                for topic in touched {
                    if let Some(sub) = subs.get_mut(&topic) {
                        drain(&shared, &topic, sub).await;
                        if sub.pull_due(Instant::now()) {
                            start_pull(&shared, &topic, sub, &mut jobs);
                        }
                    }
                }
                if acks.is_empty() && !recorded.is_empty() {
                    ack_at.set(Instant::now() + ACK_DELAY);
                }
                acks.append(&mut recorded);
                if acks.len() >= ACK_BATCH {
                    record_all(&shared, &mut subs).await;
                    send_acks(&shared, &mut acks).await;
                }
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => match done {
                Ok(Job::ToldUnsubscribed(topic)) => {
                    telling.remove(&topic);
                }
                Ok(job) => {
                    if let Job::Renewed { topic, result: Ok(answer) } = &job
                        && subs.contains_key(topic)
                    {
                        soon.lease(topic, answer.lease, shared.options.renew, Instant::now());
                    }
                    on_job(&shared, &mut subs, &mut jobs, job).await
                }
                Err(e) => tracing::error!(error = %e, "a topic pull task failed"),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                {
                    let subscribing = shared.lock_subscribing();
                    early.retain(|topic, _| subscribing.contains(topic));
                }
                for (topic, sub) in subs.iter_mut() {
                    if sub.pull_due(now) {
                        start_pull(&shared, topic, sub, &mut jobs);
                    }
                }
                for topic in soon.due(now) {
                    jobs.spawn(renew(Arc::clone(&shared), topic));
                }
            }
            _ = renew_tick.tick() => {
                for topic in subs.keys() {
                    jobs.spawn(renew(Arc::clone(&shared), topic.clone()));
                }
            }
        }
    }
    jobs.shutdown().await;
}

/// Subscriptions renewed more often than every `renew` because their owner's lease
/// is shorter than three of those: by topic, the interval and the next renewal.
#[derive(Default)]
struct RenewSoon(HashMap<TopicName, (Duration, Instant)>);

impl RenewSoon {
    /// The owner of `topic` said its lease lasts `lease` seconds (`None`: it gives none).
    fn lease(&mut self, topic: &TopicName, lease: Option<u64>, renew: Duration, now: Instant) {
        let every = lease.map(|secs| Duration::from_secs(secs) / 3);
        match every {
            Some(every) if every < renew => {
                let every = every.max(Duration::from_millis(500));
                let next = self.0.get(topic).map_or(now + every, |(_, next)| *next);
                self.0.insert(topic.clone(), (every, next.min(now + every)));
            }
            _ => {
                self.0.remove(topic);
            }
        }
    }

    fn forget(&mut self, topic: &TopicName) {
        self.0.remove(topic);
    }

    /// The topics due a renewal at `now` (each is then due again an interval later).
    fn due(&mut self, now: Instant) -> Vec<TopicName> {
        let mut out = Vec::new();
        for (topic, (every, next)) in &mut self.0 {
            if *next <= now {
                *next = now + *every;
                out.push(topic.clone());
            }
        }
        out
    }
}

/// Answers the pushes whose messages are recorded (an owner resends what stays
/// unanswered), saying that we can acknowledge cumulatively.
async fn send_acks(shared: &Shared, acks: &mut Vec<InboundRequest>) {
    let answer = wire::PushAnswer {
        acks: AckMode::Cumulative,
    };
    let body = serde_json::to_vec(&answer).expect("an answer serialises");
    for request in acks.drain(..) {
        reply(shared, &request, Ok(body.clone())).await;
    }
}

/// Tells the owner of each topic in `due` the last id handed to apps ([`wire::ACK`];
/// not answered, and a lost one is made up for by the next).
async fn send_cumulative_acks(
    shared: &Shared,
    subs: &HashMap<TopicName, Sub>,
    due: &mut HashSet<TopicName>,
) {
    for topic in due.drain() {
        // One still being subscribed to is acknowledged with its next push.
        let Some(sub) = subs.get(&topic) else {
            continue;
        };
        // What is recorded: what is only handed over would be pulled again after a
        // crash, so the owner may as well send it again.
        let body = wire::AckRequest {
            topic: topic.name.clone(),
            last: sub.recorded,
        };
        let request = OutgoingRequest {
            uid: uuid::Uuid::new_v4().to_string(),
            destination: Address::twin(topic.owner),
            command: wire::ACK.into(),
            payload: serde_json::to_vec(&body).expect("an ack serialises"),
            schema: Some("application/json".into()),
            tags: None,
            timestamp: 0,
            expiration: REQUEST_EXPIRATION,
        };
        if let Err(e) = shared.peer.send_one_way(request).await
            && shared
                .peer
                .log_allowed(u64::from(topic.owner), Reason::InvalidMessage)
        {
            tracing::debug!(%topic, error = %e, "could not acknowledge (the owner sends again)");
        }
    }
}

/// The subscriptions kept in Redis (retried until Redis answers or shutdown).
async fn load(shared: &Shared) -> HashMap<TopicName, Sub> {
    let mut wait = Duration::from_millis(100);
    loop {
        match shared.store.subscriptions().await {
            Ok(records) => {
                return records
                    .into_iter()
                    .map(|r| (r.topic, Sub::new(r.last, r.list)))
                    .collect();
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the subscriptions; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stop.cancelled() => return HashMap::new(),
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// What became of a `rmb.topic.message` request.
enum Taken {
    /// Its messages are buffered (or were seen already): once they are recorded it is
    /// answered ([`AckMode::Each`]) or its topic acknowledged ([`AckMode::Cumulative`]).
    Recorded {
        /// It filled the subscription's buffer (false: one being made kept it).
        filled: bool,
        topic: TopicName,
        acks: AckMode,
    },
    /// A push wanting no answer, for a topic we do not subscribe to: its owner is to be
    /// told, or it keeps pushing.
    NotSubscribed(TopicName),
    /// Refused with an error reply.
    Refused,
}

/// Checks a `rmb.topic.message` request and buffers its messages; a refused one is
/// answered with an error at once.
async fn accept(
    shared: &Arc<Shared>,
    subs: &mut HashMap<TopicName, Sub>,
    early: &mut HashMap<TopicName, Vec<MessageJson>>,
    request: &InboundRequest,
) -> Taken {
    let batch: wire::Batch = match serde_json::from_slice(&request.payload) {
        Ok(b) => b,
        Err(e) => {
            let text = format!("{} body is not valid: {e}", wire::MESSAGE);
            return refuse(shared, request, "bad_message", codes::BAD_REQUEST, text).await;
        }
    };
    let Some(first) = batch.messages.first() else {
        let text = "a message batch is empty".to_string();
        return refuse(shared, request, "bad_message", codes::BAD_REQUEST, text).await;
    };
    if batch.messages.len() > wire::MAX_BATCH
        || batch.messages.iter().any(|m| m.topic != first.topic)
    {
        let text = format!(
            "a message batch holds 1 to {} messages of one topic",
            wire::MAX_BATCH
        );
        return refuse(shared, request, "bad_message", codes::BAD_REQUEST, text).await;
    }
    let topic = match first.topic.parse::<TopicName>() {
        Ok(t) => t,
        Err(e) => {
            return refuse(
                shared,
                request,
                "bad_message",
                codes::BAD_REQUEST,
                e.to_string(),
            )
            .await;
        }
    };
    if topic.owner != request.source.twin {
        let text = format!("only twin {} sends messages of {topic}", topic.owner);
        return refuse(shared, request, "not_owner", codes::REFUSED, text).await;
    }
    let acks = batch.acks;
    let Some(sub) = subs.get_mut(&topic) else {
        if shared.lock_subscribing().contains(&topic) {
            // Pushed between the owner's answer and the subscription being recorded.
            let kept = early.entry(topic.clone()).or_default();
            let room = MAX_EARLY.saturating_sub(kept.len());
            kept.extend(batch.messages.into_iter().take(room));
            return Taken::Recorded {
                filled: false,
                topic,
                acks,
            };
        }
        if acks == AckMode::Cumulative {
            shared.counters.refuse("not_subscribed");
            return Taken::NotSubscribed(topic);
        }
        let text = format!(
            "twin {} is not subscribed to {topic}",
            shared.peer.twin_id()
        );
        return refuse(shared, request, "not_subscribed", codes::NOT_FOUND, text).await;
    };
    Counters::add(&shared.counters.received, batch.messages.len() as u64);
    for message in batch.messages {
        offer(shared, sub, message);
    }
    if let Some(last) = batch.last {
        // A resend of what we left unacknowledged: the topic got this far.
        sub.known_last = sub.known_last.max(last);
    }
    Taken::Recorded {
        filled: true,
        topic,
        acks,
    }
}

/// Answers a refused message request with an error.
async fn refuse(
    shared: &Shared,
    request: &InboundRequest,
    reason: &'static str,
    code: u32,
    text: String,
) -> Taken {
    reply_error(shared, request, reason, code, text).await;
    Taken::Refused
}

fn start_pull(shared: &Arc<Shared>, topic: &TopicName, sub: &mut Sub, jobs: &mut JoinSet<Job>) {
    if sub.pulling || !sub.behind() {
        return;
    }
    sub.pulling = true;
    let (shared, topic, since) = (Arc::clone(shared), topic.clone(), sub.last);
    jobs.spawn(async move {
        Counters::bump(&shared.counters.pulls);
        let result = pull_remote(&shared, &topic, since, PULL_PAGE).await;
        Job::Pulled { topic, result }
    });
}

async fn renew(shared: Arc<Shared>, topic: TopicName) -> Job {
    let body = wire::SubscribeRequest {
        topic: topic.name.clone(),
        acks: AckMode::Cumulative,
    };
    let result = shared
        .call(
            topic.owner,
            wire::SUBSCRIBE,
            serde_json::to_vec(&body).expect("a request serialises"),
            shared.options.timeout,
        )
        .await
        .and_then(|bytes| parse(topic.owner, &bytes));
    Job::Renewed { topic, result }
}

async fn on_job(
    shared: &Arc<Shared>,
    subs: &mut HashMap<TopicName, Sub>,
    jobs: &mut JoinSet<Job>,
    job: Job,
) {
    match job {
        // The task's loop clears its `telling` entry.
        Job::ToldUnsubscribed(_) => {}
        Job::Renewed { topic, result } => {
            let Some(sub) = subs.get_mut(&topic) else {
                return;
            };
            match result {
                Ok(answer) => {
                    sub.known_last = sub.known_last.max(answer.last_id);
                    start_pull(shared, &topic, sub, jobs);
                }
                Err(e) => {
                    if shared
                        .peer
                        .log_allowed(u64::from(topic.owner), Reason::InvalidMessage)
                    {
                        if shared.peer.any_connected() {
                            tracing::warn!(%topic, error = %e, "cannot renew a subscription; retried at the next renewal (logged once per 10 s per owner)");
                        } else {
                            tracing::warn!(%topic, error = %e, "cannot renew a subscription: no relay link is up (reconnecting); retried at the next renewal (logged once per 10 s per owner)");
                        }
                    }
                }
            }
        }
        Job::Pulled { topic, result } => {
            let Some(sub) = subs.get_mut(&topic) else {
                return;
            };
            sub.pulling = false;
            match result {
                Ok(pulled) => {
                    let before = sub.last;
                    let page = pulled.messages.len() as u64;
                    if apply_pull(shared, &topic, sub, pulled).await.is_err() || sub.last == before
                    {
                        sub.next_pull = Instant::now() + PULL_BACKOFF;
                    } else if page >= u64::from(PULL_PAGE) && sub.last - before >= page {
                        // A full page, all of it handed over: the owner has more of
                        // what we missed.
                        start_pull(shared, &topic, sub, jobs);
                    } else {
                        // We reached the owner's newest id (what came since is being
                        // pushed), or could hand over only part of the page (apps or
                        // records are behind): pulling again at once would fetch the
                        // same messages again. Pushes get their grace first.
                        sub.behind_since = None;
                    }
                }
                Err(e) => {
                    sub.next_pull = Instant::now() + PULL_BACKOFF;
                    if shared
                        .peer
                        .log_allowed(u64::from(topic.owner), Reason::InvalidMessage)
                    {
                        tracing::warn!(%topic, error = %e, "cannot pull missed messages (logged once per 10 s per owner)");
                    }
                }
            }
        }
    }
}

/// Applies a pull answer: reports what retention lost, hands over what came.
async fn apply_pull(
    shared: &Shared,
    topic: &TopicName,
    sub: &mut Sub,
    pulled: wire::Pulled,
) -> Result<(), ()> {
    sub.known_last = sub.known_last.max(pulled.last_id);
    // Everything before `first_id` is gone at the owner, except what we buffered.
    let lost_to = pulled.first_id.saturating_sub(1);
    while sub.last < lost_to {
        if sub.buffer.contains_key(&(sub.last + 1)) {
            let before = sub.last;
            drain(shared, topic, sub).await;
            if sub.last == before {
                // Redis refused: the next pull tries again.
                return Err(());
            }
            continue;
        }
        let next_buffered = sub.buffer.keys().next().copied().filter(|&k| k <= lost_to);
        let to = next_buffered.map_or(lost_to, |k| k - 1);
        gap(shared, topic, sub, to).await?;
    }
    let name = topic.to_string();
    for message in pulled.messages {
        if message.topic == name {
            offer(shared, sub, message);
        }
    }
    drain(shared, topic, sub).await;
    Ok(())
}

/// Asks the owner for messages of `topic` after `since`.
pub(crate) async fn pull_remote(
    shared: &Shared,
    topic: &TopicName,
    since: u64,
    limit: u32,
) -> Result<wire::Pulled, TopicError> {
    let body = wire::PullRequest {
        topic: topic.name.clone(),
        since,
        limit,
    };
    let bytes = shared
        .call(
            topic.owner,
            wire::PULL,
            serde_json::to_vec(&body).expect("a request serialises"),
            shared.options.timeout,
        )
        .await?;
    parse(topic.owner, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_leases_are_renewed_three_times_per_lease() {
        let topic: TopicName = "7/a".parse().unwrap();
        let renew = Duration::from_secs(30);
        let s = Duration::from_secs(1);
        let now = Instant::now();
        let mut soon = RenewSoon::default();
        soon.lease(&topic, Some(300), renew, now);
        assert!(
            soon.due(now + 1000 * s).is_empty(),
            "a long lease: the usual renewals keep it"
        );
        soon.lease(&topic, Some(30), renew, now);
        assert!(soon.due(now + 9 * s).is_empty());
        assert_eq!(soon.due(now + 10 * s), vec![topic.clone()]);
        assert!(soon.due(now + 19 * s).is_empty());
        assert_eq!(soon.due(now + 20 * s), vec![topic.clone()]);
        // An owner that gives no lease (an older peer) gets the usual renewals.
        soon.lease(&topic, None, renew, now);
        assert!(soon.due(now + 1000 * s).is_empty());
        soon.lease(&topic, Some(3), renew, now);
        soon.forget(&topic);
        assert!(soon.due(now + 1000 * s).is_empty());
    }
}
