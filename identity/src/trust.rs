//! Which certificate authorities the TLS clients of a twin trust: `wss://` relays and
//! `https://` registries.
//!
//! A relay behind a certificate from a private CA must be reachable as it is with
//! rmb-rs, which honours the system's trust store and `SSL_CERT_FILE`. So the roots are:
//!
//! - the built-in web roots (Mozilla's list, so a host without a trust store still
//!   reaches public relays);
//! - the system's trust store, or instead the PEM files named by `SSL_CERT_FILE` and the
//!   directories named by `SSL_CERT_DIR` when those are set (OpenSSL's convention);
//! - the PEM files given with `--relay-ca` ([`set_extra_cas`]).
//!
//! The configuration is built once per process, at first use, and shared.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why extra CA files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("the CA file {path} holds a certificate that cannot be used: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// Extra CAs given on the command line, and the configuration once built.
struct State {
    extra: Vec<CertificateDer<'static>>,
    built: Option<Arc<rustls::ClientConfig>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    extra: Vec::new(),
    built: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the certificates of PEM file `path` (one or more `CERTIFICATE` blocks).
pub fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TrustError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TrustError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Trusts the CAs in the PEM `files` too (`--relay-ca`), for every TLS client made
/// from now on. Checks each file now, so a wrong path fails at start.
pub fn set_extra_cas(files: &[PathBuf]) -> Result<(), TrustError> {
    let mut certs = Vec::new();
    for path in files {
        for cert in read_pem(path)? {
            let mut probe = rustls::RootCertStore::empty();
            probe.add(cert.clone()).map_err(|e| TrustError::Invalid {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            certs.push(cert);
        }
    }
    let mut state = state();
    state.extra = certs;
    state.built = None;
    Ok(())
}

/// The roots: built-in web roots, the system's store (or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`), and the extra CAs.
fn roots(extra: &[CertificateDer<'static>]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "a system trust store entry could not be read");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system trust store loaded");
    for cert in extra {
        // Checked by set_extra_cas.
        let _ = roots.add(cert.clone());
    }
    roots
}

/// The TLS client configuration every `wss://` and `https://` client of the process
/// uses (built at first use; [`set_extra_cas`] makes the next call build it again).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let mut state = state();
    if let Some(config) = &state.built {
        return Arc::clone(config);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots(&state.extra))
        .with_no_client_auth();
    let config = Arc::new(config);
    state.built = Some(Arc::clone(&config));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("rmb-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            set_extra_cas(&[dir.join("absent.pem")]),
            Err(TrustError::Read { .. })
        ));
        assert!(matches!(
            set_extra_cas(&[empty]),
            Err(TrustError::Empty { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
