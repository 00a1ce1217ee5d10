//! A small client of the local peer's HTTP API for the personal bus: the twin's id,
//! configuring, publishing to and following the group topic. Separate from `rmb topic`'s
//! client so the services get typed errors and bounded reads.

use std::time::Duration;

use serde_json::Value;

/// Longest line the API may send on a stream (a message is at most ~130 KiB as JSON).
const MAX_LINE: usize = 1 << 20;

/// Why a call to the peer's HTTP API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API did not answer (peer down, or started without `--http`).
    #[error(
        "cannot reach the peer's HTTP API at {url} (is rmb-peer running with --http?): {source}"
    )]
    Unreachable {
        /// The base URL.
        url: String,
        /// What the client saw.
        source: reqwest::Error,
    },
    /// The API answered with an error.
    #[error("the peer refused: {message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's error text.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("the peer's answer is malformed: {0}")]
    Malformed(String),
    /// The live stream ended or broke.
    #[error("the peer's stream ended: {0}")]
    StreamEnded(String),
}

/// A client of one peer's HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:8051`), through `http` (which
    /// carries the API's token, or reaches its Unix socket).
    pub fn new(base: String, http: reqwest::Client) -> Api {
        Api { base, http }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let response = request
            .timeout(Duration::from_secs(90))
            .send()
            .await
            .map_err(|source| ApiError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(ApiError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| ApiError::Malformed(e.to_string()))
    }

    /// The local peer's twin id.
    pub async fn twin(&self) -> Result<u32, ApiError> {
        let hello = self.json(self.http.get(self.url("/"))).await?;
        hello["twin"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| ApiError::Malformed("no twin id in the hello".into()))
    }

    /// Creates or reconfigures an own topic (`PUT /topics/<twin>/<name>`).
    pub async fn configure(&self, topic: &str, config: &Value) -> Result<Value, ApiError> {
        self.json(
            self.http
                .put(self.url(&format!("/topics/{topic}")))
                .json(config),
        )
        .await
    }

    /// A topic's state (`GET /topics/<topic>`), `None` when it does not exist.
    pub async fn show(&self, topic: &str) -> Result<Option<Value>, ApiError> {
        match self
            .json(self.http.get(self.url(&format!("/topics/{topic}"))))
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Publishes a JSON document to `topic` (as text: apps read it back as JSON); its id.
    pub async fn publish(&self, topic: &str, body: &Value) -> Result<u64, ApiError> {
        self.publish_text(topic, &body.to_string()).await
    }

    /// Publishes a line of text to `topic`; its id.
    pub async fn publish_text(&self, topic: &str, text: &str) -> Result<u64, ApiError> {
        let answer = self
            .json(
                self.http
                    .post(self.url(&format!("/topics/{topic}")))
                    .header("content-type", "application/octet-stream")
                    .body(text.to_string()),
            )
            .await?;
        answer["id"]
            .as_u64()
            .ok_or_else(|| ApiError::Malformed("no id in the publish answer".into()))
    }

    /// The messages kept after `since` ("all": from the oldest kept), as JSON values.
    pub async fn poll(&self, topic: &str, since: &str) -> Result<Vec<Value>, ApiError> {
        let text = self
            .send(
                self.http
                    .get(self.url(&format!("/topics/{topic}/json?poll=1&since={since}"))),
            )
            .await?
            .text()
            .await
            .map_err(|e| ApiError::Malformed(e.to_string()))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "message")
            .collect())
    }

    /// The newest id of `topic` this peer can see (0 when it is empty).
    pub async fn newest(&self, topic: &str) -> Result<u64, ApiError> {
        Ok(self
            .poll(topic, "all")
            .await?
            .iter()
            .filter_map(|m| m["id"].as_u64())
            .max()
            .unwrap_or(0))
    }

    /// Opens the live JSON stream of `topic` after id `since`.
    pub async fn follow(&self, topic: &str, since: u64) -> Result<Stream, ApiError> {
        let response = self
            .send_streaming(
                self.http
                    .get(self.url(&format!("/topics/{topic}/json?since={since}"))),
            )
            .await?;
        Ok(Stream {
            response,
            pending: Vec::new(),
        })
    }

    async fn send_streaming(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        // No overall timeout: the stream lives as long as it is read (keepalives every 25 s).
        let response = request
            .send()
            .await
            .map_err(|source| ApiError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let v: Value = response.json().await.unwrap_or_default();
            return Err(ApiError::Refused {
                status,
                message: v["error"].as_str().unwrap_or("error").to_string(),
            });
        }
        Ok(response)
    }
}

/// A live JSON-lines stream of a topic.
pub struct Stream {
    response: reqwest::Response,
    pending: Vec<u8>,
}

impl Stream {
    /// The next message event (other events are skipped; a `gap` is returned too).
    pub async fn next(&mut self) -> Result<Value, ApiError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if v["event"] == "message" || v["event"] == "gap" {
                    return Ok(v);
                }
                continue;
            }
            // Idle streams carry keepalives every 25 s: a minute of silence is a dead peer.
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.response.chunk())
                .await
                .map_err(|_| ApiError::StreamEnded("no keepalive for 60 s".into()))?
                .map_err(|e| ApiError::StreamEnded(e.to_string()))?
                .ok_or_else(|| ApiError::StreamEnded("closed by the peer".into()))?;
            self.pending.extend_from_slice(&chunk);
            if self.pending.len() > MAX_LINE {
                return Err(ApiError::StreamEnded("a line longer than 1 MiB".into()));
            }
        }
    }
}
