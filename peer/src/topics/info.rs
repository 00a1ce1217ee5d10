//! What the topics layer shows of itself: an own topic ([`TopicInfo`]), a subscription
//! ([`SubscriptionInfo`]) and the whole listing of `GET /topics` ([`Listing`]).

use serde::{Deserialize, Serialize};

use super::config::TopicConfig;
use super::counters::CountersSnapshot;

/// One own topic, as listed and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// `<owner>/<name>`.
    pub topic: String,
    /// Access lists and retention.
    pub config: TopicConfig,
    /// Oldest id kept (`last_id + 1` when none).
    pub first_id: u64,
    /// Newest id given (0: none yet).
    pub last_id: u64,
    /// Twins subscribed.
    pub subscribers: Vec<u32>,
}

/// One subscription, as listed and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    /// `<owner>/<name>`.
    pub topic: String,
    /// Last id handed to apps.
    pub last_id: u64,
    /// Also delivered to this Redis list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_list: Option<String>,
}

/// `GET /topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// This peer's twin (the owner of its topics).
    pub twin: u32,
    /// Own topics.
    pub topics: Vec<TopicInfo>,
    /// Subscriptions to other twins' topics.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// The counters.
    pub counters: CountersSnapshot,
}
