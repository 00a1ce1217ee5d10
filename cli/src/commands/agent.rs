//! `rmb agent init|invite|join|list|remove`: the personal group of one person's machines
//! (see [`rmb_personal::group`]). The owner's `rmb listen` answers joins.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::bus::Bus;
use crate::commands::call::{self, CallSpec};
use rmb_personal::cmds;
use rmb_personal::group::{self, Group};

use crate::personal::PeerArgs;

/// `rmb agent ...`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// What `rmb agent` does.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Create a personal group owned by this machine (run once, on the first machine).
    Init {
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Print a one-time invite code for a new machine (owner only).
    Invite {
        /// Seconds the code stays valid (at most a day).
        #[arg(long, default_value_t = 600, value_name = "SECS")]
        expires: u64,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Join a group with a code from `rmb agent invite` (the owner's `rmb listen` must run).
    Join {
        /// The code, e.g. 7-ABCDE-FGHJK.
        code: String,
        /// Seconds to wait for the owner's answer.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        timeout: u64,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// List the group's machines.
    List {
        /// Print the group as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        peer: PeerArgs,
    },
    /// Remove a machine from the group (owner only).
    Remove {
        /// Its twin id.
        twin: u32,
        #[command(flatten)]
        peer: PeerArgs,
    },
}

fn members(group: &Group) -> String {
    group
        .members
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `rmb agent ...`.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let peer = match &args.command {
        AgentCommand::Init { peer }
        | AgentCommand::Invite { peer, .. }
        | AgentCommand::Join { peer, .. }
        | AgentCommand::List { peer, .. }
        | AgentCommand::Remove { peer, .. } => peer.clone(),
    };
    let bus = Bus::connect(&peer.redis.redis).await?;
    let api = peer.api();
    let mut conn = bus.conn();
    match args.command {
        AgentCommand::Init { .. } => {
            let group = group::init(&api, &mut conn).await?;
            println!(
                "personal group created: topic {}, owner twin {}; add machines with \
                 `rmb agent invite` here and `rmb agent join CODE` there (keep `rmb listen` \
                 running here)",
                group.topic(),
                group.owner
            );
        }
        AgentCommand::Invite { expires, .. } => {
            let code = group::invite(&api, &mut conn, Duration::from_secs(expires)).await?;
            println!("{code}");
            eprintln!(
                "one-time code, valid for {} s: run `rmb agent join {code}` on the new machine",
                expires.clamp(1, group::MAX_INVITE_TTL.as_secs())
            );
        }
        AgentCommand::Join { code, timeout, .. } => {
            if let Some(g) = group::load(&mut conn).await? {
                bail!("this machine is already in the group of twin {}", g.owner);
            }
            let (owner, _) = group::parse_code(&code)?;
            let spec = CallSpec {
                dst: vec![owner],
                cmd: cmds::JOIN.to_string(),
                body: serde_json::to_vec(&serde_json::json!({ "code": code.trim() }))?,
                schema: Some("application/json".into()),
                tag: None,
                timeout: Duration::from_secs(timeout),
            };
            let outcome = call::call(&bus, &spec).await?;
            let Some(reply) = outcome.replies.first() else {
                bail!(
                    "twin {owner} did not answer within {timeout} s (is `rmb listen` running there?)"
                );
            };
            if let Some(e) = &reply.error {
                bail!("twin {owner} refused the join: {} ({})", e.message, e.code);
            }
            let group: Group =
                serde_json::from_slice(&reply.body).context("the owner's answer is not a group")?;
            if group.owner != owner {
                bail!(
                    "twin {owner} answered with the group of twin {}",
                    group.owner
                );
            }
            group::save(&mut conn, &group).await?;
            println!(
                "joined the personal group of twin {owner}; members: {}",
                members(&group)
            );
        }
        AgentCommand::List { json, .. } => {
            let group = group::require(&mut conn).await?;
            if json {
                println!("{}", serde_json::to_string(&group)?);
            } else {
                println!("group topic {} (owner twin {})", group.topic(), group.owner);
                for t in &group.members {
                    println!(
                        "  twin {t}{}",
                        if *t == group.owner { " (owner)" } else { "" }
                    );
                }
            }
        }
        AgentCommand::Remove { twin, .. } => {
            let group = group::remove(&api, &mut conn, twin).await?;
            println!("removed twin {twin}; members: {}", members(&group));
        }
    }
    Ok(ExitCode::SUCCESS)
}
