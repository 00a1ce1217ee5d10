//! `rmb key new` and `rmb key show`: make a secret, and see everything derived from it
//! (accounts for both signing schemes, encryption keys, and the twin when registered).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use rand::RngCore;
use rmb_identity::{E2eScheme, Identity, KeyType, SecretUri, Signer};
use serde::Serialize;

use crate::args::{RegistryArgs, SecretArgs};

/// Make or inspect a twin's secret.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

/// `rmb key` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// Print a fresh BIP-39 mnemonic (keep it secret: it is the twin's identity).
    New(KeyNewArgs),
    /// Show the accounts and public keys a mnemonic or seed gives, and its twin if any.
    Show(KeyShowArgs),
}

/// Print a fresh mnemonic.
#[derive(Args, Debug)]
pub struct KeyNewArgs {
    /// Number of words: 12, 15, 18, 21 or 24.
    #[arg(long, default_value_t = 12)]
    pub words: usize,

    /// Print JSON (mnemonic plus the public information of `rmb key show`).
    #[arg(long, conflicts_with = "out")]
    pub json: bool,

    /// Write the mnemonic to this file (created with mode 0600) instead of printing it.
    /// A file that already exists is left as it is, and the command still succeeds: a
    /// container's or service's first-start step can run it every time without ever
    /// replacing a twin's identity.
    #[arg(long, value_name = "PATH")]
    pub out: Option<std::path::PathBuf>,
}

/// Show what a secret gives.
#[derive(Args, Debug)]
pub struct KeyShowArgs {
    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Public facts derived from one secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// SS58 account (prefix 42) of the sr25519 key: rmb-rs's default key type.
    pub sr25519: String,
    /// SS58 account of the ed25519 key.
    pub ed25519: String,
    /// Hex x25519 public key (rmb's default e2e scheme).
    pub x25519: String,
    /// Hex compressed secp256k1 public key (rmb-rs's e2e scheme).
    pub secp256k1: String,
    /// Twins of these accounts on the registry asked, when one was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub twins: Vec<TwinOf>,
}

/// A twin found for one of the accounts.
#[derive(Debug, Clone, Serialize)]
pub struct TwinOf {
    /// Which signing key's account owns it.
    pub key_type: String,
    /// The twin id.
    pub twin: u32,
}

/// A fresh mnemonic of `words` words from the OS random generator.
pub fn new_mnemonic(words: usize) -> anyhow::Result<String> {
    if !matches!(words, 12 | 15 | 18 | 21 | 24) {
        anyhow::bail!("a mnemonic has 12, 15, 18, 21 or 24 words, not {words}");
    }
    let mut entropy = zeroize::Zeroizing::new([0u8; 32]);
    let len = words / 3 * 4;
    rand::rngs::OsRng.fill_bytes(&mut entropy[..len]);
    Ok(bip39::Mnemonic::from_entropy(&entropy[..len])?.to_string())
}

/// Derives [`KeyInfo`] (without twins) from a secret.
pub fn key_info(secret: &str) -> anyhow::Result<KeyInfo> {
    let uri = SecretUri::parse(secret)?;
    let sr = Signer::from_uri(&uri, KeyType::Sr25519)?;
    let ed = Signer::from_uri(&uri, KeyType::Ed25519)?;
    let identity = Identity::from_secret(secret, KeyType::Sr25519)?;
    Ok(KeyInfo {
        sr25519: sr.account().to_string(),
        ed25519: ed.account().to_string(),
        x25519: hex(&identity.e2e_public_key(E2eScheme::X25519)),
        secp256k1: hex(&identity.e2e_public_key(E2eScheme::Secp256k1)),
        twins: Vec::new(),
    })
}

/// `rmb key new --out PATH`: creates PATH (mode 0600, never over an existing file)
/// holding `mnemonic`, or leaves an existing PATH alone.
fn write_new(path: &std::path::Path, mnemonic: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("{} exists: kept as it is", path.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    };
    let written = file
        .write_all(format!("{mnemonic}\n").as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        // A half-written file would be kept by the next run as if it were a secret.
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    eprintln!("a new secret is in {} (mode 0600)", path.display());
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `rmb key …`.
pub async fn run(args: KeyArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        KeyAction::New(args) => {
            let mnemonic = new_mnemonic(args.words)?;
            if let Some(path) = &args.out {
                write_new(path, &mnemonic)?;
            } else if args.json {
                let info = key_info(&mnemonic)?;
                let out = serde_json::json!({ "mnemonic": mnemonic, "keys": info });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{mnemonic}");
                eprintln!(
                    "\nKeep these words secret: they are the twin's identity. Use them with\n  \
                     rmb-peer --mnemonic-file <file>  or  RMB_MNEMONIC=… rmb key show"
                );
            }
        }
        KeyAction::Show(args) => {
            let secret = args.secret.secret()?;
            let mut info = key_info(&secret)?;
            let registry = args.registry.connect().await?;
            if let Some(registry) = &registry {
                for key_type in [KeyType::Sr25519, KeyType::Ed25519] {
                    let account = Signer::from_secret(&secret, key_type)?.account();
                    if let Some(twin) = registry.twin_id_by_account(&account).await? {
                        info.twins.push(TwinOf {
                            key_type: key_type.to_string(),
                            twin,
                        });
                    }
                }
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("account (sr25519)    {}", info.sr25519);
                println!("account (ed25519)    {}", info.ed25519);
                println!("e2e key (x25519)     {}", info.x25519);
                println!("e2e key (secp256k1)  {}", info.secp256k1);
                match &registry {
                    None => println!("twin                 (give --registry or -s to look it up)"),
                    Some(r) if info.twins.is_empty() => {
                        println!("twin                 none on {}", r.describe())
                    }
                    Some(_) => {
                        for t in &info.twins {
                            println!("twin ({})      {}", t.key_type, t.twin);
                        }
                    }
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
    fn fresh_mnemonics_parse_and_differ() {
        let a = new_mnemonic(12).unwrap();
        let b = new_mnemonic(24).unwrap();
        assert_eq!(a.split(' ').count(), 12);
        assert_eq!(b.split(' ').count(), 24);
        assert!(new_mnemonic(13).is_err());
        assert_ne!(key_info(&a).unwrap().sr25519, key_info(&b).unwrap().sr25519);
    }

    #[test]
    fn alice_has_her_well_known_account() {
        let info = key_info("//Alice").unwrap();
        assert_eq!(
            info.sr25519,
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        assert_eq!(info.x25519.len(), 64);
        assert_eq!(info.secp256k1.len(), 66);
    }
}
