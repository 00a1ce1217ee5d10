//! The `rmb.topic.*` messages: JSON bodies of ordinary request and response envelopes,
//! so rmb-rs relays carry topic traffic unchanged (documented in docs/protocol.md).
//!
//! The message shape ([`MessageJson`]) is also what local apps get from the HTTP API:
//! one document for the wire and the apps, close to what ntfy and msgbus users know
//! (`id`, `topic`, `time`, `message`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// Publisher → owner: store and fan out a message; answered with [`Published`].
pub const PUBLISH: &str = "rmb.topic.publish";
/// Subscriber → owner: start (or renew) a subscription; answered with [`Subscribed`].
pub const SUBSCRIBE: &str = "rmb.topic.subscribe";
/// Subscriber → owner: stop a subscription; answered with `{}`.
pub const UNSUBSCRIBE: &str = "rmb.topic.unsubscribe";
/// Subscriber → owner: messages after an id; answered with [`Pulled`].
pub const PULL: &str = "rmb.topic.pull";
/// Owner → subscriber: new messages of one topic ([`Batch`]); answered with `{}`.
pub const MESSAGE: &str = "rmb.topic.message";
/// Subscriber → owner: every message of a topic up to an id is handed to apps (answers
/// [`MESSAGE`]s sent with [`AckMode::Cumulative`]; never answered itself).
pub const ACK: &str = "rmb.topic.ack";
/// Every topic command starts with this.
pub const PREFIX: &str = "rmb.topic.";

/// Error codes of topic error replies (rmb-rs leaves codes to applications).
pub mod codes {
    /// The request body or topic name is malformed.
    pub const BAD_REQUEST: u32 = 400;
    /// The access list of the topic does not name the sender.
    pub const REFUSED: u32 = 403;
    /// No such topic on this owner (or not subscribed, for messages).
    pub const NOT_FOUND: u32 = 404;
    /// The message is larger than the owner accepts.
    pub const TOO_LARGE: u32 = 413;
    /// Too many new subscriptions from the sender's relay, or in all, this while: try
    /// again later.
    pub const TOO_MANY: u32 = 429;
    /// The owner cannot take it now (its Redis is down, its queue is full): try again.
    pub const UNAVAILABLE: u32 = 503;
}

/// Longest topic name (the part after `owner/`).
pub const MAX_NAME_LEN: usize = 64;
/// Largest message payload accepted, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest title, in bytes.
pub const MAX_TITLE: usize = 256;
/// Most tags on a message, and longest tag.
pub const MAX_TAGS: usize = 16;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// A topic: `<owner twin>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName {
    /// The twin hosting it.
    pub owner: u32,
    /// Its name (letters, digits, `-`, `_`, `.`).
    pub name: String,
}

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a topic is written <owner twin>/<name>, e.g. 7/alerts")]
    Shape,
    #[error("the owner of a topic is a twin id (a positive number)")]
    Owner,
    #[error("a topic name is 1 to {MAX_NAME_LEN} characters of letters, digits, '-', '_' and '.'")]
    Name,
}

impl TopicName {
    /// A topic of `owner`, with `name` checked.
    pub fn new(owner: u32, name: &str) -> Result<Self, NameError> {
        if owner == 0 {
            return Err(NameError::Owner);
        }
        check_name(name)?;
        Ok(TopicName {
            owner,
            name: name.to_string(),
        })
    }
}

/// Checks the part after `owner/`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(NameError::Name) }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

impl FromStr for TopicName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let (owner, name) = s.split_once('/').ok_or(NameError::Shape)?;
        let owner: u32 = owner.parse().map_err(|_| NameError::Owner)?;
        TopicName::new(owner, name)
    }
}

/// Who may publish or subscribe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Access {
    /// The owner twin only.
    #[default]
    Owner,
    /// Every twin.
    Anyone,
    /// These twins (and the owner).
    Twins(BTreeSet<u32>),
}

impl Access {
    /// True when `twin` may act on a topic owned by `owner`.
    pub fn allows(&self, twin: u32, owner: u32) -> bool {
        twin == owner
            || match self {
                Access::Owner => false,
                Access::Anyone => true,
                Access::Twins(twins) => twins.contains(&twin),
            }
    }
}

impl Serialize for Access {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Access::Owner => s.serialize_str("owner"),
            Access::Anyone => s.serialize_str("anyone"),
            Access::Twins(twins) => twins.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Access {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Twins(BTreeSet<u32>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "owner" => Ok(Access::Owner),
            Raw::Word(w) if w == "anyone" => Ok(Access::Anyone),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "access is \"owner\", \"anyone\" or a list of twin ids, not {w:?}"
            ))),
            Raw::Twins(t) => Ok(Access::Twins(t)),
        }
    }
}

/// Most twins in an access list.
pub const MAX_ACCESS_LIST: usize = 10_000;

/// A message as stored, sent to subscribers and shown to apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageJson {
    /// Sequence id within the topic (from 1, never reused).
    pub id: u64,
    /// Always `"message"` (gap reports say `"gap"`, see [`GapJson`]).
    pub event: String,
    /// `<owner>/<name>`.
    pub topic: String,
    /// Unix seconds the owner stored it.
    pub time: u64,
    /// The twin that published it.
    pub publisher: u32,
    /// The payload: text, or base64 when `encoding` says so.
    pub message: String,
    /// `"base64"` when the payload is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A title apps may show.
    pub title: Option<String>,
    /// 1 (min) to 5 (max), as ntfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Free-form tags.
    pub tags: Vec<String>,
}

impl MessageJson {
    /// The payload bytes (`message` decoded when base64).
    pub fn payload(&self) -> Result<Vec<u8>, DraftError> {
        match self.encoding.as_deref() {
            None => Ok(self.message.as_bytes().to_vec()),
            Some("base64") => B64.decode(&self.message).map_err(|_| DraftError::Base64),
            Some(other) => Err(DraftError::Encoding(other.to_string())),
        }
    }

    /// Rough memory size, for byte bounds.
    pub fn size(&self) -> usize {
        128 + self.topic.len()
            + self.message.len()
            + self.title.as_ref().map_or(0, String::len)
            + self.tags.iter().map(String::len).sum::<usize>()
    }
}

/// A hole in what a subscriber received: messages `from..=to` were dropped by the
/// owner's retention before this subscriber could get them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapJson {
    /// Always `"gap"`.
    pub event: String,
    /// `<owner>/<name>`.
    pub topic: String,
    /// First lost id.
    pub from: u64,
    /// Last lost id.
    pub to: u64,
    /// Unix seconds the gap was noticed.
    pub time: u64,
}

/// A message to publish, before the owner gives it an id.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Draft {
    /// Text, or base64 with `encoding: "base64"`.
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `"base64"` when `message` is base64.
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A title apps may show.
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// 1 (min) to 5 (max).
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Free-form tags.
    pub tags: Vec<String>,
}

/// Why a message to publish was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error("the message is {0} bytes; the limit is {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("the message is not valid base64")]
    Base64,
    #[error("unknown encoding {0:?} (only \"base64\")")]
    Encoding(String),
    #[error("the title is longer than {MAX_TITLE} bytes")]
    Title,
    #[error("priority is 1 (min) to 5 (max)")]
    Priority,
    #[error("at most {MAX_TAGS} tags of at most {MAX_TAG_LEN} bytes each")]
    Tags,
}

impl Draft {
    /// A draft carrying `payload` (as text when it is UTF-8, else base64).
    pub fn from_bytes(payload: Vec<u8>) -> Self {
        match String::from_utf8(payload) {
            Ok(text) => Draft {
                message: text,
                ..Draft::default()
            },
            Err(e) => Draft {
                message: B64.encode(e.as_bytes()),
                encoding: Some("base64".into()),
                ..Draft::default()
            },
        }
    }

    /// Checks sizes and fields; returns the payload size.
    pub fn check(&self) -> Result<usize, DraftError> {
        let size = match self.encoding.as_deref() {
            None => self.message.len(),
            Some("base64") => B64
                .decode(&self.message)
                .map_err(|_| DraftError::Base64)?
                .len(),
            Some(other) => return Err(DraftError::Encoding(other.to_string())),
        };
        if size > MAX_PAYLOAD {
            return Err(DraftError::TooLarge(size));
        }
        if self.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE) {
            return Err(DraftError::Title);
        }
        if self.priority.is_some_and(|p| !(1..=5).contains(&p)) {
            return Err(DraftError::Priority);
        }
        if self.tags.len() > MAX_TAGS || self.tags.iter().any(|t| t.len() > MAX_TAG_LEN) {
            return Err(DraftError::Tags);
        }
        Ok(size)
    }

    /// The stored message, once the owner gave it `id` and `time`.
    pub fn into_message(
        self,
        topic: &TopicName,
        id: u64,
        time: u64,
        publisher: u32,
    ) -> MessageJson {
        MessageJson {
            id,
            event: "message".into(),
            topic: topic.to_string(),
            time,
            publisher,
            message: self.message,
            encoding: self.encoding,
            title: self.title,
            priority: self.priority,
            tags: self.tags,
        }
    }
}

/// Body of [`PUBLISH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The name (after `owner/`; the owner is the addressee).
    pub topic: String,
    #[serde(flatten)]
    /// The message.
    pub draft: Draft,
}

/// Answer to [`PUBLISH`] (and to a local publish).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The id the owner gave it.
    pub id: u64,
    /// `<owner>/<name>`.
    pub topic: String,
    /// Unix seconds the owner stored it.
    pub time: u64,
}

/// How a subscriber acknowledges pushes ([`MESSAGE`]).
///
/// `Each`: every push is a request answered with a response, which the owner's core
/// resends until it comes (as the first version of this protocol did). `Cumulative`: a
/// push is not answered; the subscriber sends one [`ACK`] per topic now and then with
/// the last id it handed to its apps, and the owner sends again what stays
/// unacknowledged ([`progress`](super::progress)). Half the envelopes of a fan-out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Answer every push (what a subscriber that does not say otherwise gets).
    #[default]
    Each,
    /// Acknowledge with [`ACK`] instead.
    Cumulative,
}

impl AckMode {
    /// For `skip_serializing_if`: `Each` is what an absent field means.
    pub fn is_each(&self) -> bool {
        *self == AckMode::Each
    }
}

/// Body of [`SUBSCRIBE`] and [`UNSUBSCRIBE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeRequest {
    /// The topic name (after `owner/`).
    pub topic: String,
    /// How this subscriber acknowledges pushes (absent: [`AckMode::Each`]).
    #[serde(default, skip_serializing_if = "AckMode::is_each")]
    pub acks: AckMode,
}

/// Body of [`ACK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    /// The topic name (after `owner/`; the owner is the addressee).
    pub topic: String,
    /// Every message up to this id is handed to the subscriber's apps (or reported lost).
    pub last: u64,
}

/// A subscriber's answer to a push sent with [`AckMode::Each`]: `{}` from the first
/// version; `{"acks": "cumulative"}` tells the owner it may stop waiting for answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    /// How the subscriber can acknowledge.
    #[serde(default, skip_serializing_if = "AckMode::is_each")]
    pub acks: AckMode,
}

/// Answer to [`SUBSCRIBE`]: where the topic stands, so the subscriber pulls what it
/// misses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// Oldest id still kept (`last_id + 1` when none is).
    pub first_id: u64,
    /// Newest id given (0 when none yet).
    pub last_id: u64,
    /// Seconds the subscription lasts unless renewed (absent: an owner that gives no
    /// lease); subscribers renew at least three times per lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// Body of [`PULL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The topic name (after `owner/`).
    pub topic: String,
    /// Messages with a larger id than this.
    pub since: u64,
    /// At most this many (the owner may send fewer, to stay within an envelope).
    pub limit: u32,
}

/// Answer to [`PULL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulled {
    /// Oldest id kept (`last_id + 1` when none).
    pub first_id: u64,
    /// Newest id given (0: none yet).
    pub last_id: u64,
    /// In id order; contiguous from `max(since + 1, first_id)`.
    pub messages: Vec<MessageJson>,
}

/// Body of [`MESSAGE`]: messages of one topic, in id order. The owner batches what
/// queued up while it was sending, so a burst costs one envelope (one signature, one
/// answer) per subscriber per batch instead of per message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The messages, in id order.
    pub messages: Vec<MessageJson>,
    /// How to acknowledge this push (absent: answer it, [`AckMode::Each`]).
    #[serde(default, skip_serializing_if = "AckMode::is_each")]
    pub acks: AckMode,
    /// The newest id the owner has given, when it is beyond this batch (a resend of
    /// unacknowledged messages): the subscriber pulls the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
}

/// Most messages in one [`Batch`].
pub const MAX_BATCH: usize = 64;
/// Most message bytes in one [`Batch`].
pub const BATCH_BYTES: usize = 256 * 1024;

/// Largest pull asked for at once.
pub const MAX_PULL: u32 = 1000;
/// Bytes of messages in one pull answer (well within an envelope).
pub const PULL_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_access_parse() {
        let t: TopicName = "7/alerts.eu-1".parse().unwrap();
        assert_eq!((t.owner, t.name.as_str()), (7, "alerts.eu-1"));
        assert_eq!(t.to_string(), "7/alerts.eu-1");
        assert_eq!("alerts".parse::<TopicName>(), Err(NameError::Shape));
        assert_eq!("0/a".parse::<TopicName>(), Err(NameError::Owner));
        assert_eq!("x/a".parse::<TopicName>(), Err(NameError::Owner));
        assert_eq!("7/".parse::<TopicName>(), Err(NameError::Name));
        assert_eq!("7/a/b".parse::<TopicName>(), Err(NameError::Name));
        assert_eq!("7/a b".parse::<TopicName>(), Err(NameError::Name));

        let a: Access = serde_json::from_str("[3, 4]").unwrap();
        assert!(a.allows(3, 7) && a.allows(7, 7) && !a.allows(5, 7));
        let a: Access = serde_json::from_str("\"anyone\"").unwrap();
        assert!(a.allows(5, 7));
        assert!(!Access::Owner.allows(5, 7));
        assert!(serde_json::from_str::<Access>("\"everyone\"").is_err());
        assert_eq!(serde_json::to_string(&Access::Owner).unwrap(), "\"owner\"");
    }

    #[test]
    fn drafts_are_checked() {
        assert_eq!(Draft::from_bytes(b"hi".to_vec()).check(), Ok(2));
        let bin = Draft::from_bytes(vec![0xff, 0, 1]);
        assert_eq!(bin.encoding.as_deref(), Some("base64"));
        assert_eq!(bin.check(), Ok(3));
        let big = Draft::from_bytes(vec![b'a'; MAX_PAYLOAD + 1]);
        assert_eq!(big.check(), Err(DraftError::TooLarge(MAX_PAYLOAD + 1)));
        let bad = Draft {
            priority: Some(9),
            ..Draft::default()
        };
        assert_eq!(bad.check(), Err(DraftError::Priority));
        let m = bin.into_message(&"7/a".parse().unwrap(), 1, 2, 3);
        assert_eq!(m.payload().unwrap(), vec![0xff, 0, 1]);
    }
}
