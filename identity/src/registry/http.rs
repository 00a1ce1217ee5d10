//! [`HttpRegistry`]: the client of an embedded registry (`--registry http://host:port`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::api::{ChangesResponse, ErrorBody, PublishRequest};
use super::{Change, Registry, RegistryError, RegistryKind, Twin, TwinUpdate};
use crate::account::AccountId;
use crate::signer::Signer;

/// How long one `/changes` long poll waits on the server.
const LONG_POLL: Duration = Duration::from_secs(25);
/// Timeout of ordinary requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A registry reached over HTTP(S).
pub struct HttpRegistry {
    base: String,
    client: reqwest::Client,
}

impl HttpRegistry {
    /// A client for the registry at `base` (`http://host:port` or `https://…`).
    pub fn new(base: &str) -> Result<Self, RegistryError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::Invalid(format!(
                "registry URL '{base}' must start with http:// or https://"
            )));
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::trust::client_config().as_ref().clone())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(HttpRegistry { base, client })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Option<T>, RegistryError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unavailable(&url, e))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(&url, response).await.map(Some)
    }
}

fn unavailable(url: &str, e: reqwest::Error) -> RegistryError {
    RegistryError::Unavailable(format!("{url}: {}", error_chain(&e)))
}

/// An error with all its causes, `a: b: c`. reqwest's top-level message alone is vague
/// ("error sending request"); every HTTP client of rmb reports errors this way.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn decode<T: DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<T, RegistryError> {
    let status = response.status();
    let body = response.bytes().await.map_err(|e| unavailable(url, e))?;
    if status.is_success() {
        return serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Invalid(format!("{url}: {e}")));
    }
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
    if status.is_server_error() {
        Err(RegistryError::Unavailable(format!(
            "{url}: {status}: {message}"
        )))
    } else {
        Err(RegistryError::Refused(message))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[async_trait]
impl Registry for HttpRegistry {
    async fn get_twin(&self, id: u32) -> Result<Option<Twin>, RegistryError> {
        self.get(&format!("/twins/{id}"), REQUEST_TIMEOUT).await
    }

    async fn twin_id_by_account(&self, account: &AccountId) -> Result<Option<u32>, RegistryError> {
        let twin: Option<Twin> = self
            .get(&format!("/twins/by-account/{account}"), REQUEST_TIMEOUT)
            .await?;
        Ok(twin.map(|t| t.id))
    }

    async fn publish(&self, signer: &Signer, update: &TwinUpdate) -> Result<Twin, RegistryError> {
        let url = format!("{}/twins", self.base);
        let request = PublishRequest::signed(signer, update, now_ms());
        let response = self
            .client
            .post(&url)
            .timeout(REQUEST_TIMEOUT)
            .json(&request)
            .send()
            .await
            .map_err(|e| unavailable(&url, e))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotRegistered(signer.account()));
        }
        decode(&url, response).await
    }

    async fn follow(&self, sink: mpsc::Sender<Change>) -> Result<(), RegistryError> {
        let mut epoch = String::new();
        let mut version = 0u64;
        if sink.send(Change::Reset).await.is_err() {
            return Ok(());
        }
        loop {
            let path = format!(
                "/changes?since={version}&epoch={epoch}&wait={}",
                LONG_POLL.as_secs()
            );
            let answer: ChangesResponse = self
                .get(&path, LONG_POLL + REQUEST_TIMEOUT)
                .await?
                .ok_or_else(|| RegistryError::Invalid("registry has no /changes feed".into()))?;
            let mut changes = Vec::with_capacity(answer.twins.len() + 1);
            if answer.reset && !epoch.is_empty() {
                changes.push(Change::Reset);
            }
            changes.extend(answer.twins.into_iter().map(Change::Updated));
            for change in changes {
                if sink.send(change).await.is_err() {
                    return Ok(());
                }
            }
            epoch = answer.epoch;
            version = answer.version;
        }
    }

    fn describe(&self) -> String {
        format!("embedded registry at {}", self.base)
    }

    fn kind(&self) -> RegistryKind {
        RegistryKind::Embedded
    }
}
