//! Sending a notification with a level (`rmb notify -m`, `rmb watch`): one round of
//! `pmb.notify` requests through the local peer, and the escalation to the group's other
//! machines when no target acknowledged (see [`rmb_personal::notify`] for the message, the
//! levels and what a listener does).

use std::process::ExitCode;
use std::time::Duration;

use rmb_personal::cmds;
use rmb_personal::notify::{Ack, Message, Shown};

use crate::bus::{Bus, twin_of};
use crate::commands::call::{self, CallSpec};

/// How a notification went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Twins whose listener acknowledged it.
    pub acknowledged: Vec<u32>,
    /// Those of them whose desktop showed it (the others printed it only).
    pub on_desktop: Vec<u32>,
    /// Twins whose listener refused it, with its reason.
    pub refused: Vec<(u32, String)>,
    /// Twins that gave no answer in time (no listener running, or it is offline).
    pub unanswered: Vec<u32>,
    /// Twins it was escalated to, with those of them that acknowledged.
    pub escalated_to: Vec<u32>,
}

async fn deliver(
    bus: &Bus,
    targets: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<Answers> {
    let spec = CallSpec {
        dst: targets.to_vec(),
        cmd: cmds::NOTIFY.to_string(),
        body: serde_json::to_vec(message)?,
        schema: Some("application/json".into()),
        tag: None,
        timeout: wait,
    };
    let outcome = call::call(bus, &spec).await?;
    let mut acked = Vec::new();
    let mut on_desktop = Vec::new();
    let mut refused = Vec::new();
    for reply in &outcome.replies {
        match (twin_of(&reply.src), &reply.error) {
            (Some(t), None) => {
                acked.push(t);
                let ack = serde_json::from_slice::<Ack>(&reply.body);
                if ack.is_ok_and(|a| a.shown == Shown::Desktop) {
                    on_desktop.push(t);
                }
            }
            (Some(t), Some(e)) => refused.push((t, e.message.clone())),
            (None, _) => {}
        }
    }
    let missed = targets
        .iter()
        .copied()
        .filter(|t| !acked.contains(t) && !refused.iter().any(|(r, _)| r == t))
        .collect();
    Ok(Answers {
        acked,
        on_desktop,
        refused,
        missed,
    })
}

/// What one round of delivery got back.
struct Answers {
    acked: Vec<u32>,
    on_desktop: Vec<u32>,
    refused: Vec<(u32, String)>,
    missed: Vec<u32>,
}

/// Sends `message` to `targets`; when none acknowledges within `wait` and the level
/// escalates, sends it, marked escalated, to `fallback` (the group's other machines).
pub async fn send(
    bus: &Bus,
    targets: &[u32],
    fallback: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<Delivery> {
    let first = deliver(bus, targets, message, wait).await?;
    let mut delivery = Delivery {
        acknowledged: first.acked,
        on_desktop: first.on_desktop,
        refused: first.refused,
        unanswered: first.missed,
        escalated_to: Vec::new(),
    };
    let rest: Vec<u32> = fallback
        .iter()
        .copied()
        .filter(|t| !targets.contains(t))
        .collect();
    if delivery.acknowledged.is_empty() && message.level.escalates() && !rest.is_empty() {
        let escalated = Message {
            escalated: true,
            ..message.clone()
        };
        let again = deliver(bus, &rest, &escalated, wait).await?;
        delivery.escalated_to = rest;
        delivery.acknowledged.extend(again.acked);
        delivery.on_desktop.extend(again.on_desktop);
        delivery.refused.extend(again.refused);
        delivery.unanswered.extend(again.missed);
    }
    Ok(delivery)
}

/// Sends `message` (see [`send`]) and says on stderr who acknowledged, who refused and
/// who did not answer; exit code 0 when someone acknowledged, else 3.
pub async fn send_and_report(
    bus: &Bus,
    targets: &[u32],
    others: &[u32],
    message: &Message,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let delivery = send(bus, targets, others, message, wait).await?;
    for t in &delivery.acknowledged {
        let how = if delivery.on_desktop.contains(t) {
            "shown on its desktop"
        } else {
            "printed in its terminal"
        };
        eprintln!("rmb: twin {t} acknowledged ({how})");
    }
    if !delivery.escalated_to.is_empty() {
        eprintln!(
            "rmb: not acknowledged within {} s: escalated to twins {:?}",
            wait.as_secs(),
            delivery.escalated_to
        );
    }
    for (t, why) in &delivery.refused {
        eprintln!("rmb: twin {t} refused the notification: {why}");
    }
    for t in &delivery.unanswered {
        eprintln!(
            "rmb: twin {t} did not answer within {} s (is `rmb listen` running there?)",
            wait.as_secs()
        );
    }
    Ok(if delivery.acknowledged.is_empty() {
        ExitCode::from(crate::commands::call::EXIT_TIMEOUT)
    } else {
        ExitCode::SUCCESS
    })
}
