//! Triggers: `rmb trigger NAME` publishes `{"kind":"trigger","name":NAME,"success":…}` on
//! the group topic; `rmb run --wait-trigger NAME -- cmd` follows the topic from its newest
//! message and runs the command when a member fires that trigger. A trigger says whether
//! the work that fired it succeeded (PMB's `success`), so a waiter does not deploy what
//! failed to build. Riding on the topic gives
//! triggers what topics have: any machine of the group, behind any relay, gets them,
//! and the owner refuses publishes from twins outside the group (its access list).

use std::time::Duration;

use serde_json::{Value, json};

use super::api::{Api, ApiError};
use super::follow::Follower;
use super::group::Group;

/// Longest trigger name (bytes).
pub const MAX_NAME: usize = 64;

/// Why a trigger could not be fired or waited for.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// A name outside `[A-Za-z0-9._-]{1,64}`.
    #[error("a trigger name is 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not {0:?}")]
    BadName(String),
    /// The peer's HTTP API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Nothing fired the trigger in time.
    #[error("trigger {0:?} was not fired within {1} s")]
    TimedOut(String, u64),
}

/// Checks a trigger name.
pub fn check_name(name: &str) -> Result<(), TriggerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TriggerError::BadName(name.chars().take(80).collect()))
    }
}

/// How the work behind a trigger ended: what the trigger reports to its waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it succeeded (a waiter runs its command only then, unless told otherwise).
    pub success: bool,
    /// The exit status of the command that fired it, when a command did.
    pub exit_code: Option<u32>,
}

impl Outcome {
    /// A trigger fired by hand (`rmb trigger`): nothing failed.
    pub const SUCCESS: Outcome = Outcome {
        success: true,
        exit_code: None,
    };
}

/// The event that fires `name` (for one twin when `to` is given); also sent by
/// `rmb notify --send-trigger` and `rmb run --send-trigger`.
pub fn event(name: &str, to: Option<u32>, host: &str, outcome: Outcome) -> Value {
    json!({
        "kind": "trigger",
        "name": name,
        "to": to,
        "host": host,
        "success": outcome.success,
        "exit_code": outcome.exit_code,
    })
}

/// Fires `name` on the group topic, reporting `outcome`; the message id.
pub async fn fire(
    api: &Api,
    group: &Group,
    name: &str,
    to: Option<u32>,
    outcome: Outcome,
) -> Result<u64, TriggerError> {
    check_name(name)?;
    Ok(api
        .publish(
            &group.topic(),
            &event(name, to, &super::hostname(), outcome),
        )
        .await?)
}

/// What `--send-trigger` did after the command ended.
#[derive(Debug)]
pub enum AfterCommand {
    /// This machine is in no personal group: nothing to fire on.
    NoGroup,
    /// The command failed and `--trigger-always` was not given: not fired.
    Skipped {
        /// The command's exit status.
        exit_code: u32,
    },
    /// Fired, as message `id` of `topic`, reporting `success`.
    Fired {
        /// Its message id.
        id: u64,
        /// The group topic.
        topic: String,
        /// What it reported.
        success: bool,
    },
    /// Firing failed (the group topic refused or could not be reached).
    Failed(TriggerError),
}

/// Fires `name` after a command ended with `outcome` (`--send-trigger`): only when it
/// succeeded unless `always`. A failure to fire does not change the command's exit
/// status, so it is a value, for the caller to report.
pub async fn fire_after(
    api: &Api,
    group: Option<&Group>,
    name: &str,
    outcome: Outcome,
    always: bool,
) -> AfterCommand {
    let Some(group) = group else {
        return AfterCommand::NoGroup;
    };
    if !outcome.success && !always {
        return AfterCommand::Skipped {
            exit_code: outcome.exit_code.unwrap_or(1),
        };
    }
    match fire(api, group, name, None, outcome).await {
        Ok(id) => AfterCommand::Fired {
            id,
            topic: group.topic(),
            success: outcome.success,
        },
        Err(e) => AfterCommand::Failed(e),
    }
}

/// Who fired a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The member that published it.
    pub by: u32,
    /// Its message id on the group topic.
    pub id: u64,
    /// What it reports (a trigger without `success` reports success).
    pub outcome: Outcome,
}

/// Whether the topic message `m` fires `name` for twin `me` of `group`.
pub fn fires(m: &Value, group: &Group, me: u32, name: &str) -> Option<Fired> {
    let by = m["publisher"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())?;
    if !group.admits(by) {
        return None;
    }
    let event: Value = serde_json::from_str(m["message"].as_str()?).ok()?;
    let for_me = event["to"].is_null() || event["to"].as_u64() == Some(u64::from(me));
    (event["kind"] == "trigger" && event["name"] == name && for_me).then(|| Fired {
        by,
        id: m["id"].as_u64().unwrap_or(0),
        outcome: Outcome {
            success: event["success"].as_bool().unwrap_or(true),
            exit_code: event["exit_code"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok()),
        },
    })
}

/// Waits until a member fires `name` after now (at most `limit`, if given). A broken
/// stream is reopened after the last id seen, with a growing pause.
pub async fn wait(
    api: &Api,
    group: &Group,
    me: u32,
    name: &str,
    limit: Option<Duration>,
) -> Result<Fired, TriggerError> {
    check_name(name)?;
    let waiting = async {
        let topic = group.topic();
        let last = api.newest(&topic).await?;
        let mut follower = Follower::new(api, &topic, last);
        loop {
            let m = follower.next().await.map_err(TriggerError::Api)?;
            if let Some(fired) = fires(&m, group, me, name) {
                return Ok(fired);
            }
        }
    };
    match limit {
        None => waiting.await,
        Some(limit) => tokio::time::timeout(limit, waiting)
            .await
            .map_err(|_| TriggerError::TimedOut(name.to_string(), limit.as_secs()))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn names_are_checked() {
        assert!(check_name("build.done-1_x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_members_fire_and_targeted_triggers_reach_their_twin() {
        let group = Group {
            owner: 7,
            members: BTreeSet::from([7, 9]),
        };
        let msg = |by: u32, to: Option<u32>| json!({"id": 3, "publisher": by, "message": event("deploy", to, "h", Outcome::SUCCESS).to_string()});
        assert_eq!(
            fires(&msg(9, None), &group, 7, "deploy"),
            Some(Fired {
                by: 9,
                id: 3,
                outcome: Outcome::SUCCESS
            })
        );
        assert_eq!(fires(&msg(8, None), &group, 7, "deploy"), None);
        assert_eq!(fires(&msg(9, Some(12)), &group, 7, "deploy"), None);
        assert!(fires(&msg(9, Some(7)), &group, 7, "deploy").is_some());
        assert_eq!(fires(&msg(9, None), &group, 7, "other"), None);
    }

    #[test]
    fn a_trigger_reports_failure_and_one_without_success_reports_success() {
        let group = Group {
            owner: 7,
            members: BTreeSet::from([7, 9]),
        };
        let failed = Outcome {
            success: false,
            exit_code: Some(2),
        };
        let m = json!({"id": 4, "publisher": 9, "message": event("built", None, "h", failed).to_string()});
        assert_eq!(fires(&m, &group, 7, "built").unwrap().outcome, failed);
        let old = json!({"kind": "trigger", "name": "built", "to": null, "host": "h"});
        let m = json!({"id": 5, "publisher": 9, "message": old.to_string()});
        assert_eq!(
            fires(&m, &group, 7, "built").unwrap().outcome,
            Outcome::SUCCESS
        );
    }
}
