//! Flags shared by several subcommands: where the secret, the registry and the local
//! peer's Redis are. Kept in one place so every subcommand spells them the same way
//! (and the same way as `rmb-peer`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use rmb_identity::registry::{Registry, RegistryChoice, connect};
use rmb_identity::{E2eScheme, Identity, KeyType};

/// Environment variable read for the secret when no flag gives it.
pub const MNEMONIC_ENV: &str = "RMB_MNEMONIC";

/// Where a twin's secret comes from: `--mnemonic`, `--mnemonic-file` or `$RMB_MNEMONIC`.
#[derive(Args, Debug, Clone)]
pub struct SecretArgs {
    /// Mnemonic words or a 0x-prefixed 32-byte hex seed, optionally followed by a
    /// derivation path such as //Alice. Visible to other users in `ps`: prefer
    /// --mnemonic-file or the RMB_MNEMONIC environment variable.
    #[arg(short = 'm', long, value_name = "WORDS|0xSEED")]
    pub mnemonic: Option<String>,

    /// Read the mnemonic or seed from this file (surrounding whitespace is ignored).
    #[arg(long, value_name = "PATH", conflicts_with = "mnemonic")]
    pub mnemonic_file: Option<PathBuf>,

    /// Signing key type of the twin (rmb-rs's default is sr25519).
    #[arg(
        short = 'k',
        long,
        default_value = "sr25519",
        value_name = "sr25519|ed25519"
    )]
    pub key_type: KeyType,
}

impl SecretArgs {
    /// The secret text, from the first source given: flag, file, environment.
    pub fn secret(&self) -> anyhow::Result<String> {
        if let Some(text) = &self.mnemonic {
            return Ok(text.clone());
        }
        if let Some(path) = &self.mnemonic_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the mnemonic from {}", path.display()))?;
            return Ok(text.trim().to_string());
        }
        match std::env::var(MNEMONIC_ENV) {
            Ok(text) if !text.trim().is_empty() => Ok(text),
            _ => bail!(
                "no secret given: use --mnemonic, --mnemonic-file or the {MNEMONIC_ENV} \
                 environment variable (`rmb key new` makes one)"
            ),
        }
    }

    /// The identity (signing key of `--key-type` and both encryption keys).
    pub fn identity(&self) -> anyhow::Result<Identity> {
        Ok(Identity::from_secret(&self.secret()?, self.key_type)?)
    }
}

/// Which twin registry to ask: an embedded one (`--registry`) or tfchain (`-s`).
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Base URL of an embedded registry hosted by a relay, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "RMB_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,

    /// tfchain RPC URL(s), e.g. wss://tfchain.grid.tf:443, tried in turn (repeatable).
    #[arg(short = 's', long = "substrate", value_name = "URL")]
    pub substrate: Vec<String>,

    /// PEM file of a certificate authority to trust for wss:// relays and https://
    /// registries (repeatable), e.g. a private CA. Always trusted as well: the built-in
    /// web roots and the system's trust store, or instead of that store the files named
    /// by SSL_CERT_FILE and SSL_CERT_DIR when set.
    #[arg(long, value_name = "FILE")]
    pub relay_ca: Vec<PathBuf>,
}

impl RegistryArgs {
    /// The selected backend, `None` when neither flag was given. Also makes the
    /// process's TLS clients (registry, relays) trust `--relay-ca`: every command that
    /// connects directly asks for its registry first.
    pub fn choice(&self) -> anyhow::Result<Option<RegistryChoice>> {
        rmb_identity::trust::set_extra_cas(&self.relay_ca)?;
        Ok(RegistryChoice::from_flags(
            &self.substrate,
            self.registry.as_deref(),
        )?)
    }

    /// Connects to the selected backend, `None` when neither flag was given.
    pub async fn connect(&self) -> anyhow::Result<Option<Arc<dyn Registry>>> {
        match self.choice()? {
            None => Ok(None),
            Some(choice) => Ok(Some(
                connect(&choice)
                    .await
                    .context("connecting to the twin registry")?,
            )),
        }
    }

    /// Like [`RegistryArgs::connect`], but a registry is required.
    pub async fn require(&self) -> anyhow::Result<Arc<dyn Registry>> {
        self.connect().await?.ok_or_else(|| {
            anyhow::anyhow!(
                "no registry given: use --registry http://<relay> (embedded registry) or \
                 -s wss://<tfchain node> (tfchain)"
            )
        })
    }
}

/// The local rmb-peer's Redis (`-r/--redis`, like rmb-peer).
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis of the local rmb-peer (the same URL as its -r/--redis).
    #[arg(
        short = 'r',
        long,
        env = "RMB_REDIS",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub redis: String,
}

/// Parses `--e2e` values (x25519 or secp256k1).
pub fn parse_e2e(text: &str) -> Result<E2eScheme, String> {
    text.parse()
        .map_err(|e: rmb_identity::E2eError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    }

    #[test]
    fn mnemonic_file_is_trimmed_and_flag_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, "  //Alice\n").unwrap();
        let probe = Probe::parse_from(["x", "--mnemonic-file", path.to_str().unwrap()]);
        assert_eq!(probe.secret.secret().unwrap(), "//Alice");
        let probe = Probe::parse_from(["x", "-m", "//Bob", "-k", "ed25519"]);
        assert_eq!(probe.secret.secret().unwrap(), "//Bob");
        assert_eq!(probe.secret.key_type, KeyType::Ed25519);
    }

    #[test]
    fn both_registries_is_an_error() {
        let probe = Probe::parse_from(["x", "--registry", "http://a", "-s", "ws://b"]);
        assert!(probe.registry.choice().is_err());
        let probe = Probe::parse_from(["x", "--registry", "http://a"]);
        assert!(matches!(
            probe.registry.choice().unwrap(),
            Some(RegistryChoice::Embedded { .. })
        ));
    }
}
