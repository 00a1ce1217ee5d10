//! A topic's settings: who may publish and subscribe, and how long messages are kept.
//! Set by the owner (HTTP `PUT /topics/<owner>/<name>`), stored in its Redis.

use serde::{Deserialize, Serialize};

use super::wire::{Access, MAX_ACCESS_LIST};

/// Messages kept per topic unless configured.
pub const DEFAULT_RETENTION_COUNT: u64 = 1000;
/// Seconds a message is kept unless configured (a day).
pub const DEFAULT_RETENTION_SECS: u64 = 24 * 3600;
/// Largest retention by count.
pub const MAX_RETENTION_COUNT: u64 = 1_000_000;
/// Longest retention by age (30 days).
pub const MAX_RETENTION_SECS: u64 = 30 * 24 * 3600;

/// Settings of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Who may publish: `"owner"` (default), `"anyone"` or a list of twin ids.
    #[serde(default)]
    pub publish: Access,
    /// Who may subscribe and pull: `"anyone"` (default), `"owner"` or a list.
    #[serde(default = "anyone")]
    pub subscribe: Access,
    /// Newest messages kept (older ones are dropped first).
    #[serde(default = "default_count")]
    pub retention_count: u64,
    /// Seconds a message is kept.
    #[serde(default = "default_secs")]
    pub retention_secs: u64,
}

fn anyone() -> Access {
    Access::Anyone
}

fn default_count() -> u64 {
    DEFAULT_RETENTION_COUNT
}

fn default_secs() -> u64 {
    DEFAULT_RETENTION_SECS
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            publish: Access::Owner,
            subscribe: Access::Anyone,
            retention_count: DEFAULT_RETENTION_COUNT,
            retention_secs: DEFAULT_RETENTION_SECS,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("retention_count is 1 to {MAX_RETENTION_COUNT}")]
    Count,
    #[error("retention_secs is 1 to {MAX_RETENTION_SECS}")]
    Secs,
    #[error("an access list names at most {MAX_ACCESS_LIST} twins")]
    AccessList,
}

impl TopicConfig {
    /// Checks the bounds.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_RETENTION_COUNT).contains(&self.retention_count) {
            return Err(ConfigError::Count);
        }
        if !(1..=MAX_RETENTION_SECS).contains(&self.retention_secs) {
            return Err(ConfigError::Secs);
        }
        for access in [&self.publish, &self.subscribe] {
            if let Access::Twins(t) = access
                && t.len() > MAX_ACCESS_LIST
            {
                return Err(ConfigError::AccessList);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let c: TopicConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, TopicConfig::default());
        assert!(c.check().is_ok());
        let c: TopicConfig = serde_json::from_str(r#"{"retention_count":0}"#).unwrap();
        assert_eq!(c.check(), Err(ConfigError::Count));
        assert!(serde_json::from_str::<TopicConfig>(r#"{"retention":1}"#).is_err());
    }
}
