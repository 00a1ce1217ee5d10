//! [`Identity`]: everything one twin needs, made from one secret.

use crate::e2e::{E2eError, E2eKeys, E2eScheme};
use crate::secret::{SecretError, SecretUri};
use crate::signer::{KeyType, Signer};

/// Why an identity could not be built from a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    E2e(#[from] E2eError),
}

/// A twin's signing key and encryption keys.
///
/// The signing key's account is the twin's identity on the registry; the encryption key
/// of the chosen [`E2eScheme`] is what the twin publishes for others to write to it.
#[derive(Debug)]
pub struct Identity {
    signer: Signer,
    e2e: E2eKeys,
}

impl Identity {
    /// Builds an identity from a mnemonic or `0x` seed (optionally with a path).
    pub fn from_secret(secret: &str, key_type: KeyType) -> Result<Self, IdentityError> {
        let uri = SecretUri::parse(secret)?;
        Ok(Identity {
            signer: Signer::from_uri(&uri, key_type)?,
            e2e: E2eKeys::from_seed(&uri.e2e_seed())?,
        })
    }

    /// The signing key.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The encryption keys.
    pub fn e2e(&self) -> &E2eKeys {
        &self.e2e
    }

    /// The public encryption key to publish for `scheme`.
    pub fn e2e_public_key(&self, scheme: E2eScheme) -> Vec<u8> {
        self.e2e.public_key(scheme)
    }
}
