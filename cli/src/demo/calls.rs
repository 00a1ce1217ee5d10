//! The calls `rmb demo` makes across its federation, and how each answer is checked.

use std::time::Duration;

use rand::RngCore;

use crate::bus::Bus;
use crate::commands::call::{self, CallSpec};

/// How long each demo call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What a correct answer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The request body, unchanged (the echo bot).
    Echo,
    /// A JSON string: the remote peer's version (`rmb.version`, answered by the peer).
    VersionString,
}

/// One demo call.
#[derive(Debug, Clone)]
pub struct DemoCall {
    /// What the report calls it.
    pub label: String,
    /// Index of the calling peer (0 or 1).
    pub from: usize,
    /// Destination twin.
    pub to: u32,
    /// Remote command.
    pub cmd: String,
    /// Body.
    pub body: Vec<u8>,
    /// Body schema.
    pub schema: Option<String>,
    /// How to check the answer.
    pub expect: Expect,
}

/// The demo's calls between twin `t1` (on relay A) and twin `t2` (on relay B).
pub fn plan(t1: u32, t2: u32) -> Vec<DemoCall> {
    let mut big = vec![0u8; 64 * 1024];
    rand::thread_rng().fill_bytes(&mut big);
    vec![
        DemoCall {
            label: format!("call twin {t1} → twin {t2}: echo \"hello\" (relay A → B)"),
            from: 0,
            to: t2,
            cmd: "echo".into(),
            body: format!("hello from twin {t1}").into_bytes(),
            schema: Some("text/plain".into()),
            expect: Expect::Echo,
        },
        DemoCall {
            label: format!("call twin {t2} → twin {t1}: echo JSON (relay B → A)"),
            from: 1,
            to: t1,
            cmd: "echo".into(),
            body: format!(r#"{{"from":{t2},"greeting":"hi"}}"#).into_bytes(),
            schema: Some("application/json".into()),
            expect: Expect::Echo,
        },
        DemoCall {
            label: format!("call twin {t1} → twin {t2}: echo 64 KiB of random bytes"),
            from: 0,
            to: t2,
            cmd: "echo".into(),
            body: big,
            schema: None,
            expect: Expect::Echo,
        },
        DemoCall {
            label: format!("call twin {t1} → twin {t2}: rmb.version (answered by peer 2)"),
            from: 0,
            to: t2,
            cmd: "rmb.version".into(),
            body: Vec::new(),
            schema: None,
            expect: Expect::VersionString,
        },
    ]
}

/// Makes `call` through `bus`; the detail line on success, the reason on failure.
pub async fn run(bus: &Bus, call: &DemoCall) -> anyhow::Result<String> {
    let spec = CallSpec {
        dst: vec![call.to],
        cmd: call.cmd.clone(),
        body: call.body.clone(),
        schema: call.schema.clone(),
        tag: None,
        timeout: CALL_TIMEOUT,
    };
    let outcome = call::call(bus, &spec).await?;
    let Some(reply) = outcome.replies.first() else {
        anyhow::bail!("no response within {} s", CALL_TIMEOUT.as_secs());
    };
    if let Some(e) = &reply.error {
        anyhow::bail!(
            "{} answered with error {}: {}",
            call::describe_src(&reply.src),
            e.code,
            e.message
        );
    }
    check(call, &reply.body)?;
    let shown = if reply.body.len() > 80 {
        format!("{} bytes back, identical", reply.body.len())
    } else {
        format!("reply: {}", String::from_utf8_lossy(&reply.body))
    };
    Ok(format!("{shown} (from {})", call::describe_src(&reply.src)))
}

/// Checks an answer against what the call expects.
pub fn check(call: &DemoCall, body: &[u8]) -> anyhow::Result<()> {
    match call.expect {
        Expect::Echo if body == call.body.as_slice() => Ok(()),
        Expect::Echo => anyhow::bail!(
            "the echo differs from what was sent ({} bytes sent, {} back)",
            call.body.len(),
            body.len()
        ),
        Expect::VersionString => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::String(_)) => Ok(()),
            _ => anyhow::bail!(
                "expected a JSON string, got {:?}",
                String::from_utf8_lossy(body)
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_strictly() {
        let calls = plan(1, 2);
        assert!(check(&calls[0], b"hello from twin 1").is_ok());
        assert!(check(&calls[0], b"hello from twin 2").is_err());
        assert!(check(&calls[3], br#""0.1.0""#).is_ok());
        assert!(check(&calls[3], b"0.1.0").is_err());
    }
}
