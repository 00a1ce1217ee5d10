//! `rmb twin register|show`: create or update a twin on a registry (embedded, or tfchain
//! with `-s`), or look one up.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use rmb_identity::registry::{RegistryKind, Twin, TwinUpdate};
use rmb_identity::{AccountId, E2eScheme};
use rmb_peer::core::choose_scheme;

use crate::args::{RegistryArgs, SecretArgs, parse_e2e};

/// Register or inspect twins.
#[derive(Args, Debug)]
pub struct TwinArgs {
    #[command(subcommand)]
    pub action: TwinAction,
}

/// `rmb twin` subcommands.
#[derive(Subcommand, Debug)]
pub enum TwinAction {
    /// Create the secret's twin (or update it): its relays and encryption key.
    Register(TwinRegisterArgs),
    /// Show a twin by id, by account, or the secret's own.
    Show(TwinShowArgs),
}

/// Create or update the twin of a secret's account.
#[derive(Args, Debug)]
pub struct TwinRegisterArgs {
    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Relay the twin is reached through: a domain or host:port (repeatable; on tfchain
    /// only the host is published, as the chain refuses ports). Default: keep the relays
    /// the twin already has. (rmb-peer publishes its --relay list itself.)
    #[arg(long = "relay", value_name = "DOMAIN")]
    pub relays: Vec<String>,

    /// Encryption key to publish: x25519 (rmb) or secp256k1 (needed by rmb-rs peers and
    /// ThreeFold's SDKs). Default as rmb-peer chooses: secp256k1 on tfchain, x25519 on an
    /// embedded registry, and a published secp256k1 key is kept.
    #[arg(long, value_parser = parse_e2e, value_name = "SCHEME")]
    pub e2e: Option<E2eScheme>,

    /// Print the twin as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Look up a twin.
#[derive(Args, Debug)]
pub struct TwinShowArgs {
    /// Twin id to show. Without it: the twin of --account, or of the secret.
    #[arg(value_name = "ID")]
    pub id: Option<u32>,

    /// Show the twin owned by this account (SS58 or 0x hex).
    #[arg(long, value_name = "ACCOUNT", conflicts_with = "id")]
    pub account: Option<AccountId>,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Print the twin as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Turns `wss://relay.example:443/`, `ws://127.0.0.1:8080` or `relay.example` into the
/// name the embedded registry stores: the host, plus `:port` unless it is the scheme's
/// default (the same rule rmb-peer uses for its `--relay` URLs). tfchain takes the host
/// only: see [`name_for`].
pub fn relay_domain(text: &str) -> String {
    let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
    let host_port = rest.split('/').next().unwrap_or("");
    let default_port = match scheme {
        "wss" | "https" => Some(":443"),
        "ws" | "http" => Some(":80"),
        _ => None,
    };
    match default_port {
        Some(port) => host_port
            .strip_suffix(port)
            .unwrap_or(host_port)
            .to_string(),
        None => host_port.to_string(),
    }
}

/// The relay name to publish on a registry of `kind`: tfchain refuses ports, so a port is
/// dropped there, as rmb-peer does.
pub fn name_for(kind: RegistryKind, text: &str) -> String {
    let name = relay_domain(text);
    match name.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => {
            kind.relay_name(host, port.parse().ok())
        }
        _ => name,
    }
}

fn print_twin(twin: &Twin, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(twin)?);
        return Ok(());
    }
    println!("twin       {}", twin.id);
    println!("account    {}", twin.account);
    let relays: Vec<&str> = twin.relays.iter().map(String::as_str).collect();
    println!(
        "relays     {}",
        if relays.is_empty() {
            "(none)".to_string()
        } else {
            relays.join(", ")
        }
    );
    let pk = match &twin.pk {
        None => "(none: messages to it are not encrypted)".to_string(),
        Some(pk) => {
            let scheme = E2eScheme::of_public_key(pk)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!(
                "{} ({scheme})",
                pk.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        }
    };
    println!("e2e key    {pk}");
    Ok(())
}

/// Runs `rmb twin …`.
pub async fn run(args: TwinArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        TwinAction::Register(args) => {
            let identity = args.secret.identity()?;
            let registry = args.registry.require().await?;
            let account = identity.signer().account();
            let current = match registry.twin_id_by_account(&account).await? {
                Some(id) => registry.get_twin(id).await?,
                None => None,
            };
            let scheme = choose_scheme(
                args.e2e,
                registry.kind(),
                current.as_ref().and_then(|t| t.pk.as_deref()),
            );
            let relays: BTreeSet<String> = if args.relays.is_empty() {
                current.map(|t| t.relays).unwrap_or_default()
            } else {
                let kind = registry.kind();
                args.relays.iter().map(|r| name_for(kind, r)).collect()
            };
            if relays.iter().any(String::is_empty) {
                bail!("a --relay value is empty");
            }
            let update = TwinUpdate {
                relays,
                pk: Some(identity.e2e_public_key(scheme)),
                create: true,
            };
            let twin = registry.publish(identity.signer(), &update).await?;
            if !args.json {
                eprintln!("registered on {}", registry.describe());
            }
            print_twin(&twin, args.json)?;
        }
        TwinAction::Show(args) => {
            let registry = args.registry.require().await?;
            let id = match (args.id, args.account) {
                (Some(id), _) => Some(id),
                (None, Some(account)) => registry.twin_id_by_account(&account).await?,
                (None, None) => {
                    let account = args.secret.identity()?.signer().account();
                    registry.twin_id_by_account(&account).await?
                }
            };
            let twin = match id {
                Some(id) => registry.get_twin(id).await?,
                None => None,
            };
            match twin {
                Some(twin) => print_twin(&twin, args.json)?,
                None => {
                    eprintln!("no such twin on {}", registry.describe());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_become_domains() {
        assert_eq!(relay_domain("wss://relay.grid.tf:443/"), "relay.grid.tf");
        assert_eq!(
            relay_domain("wss://relay.grid.tf:8443"),
            "relay.grid.tf:8443"
        );
        assert_eq!(relay_domain("relay.grid.tf"), "relay.grid.tf");
        assert_eq!(relay_domain("ws://127.0.0.1:8080"), "127.0.0.1:8080");
        let tfchain = |text| name_for(RegistryKind::Tfchain, text);
        assert_eq!(tfchain("ws://relay.example:8280"), "relay.example");
        assert_eq!(tfchain("relay.example:8280"), "relay.example");
        assert_eq!(tfchain("relay.example"), "relay.example");
        assert_eq!(
            name_for(RegistryKind::Embedded, "ws://127.0.0.1:8080"),
            "127.0.0.1:8080"
        );
    }
}
