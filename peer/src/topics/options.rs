//! How the topics layer is started ([`TopicsOptions`]) and the defaults of the
//! rmb-peer flags that set it; below every topic module, so each may read them.

use std::sync::Arc;
use std::time::Duration;

use rmb_identity::registry::Registry;

use super::leases::LeaseSettings;

/// Default of `--topic-max-subscribers`: most subscribers of one topic.
pub const MAX_SUBSCRIBERS: usize = 10_000;

/// Default wait, in milliseconds, before handed-over messages are recorded
/// (`--topic-record-delay`). Each subscription's records cost one script call per wait,
/// and every subscription that got the same fan-out waits the same time, so their calls
/// land together: at 50 ms they were about a tenth of topic-bench's CPU at 100
/// subscribers (two runs sharing the machine; about half that share in a run alone).
/// After a crash, at most this much is pulled again.
pub const DEFAULT_RECORD_DELAY_MS: u64 = 250;

/// How to start [`Topics`](super::Topics).
#[derive(Clone)]
pub struct TopicsOptions {
    /// The peer's Redis.
    pub redis_url: String,
    /// Prefix of every key (`rmb.`).
    pub prefix: String,
    /// How often subscriptions are renewed with their owners (which also finds
    /// messages whose push was lost).
    pub renew: Duration,
    /// How long a request to another peer (publish, subscribe, pull) is waited for.
    /// Longer than the core's 30 s stall bound: a request whose copy died with a
    /// restarting owner is sent again at the latest then, and still answered in time.
    pub timeout: Duration,
    /// How long after handing messages over (to a subscription without a Redis list)
    /// their records are written, many at a time ([`super::unrecorded`]): longer costs less
    /// Redis work per message, and after a crash that much is pulled again.
    pub record_delay: Duration,
    /// Most subscribers of one own topic (`--topic-max-subscribers`).
    pub max_subscribers: usize,
    /// Leases, silent subscribers and the pace of new subscriptions of own topics
    /// (`--topic-lease`, `--topic-unanswered*`, `--topic-new-*`).
    pub leases: LeaseSettings,
    /// Where the relays of a twin that subscribes are looked up, to count new
    /// subscriptions per relay (`None`: all count as one unknown relay).
    pub registry: Option<Arc<dyn Registry>>,
    /// A local publish to an own topic that does not exist creates it with the default
    /// settings (`--topic-auto-create`), so an owner's scripts need no set-up step.
    /// Publishes from other twins never create a topic.
    pub auto_create: bool,
}

impl std::fmt::Debug for TopicsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicsOptions")
            .field("redis_url", &self.redis_url)
            .field("prefix", &self.prefix)
            .field("renew", &self.renew)
            .field("timeout", &self.timeout)
            .field("record_delay", &self.record_delay)
            .field("max_subscribers", &self.max_subscribers)
            .field("leases", &self.leases)
            .field("registry", &self.registry.as_ref().map(|r| r.describe()))
            .field("auto_create", &self.auto_create)
            .finish()
    }
}

impl TopicsOptions {
    /// The defaults for `redis_url`: prefix `rmb.`, renewal every 30 s, 60 s timeout,
    /// records written [`DEFAULT_RECORD_DELAY_MS`] after a hand-over,
    /// [`MAX_SUBSCRIBERS`] subscribers per topic, the [`super::leases`] defaults, no
    /// registry, no topics created by publishing.
    pub fn new(redis_url: &str) -> Self {
        TopicsOptions {
            redis_url: redis_url.to_string(),
            prefix: "rmb.".into(),
            renew: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            record_delay: Duration::from_millis(DEFAULT_RECORD_DELAY_MS),
            max_subscribers: MAX_SUBSCRIBERS,
            leases: LeaseSettings::default(),
            registry: None,
            auto_create: false,
        }
    }
}
