//! Choosing a registry backend from the command line.
//!
//! `-s/--substrate URL` (repeatable) selects tfchain; `--registry URL` an embedded
//! registry hosted elsewhere. Giving neither is for the caller to decide: a relay then
//! hosts the embedded registry itself, a peer refuses to start.

use std::sync::Arc;

use super::http::HttpRegistry;
use super::{Registry, RegistryError};

/// Which registry the flags select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChoice {
    /// tfchain, through these RPC URLs (tried in turn on failure).
    Tfchain { urls: Vec<String> },
    /// An embedded registry served by some relay, at this base URL.
    Embedded { url: String },
}

impl RegistryChoice {
    /// Reads the flags; `Ok(None)` when neither was given.
    pub fn from_flags(
        substrate: &[String],
        registry: Option<&str>,
    ) -> Result<Option<Self>, RegistryError> {
        match (substrate.is_empty(), registry) {
            (false, Some(_)) => Err(RegistryError::Invalid(
                "give either --substrate (tfchain) or --registry (embedded registry), not both"
                    .into(),
            )),
            (false, None) => Ok(Some(RegistryChoice::Tfchain {
                urls: substrate.to_vec(),
            })),
            (true, Some(url)) => Ok(Some(RegistryChoice::Embedded {
                url: url.to_string(),
            })),
            (true, None) => Ok(None),
        }
    }
}

/// Connects to the chosen backend (uncached; wrap it in a `CachedRegistry`).
pub async fn connect(choice: &RegistryChoice) -> Result<Arc<dyn Registry>, RegistryError> {
    match choice {
        RegistryChoice::Embedded { url } => Ok(Arc::new(HttpRegistry::new(url)?)),
        #[cfg(feature = "tfchain")]
        RegistryChoice::Tfchain { urls } => Ok(Arc::new(
            super::tfchain::TfchainRegistry::connect(urls.clone()).await?,
        )),
        #[cfg(not(feature = "tfchain"))]
        RegistryChoice::Tfchain { .. } => Err(RegistryError::Invalid(
            "this build has no tfchain support (enable the `tfchain` feature of rmb-identity)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_select_one_backend() {
        let urls = vec!["ws://127.0.0.1:9944".to_string()];
        assert_eq!(
            RegistryChoice::from_flags(&urls, None).unwrap(),
            Some(RegistryChoice::Tfchain { urls: urls.clone() })
        );
        assert_eq!(
            RegistryChoice::from_flags(&[], Some("http://127.0.0.1:8080")).unwrap(),
            Some(RegistryChoice::Embedded {
                url: "http://127.0.0.1:8080".into()
            })
        );
        assert_eq!(RegistryChoice::from_flags(&[], None).unwrap(), None);
        assert!(RegistryChoice::from_flags(&urls, Some("http://x")).is_err());
    }
}
