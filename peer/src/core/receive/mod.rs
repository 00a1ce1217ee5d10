//! The receiving half of the core: every frame a relay delivers goes through
//!
//! ```text
//! decode (size-limited) → precheck (keepalive, expiry, twin-0 errors, addressee)
//!   → source twin lookup (103) → shape + signature (104, ed25519 batched)
//!   → decrypt with our published scheme (105/106) → replay check → application
//! ```
//!
//! Senders looked up are remembered for a second ([`senders`](super::senders)). What
//! the application side takes itself (topic pushes) leaves through its
//! [`tap`](super::tap) instead of the inbound channel.
//!
//! Unsigned connection data frames ([`Precheck::ConnFrame`]) stop after the precheck:
//! they go to the connection layer as [`Inbound::ConnFrame`], which authenticates them
//! under the connection's keys and keeps its own replay window, so they cost no
//! lookup, MD5, signature, decryption or replay-store entry here.
//!
//! A refused *request* gets a signed error envelope back (same uid) only when its
//! sender is proven: its signature verified, or its encryption authenticated it. A
//! refusal of what proves nothing about its sender (unsigned and not authenticated, a
//! bad signature, an unknown or unlooked-up sender, a deadline or address refused before
//! the signature checks out) is dropped and counted, never answered: the answer would
//! go to whichever twin the envelope names, charged to our own relay budget, so a
//! stranger could lock us out and aim our errors at anyone. Expired, too-far and
//! misaddressed requests are therefore verified first, and answered only when their
//! signature holds (as often as repeats are: [`repeats`](super::repeats)). Refused
//! replies are logged and counted. `rmb.version` is answered here and never reaches the
//! application; pings and pongs are dropped.
//!
//! Signature checks cost tens of µs each, so they must not all run on one task, even
//! when all traffic comes from one sender (a peer pair). A dispatcher task drains the
//! relay frames in batches, decodes, prechecks and looks up senders (cached), then
//! spawns the CPU work of each batch (ed25519 signatures verified together, then
//! decryption) as its own task, so batches run in parallel on every core. A deliverer
//! task awaits those tasks in the order they were spawned, applies the replay check and
//! hands messages to the application: arrival order is kept. A batch without
//! signatures, checked on the spot while nothing waits at the deliverer, is delivered
//! by the dispatcher itself (one task hop less).
//!
//! Decryption comes before the replay check so that only an envelope that is accepted
//! in full uses up its uid. Unsigned requests skip it: their uid is not authenticated,
//! and their handlers drop repeats themselves. A repeated request that was answered already gets the cached
//! answer again; an answer settles the request's resends ([`resend`](super::resend)).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmb_identity::envelope::check_shape;
use rmb_identity::registry::Twin;
use rmb_identity::{E2eError, EnvelopeError, SignatureError, verified_in_groups, verify};
use rmb_proto::time::unix_now;
use rmb_proto::{
    Address, Binding, DEFAULT_MAX_ENVELOPE_SIZE, Envelope, Message, MessageKind, Payload,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::checks::{Precheck, precheck};
use super::errors::{Refusal, codes};
use super::refusals::{Reason, UNPROVEN_SOURCE};
use super::replay::{Admission, ReplayKey, ReplayKind};
use super::senders::Senders;
use super::status::Counters;
use super::types::{
    ConnFrame, DEFAULT_EXPIRATION, Inbound, InboundRequest, InboundResponse, OutgoingResponse,
    RemoteError,
};
use super::{Inner, VERSION_COMMAND};
use crate::links::Frame;
use deliver::Deliverer;

mod deliver;

/// Most envelopes checked by one task (bounds the time it holds a runtime thread).
const BATCH: usize = 16;
/// Batches being checked at once, ahead of delivery.
const IN_FLIGHT: usize = 4;

/// What the checks decided for one envelope.
enum Outcome {
    /// Verified and decrypted; from this twin. Still subject to the replay check.
    Accepted(Envelope, u32),
    /// A relay's error report.
    RelayError(Envelope),
    /// An unsigned connection data frame, for the connection layer to authenticate.
    ConnFrame(Envelope),
    Refused(Envelope, Refusal, Sender),
}

/// Whether a refused envelope proved who sent it, and so may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// Its signature verified, or its encryption authenticated it.
    Proven,
    /// Nothing proves it: an answer would go to whoever it names.
    Unproven,
}

/// An envelope between the dispatcher and the checking task: to verify (and then
/// refuse, when the precheck refused it and only the signature decides whether that
/// refusal is answered), or decided already.
enum Staged {
    Verify(Envelope, Arc<Twin>, Option<Refusal>),
    Done(Outcome),
}

/// A batch on its way to the deliverer: checked already, or being checked on its own task.
enum Checking {
    Done(Vec<Outcome>),
    Running(JoinHandle<Vec<Outcome>>),
}

/// Starts the dispatcher and the deliverer; they end when `incoming` closes.
pub(super) fn spawn(
    inner: &Arc<Inner>,
    incoming: mpsc::Receiver<Frame>,
    inbound: mpsc::Sender<Inbound>,
) -> Vec<JoinHandle<()>> {
    let (checking_tx, checking_rx) = mpsc::channel(IN_FLIGHT);
    let deliverer = Deliverer {
        inner: Arc::clone(inner),
        inbound,
        queued: Arc::new(AtomicUsize::new(0)),
    };
    let to_deliverer = Queue {
        checking: checking_tx,
        deliverer: deliverer.clone(),
    };
    vec![
        tokio::spawn(dispatch(Arc::clone(inner), incoming, to_deliverer)),
        tokio::spawn(deliverer.run(checking_rx)),
    ]
}

/// The dispatcher's way to the deliverer. A batch checked on the spot while the
/// deliverer has nothing queued is delivered by the dispatcher itself (one task hop
/// less per message: the common case of unsigned bulk traffic); otherwise it queues
/// behind the others, so arrival order is kept either way.
struct Queue {
    checking: mpsc::Sender<Checking>,
    deliverer: Deliverer,
}

impl Queue {
    /// False when the deliverer stopped.
    async fn send(&self, task: Checking) -> bool {
        if let Checking::Done(outcomes) = task {
            // Only the dispatcher queues, so nothing can be queued between this check
            // and the delivery: everything sent before was delivered already.
            if self.deliverer.queued.load(Ordering::Acquire) == 0 {
                self.deliverer.deliver_all(outcomes).await;
                return true;
            }
            return self.queue(Checking::Done(outcomes)).await;
        }
        self.queue(task).await
    }

    async fn queue(&self, task: Checking) -> bool {
        self.deliverer.queued.fetch_add(1, Ordering::AcqRel);
        if self.checking.send(task).await.is_err() {
            self.deliverer.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Decodes and prechecks frames, looks up their senders, and starts checking each batch.
async fn dispatch(inner: Arc<Inner>, mut incoming: mpsc::Receiver<Frame>, checking: Queue) {
    let mut frames = Vec::with_capacity(BATCH);
    let mut senders = Senders::default();
    while incoming.recv_many(&mut frames, BATCH).await > 0 {
        let now = unix_now();
        let looked_at = std::time::Instant::now();
        let mut staged = Vec::with_capacity(frames.len());
        for frame in frames.drain(..) {
            let env = match Envelope::decode_limited_shared(&frame.bytes, DEFAULT_MAX_ENVELOPE_SIZE)
            {
                Ok(env) => env,
                Err(e) => {
                    inner.count_refusal(Reason::Undecodable);
                    let link = frame.link as u64;
                    if inner
                        .log_limiter
                        .allow(link, Reason::Undecodable, std::time::Instant::now())
                    {
                        tracing::warn!(link = frame.link, error = %e, "dropping an undecodable frame from a relay (logged once per 10 s per link)");
                    }
                    continue;
                }
            };
            let step = match precheck(&env, inner.twin, now, inner.max_lifetime) {
                Ok(Precheck::Keepalive) => continue,
                Ok(Precheck::RelayError) => Staged::Done(Outcome::RelayError(env)),
                Ok(Precheck::ConnFrame) => Staged::Done(Outcome::ConnFrame(env)),
                Ok(Precheck::Verify) => lookup(&inner, &mut senders, env, looked_at, None).await,
                // A signed request refused for its time or address is answered when its
                // signature holds (the sender then learns why); nothing else refused here
                // can be, so it costs no lookup.
                Err(refusal) if answerable_after_verifying(&env, &refusal) => {
                    lookup(&inner, &mut senders, env, looked_at, Some(refusal)).await
                }
                Err(refusal) => Staged::Done(Outcome::Refused(env, refusal, Sender::Unproven)),
            };
            staged.push(step);
        }
        if staged.is_empty() {
            continue;
        }
        // Without a signature to verify (unsigned bulk traffic, refusals) a batch costs a
        // few µs: checked here, not worth a task of its own.
        let cheap = staged.iter().all(|step| match step {
            Staged::Verify(env, _, _) => env.signature.is_none(),
            Staged::Done(_) => true,
        });
        let task = if cheap {
            Checking::Done(check(&inner, staged))
        } else {
            let inner = Arc::clone(&inner);
            Checking::Running(tokio::spawn(async move { check(&inner, staged) }))
        };
        if !checking.send(task).await {
            return;
        }
    }
}

/// True for a precheck refusal that is answered once the signature (or, for an
/// unsigned RPC, its encryption) proves the sender: a request refused for its deadline
/// or address.
fn answerable_after_verifying(env: &Envelope, refusal: &Refusal) -> bool {
    let proof = match &env.message {
        Some(Message::Request(r)) if env.is_unsigned() => {
            env.is_unsigned_sealed() && Envelope::request_binding(&r.command) == Binding::Rpc
        }
        _ => !env.is_unsigned(),
    };
    proof
        && env.kind() == MessageKind::Request
        && matches!(
            refusal.reason,
            Reason::Expired | Reason::TooFar | Reason::Misaddressed
        )
}

/// Finds the sender's twin (its account verifies the signature, its key decrypts).
/// `refused`: the precheck's refusal, to make once the signature is checked. Without
/// the twin nothing can be proven, so that refusal (or the lookup's own) is not answered.
async fn lookup(
    inner: &Inner,
    senders: &mut Senders,
    env: Envelope,
    now: std::time::Instant,
    refused: Option<Refusal>,
) -> Staged {
    let source = env.source_twin();
    let unproven = |env, refusal| Staged::Done(Outcome::Refused(env, refusal, Sender::Unproven));
    match senders.get(inner.registry.as_ref(), source, now).await {
        Ok(Some(twin)) => Staged::Verify(env, twin, refused),
        Ok(None) => {
            let refusal = refused.unwrap_or_else(|| {
                Refusal::new(
                    codes::UNKNOWN_TWIN,
                    Reason::UnknownTwin,
                    format!("unknown twin id '{source}'"),
                )
            });
            unproven(env, refusal)
        }
        Err(e) => {
            let refusal = refused.unwrap_or_else(|| {
                Refusal::new(
                    codes::OTHER,
                    Reason::RegistryDown,
                    format!("other: twin lookup failed: {e}"),
                )
            });
            unproven(env, refusal)
        }
    }
}

/// The CPU part, run as its own task: signatures (batched), then decryption.
fn check(inner: &Inner, staged: Vec<Staged>) -> Vec<Outcome> {
    let mut signed = Vec::new();
    let mut refused = Vec::new();
    let mut slots = Vec::with_capacity(staged.len());
    for step in staged {
        match step {
            Staged::Verify(env, twin, refusal) => {
                slots.push(None);
                signed.push((env, twin));
                refused.push(refusal);
            }
            Staged::Done(outcome) => slots.push(Some(outcome)),
        }
    }
    let now = unix_now();
    let unsigned: Vec<Option<Binding>> = signed
        .iter()
        .map(|(env, twin)| unsigned_binding(inner, env, twin.id, now))
        .collect();
    let skip: Vec<bool> = unsigned.iter().map(Option::is_some).collect();
    let verdicts = verify_all(&signed, &skip);
    let mut checked = signed
        .into_iter()
        .zip(verdicts)
        .zip(unsigned)
        .zip(refused)
        .map(|((((mut env, twin), verdict), unsigned), refused)| {
            if let Some(refusal) = refused {
                // Refused already; the signature (or the encryption of an unsigned
                // request) only decides whether it is answered.
                let proven = match unsigned {
                    Some(binding) => open_unsigned(inner, &mut env, &twin, binding, now).is_ok(),
                    None => verdict.is_ok(),
                };
                let sender = if proven {
                    Sender::Proven
                } else {
                    Sender::Unproven
                };
                return Outcome::Refused(env, refusal, sender);
            }
            // A signature that holds proves the sender even when decryption fails then;
            // an unsigned envelope is proven only by its decryption.
            let (opened, sender) = if let Some(binding) = unsigned {
                let opened = open_unsigned(inner, &mut env, &twin, binding, now);
                (opened, Sender::Unproven)
            } else {
                match verdict {
                    Ok(()) => (open(inner, &mut env, &twin), Sender::Proven),
                    Err(e) => (Err(e), Sender::Unproven),
                }
            };
            match opened {
                Ok(()) => Outcome::Accepted(env, twin.id),
                Err(e) => Outcome::Refused(env, Refusal::of_envelope_error(&e), sender),
            }
        });
    slots
        .into_iter()
        .filter_map(|slot| slot.or_else(|| checked.next()))
        .collect()
}

/// Decrypts a cipher payload in place with the scheme of the key we publish.
fn open(inner: &Inner, env: &mut Envelope, sender: &Twin) -> Result<(), EnvelopeError> {
    if let Some(Payload::Cipher(cipher)) = &env.payload {
        let plain = inner
            .identity
            .e2e()
            .open(inner.e2e, sender.pk.as_deref(), cipher)?;
        env.payload = Some(Payload::Plain(plain));
    }
    Ok(())
}

/// The binding an envelope without a signature must open with, when its encryption may
/// authenticate it instead ([`unsigned`](super::unsigned)): a request of an
/// [`UNSIGNED_COMMANDS`](super::unsigned::UNSIGNED_COMMANDS) command, or the answer to
/// such a request of ours awaited from this twin, with [`Binding::Topic`]; any other
/// request or response with [`Binding::Rpc`]. `None` for anything else (and anything
/// signed), which goes on to the signature check (refused there, 104, when unsigned).
fn unsigned_binding(inner: &Inner, env: &Envelope, twin: u32, now: u64) -> Option<Binding> {
    if !env.is_unsigned_sealed() {
        return None;
    }
    match &env.message {
        Some(Message::Request(r)) => Some(Envelope::request_binding(&r.command)),
        Some(Message::Response(_)) if inner.awaited_unsigned.is_awaited(&env.uid, twin, now) => {
            Some(Binding::Topic)
        }
        Some(Message::Response(_)) => Some(Binding::Rpc),
        _ => None,
    }
}

/// Authenticates an unsigned envelope by decrypting it with the key the sender's
/// *published* key derives, under the envelope's `binding` (source and destination
/// twins, uid, command; with [`Binding::Rpc`] every other field too), in place: a third
/// party's ciphertext fails, and so does one reflected back to its sender, re-sourced to
/// another twin or moved to another uid or command (or, for an RPC, given other times,
/// sessions, tags or schema). A topic answer then settles its awaited request; an RPC
/// shows that its sender takes unsigned RPCs too.
fn open_unsigned(
    inner: &Inner,
    env: &mut Envelope,
    sender: &Twin,
    binding: Binding,
    now: u64,
) -> Result<(), EnvelopeError> {
    check_shape(env)?;
    let key = sender.pk.as_deref().ok_or(E2eError::MissingSenderKey)?;
    let Some(Payload::Cipher(cipher)) = &env.payload else {
        return Err(SignatureError::Missing.into());
    };
    let data = env.binding_data(binding);
    let plain = inner
        .identity
        .e2e()
        .open_from(inner.e2e, key, cipher, &data)?;
    env.payload = Some(Payload::Plain(plain));
    Counters::bump(&inner.counters.received_unsigned);
    let is_response = matches!(env.message, Some(Message::Response(_)));
    if binding == Binding::Rpc {
        if !is_response {
            let now = std::time::Instant::now();
            inner.rmb_twins().sent_unsigned_rpc(sender.id, now);
        }
        return Ok(());
    }
    if is_response && !inner.awaited_unsigned.take(&env.uid, sender.id, now) {
        // Another copy settled it first; unsigned answers count once.
        return Err(SignatureError::Missing.into());
    }
    Ok(())
}

/// Checks shape and signature of each envelope against its sender's account.
///
/// The signatures of a batch are verified together per scheme (ed25519, sr25519):
/// about half the cost each, less again when one twin signed them all; if a batch
/// fails, each is checked alone to find the culprits. Those marked in `skip`
/// (unsigned, [`open_unsigned`]) get no verdict of their own.
fn verify_all(items: &[(Envelope, Arc<Twin>)], skip: &[bool]) -> Vec<Result<(), EnvelopeError>> {
    let digests: Vec<[u8; 16]> = items
        .iter()
        .zip(skip)
        .map(|((env, _), &skip)| {
            if skip {
                [0; 16]
            } else {
                env.challenge_digest()
            }
        })
        .collect();
    let mut verdicts: Vec<Option<Result<(), EnvelopeError>>> = vec![None; items.len()];
    let mut signed = Vec::new();
    for (i, (env, _)) in items.iter().enumerate() {
        if skip[i] {
            verdicts[i] = Some(Ok(()));
            continue;
        }
        if let Err(e) = check_shape(env) {
            verdicts[i] = Some(Err(e));
            continue;
        }
        match env.signature.as_deref() {
            None => verdicts[i] = Some(Err(SignatureError::Missing.into())),
            Some(_) => signed.push(i),
        }
    }
    let batch: Vec<_> = signed
        .iter()
        .map(|&i| {
            let sig = items[i].0.signature.as_deref().unwrap_or_default();
            (&items[i].1.account, &digests[i][..], sig)
        })
        .collect();
    for ((&i, together), (account, digest, sig)) in
        signed.iter().zip(verified_in_groups(&batch)).zip(&batch)
    {
        verdicts[i] = Some(if together {
            Ok(())
        } else {
            verify(account, digest, sig).map_err(Into::into)
        });
    }
    verdicts
        .into_iter()
        .map(|v| v.unwrap_or(Err(SignatureError::Missing.into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmb_identity::{Identity, KeyType};
    use rmb_proto::Request;

    fn signed(identity: &Identity, uid: &str) -> Envelope {
        let mut env = Envelope {
            uid: uid.into(),
            expiration: 60,
            source: Some(Address::twin(1)),
            destination: Some(Address::twin(2)),
            message: Some(Message::Request(Request {
                command: "c".into(),
            })),
            payload: Some(Payload::Plain(b"x".to_vec())),
            ..Default::default()
        };
        identity
            .seal_envelope(&mut env, None, 1_700_000_000)
            .unwrap();
        env
    }

    fn twin(identity: &Identity) -> Arc<Twin> {
        Arc::new(Twin {
            id: 1,
            account: identity.signer().account(),
            relays: Default::default(),
            pk: None,
        })
    }

    #[test]
    fn batches_verify_and_a_bad_one_is_singled_out() {
        let ed = Identity::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let sr = Identity::from_secret("//Bob", KeyType::Sr25519).unwrap();
        let mut items: Vec<(Envelope, Arc<Twin>)> = (0..5)
            .map(|i| (signed(&ed, &format!("e{i}")), twin(&ed)))
            .collect();
        items.push((signed(&sr, "s"), twin(&sr)));
        assert!(
            verify_all(&items, &vec![false; items.len()])
                .iter()
                .all(Result::is_ok)
        );

        // One forged (signed by Bob, claiming Alice's account) and one unsigned.
        items[2].1 = twin(&sr);
        items[4].0.signature = None;
        let verdicts = verify_all(&items, &vec![false; items.len()]);
        let failed: Vec<usize> = (0..verdicts.len())
            .filter(|&i| verdicts[i].is_err())
            .collect();
        assert_eq!(failed, [2, 4]);
        assert!(
            matches!(verdicts[2], Err(EnvelopeError::Signature(_))),
            "{:?}",
            verdicts[2]
        );
    }

    #[test]
    fn an_sr25519_batch_verifies_together_and_a_bad_one_is_singled_out() {
        let bob = Identity::from_secret("//Bob", KeyType::Sr25519).unwrap();
        let carol = Identity::from_secret("//Carol", KeyType::Sr25519).unwrap();
        let mut items: Vec<(Envelope, Arc<Twin>)> = (0..6)
            .map(|i| (signed(&bob, &format!("s{i}")), twin(&bob)))
            .collect();
        assert!(
            verify_all(&items, &vec![false; items.len()])
                .iter()
                .all(Result::is_ok)
        );
        // Carol's signature presented as Bob's; one of Bob's real signatures moved to
        // another of his envelopes.
        items[1].0 = signed(&carol, "s1");
        let stolen = items[3].0.signature.clone();
        items[5].0.signature = stolen;
        let verdicts = verify_all(&items, &vec![false; items.len()]);
        let failed: Vec<usize> = (0..verdicts.len())
            .filter(|&i| verdicts[i].is_err())
            .collect();
        assert_eq!(failed, [1, 5]);
    }

    #[test]
    fn shape_is_checked_before_signatures() {
        let ed = Identity::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let mut env = signed(&ed, "u");
        env.federation = Some("f".into());
        assert_eq!(
            verify_all(&[(env, twin(&ed))], &[false]),
            [Err(EnvelopeError::DeprecatedField("federation"))]
        );
    }

    #[test]
    fn only_signed_requests_refused_for_time_or_address_wait_for_their_signature() {
        let ed = Identity::from_secret("//Alice", KeyType::Ed25519).unwrap();
        let env = signed(&ed, "u");
        let refusal = |reason| Refusal::new(codes::VALIDATION, reason, "x");
        for reason in [Reason::Expired, Reason::TooFar, Reason::Misaddressed] {
            assert!(
                answerable_after_verifying(&env, &refusal(reason)),
                "{reason:?}"
            );
        }
        assert!(!answerable_after_verifying(
            &env,
            &refusal(Reason::InvalidMessage)
        ));
        let mut unsigned = env.clone();
        unsigned.signature = None;
        assert!(!answerable_after_verifying(
            &unsigned,
            &refusal(Reason::Expired)
        ));
        let mut response = env;
        response.message = Some(Message::Response(Default::default()));
        assert!(!answerable_after_verifying(
            &response,
            &refusal(Reason::Expired)
        ));
    }
}
