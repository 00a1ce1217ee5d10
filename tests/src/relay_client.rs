//! [`TestClient`]: a bare direct client of a relay, for tests: log in with a JWT, send and
//! receive raw envelopes. (The real client library is the peer crate's.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rmb_identity::{Identity, Token};
use rmb_proto::{Address, Envelope, Message, Payload, Request};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One logged-in session.
pub struct TestClient {
    pub twin: u32,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Unix seconds now.
pub fn now() -> u64 {
    rmb_proto::time::unix_now()
}

/// A fresh login token for `twin`/`sid`, never the same as one made before in this
/// process (relays refuse a token shown twice, and tests log the same session in several
/// times a second): lifetimes of 60 s and up, one second longer for each token made.
pub fn fresh_token(identity: &Identity, twin: u32, sid: Option<&str>) -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let extra = MADE.fetch_add(1, Ordering::Relaxed) % 600;
    Token::create(identity.signer(), twin, sid, now(), 60 + extra)
}

impl TestClient {
    /// Logs in to `ws_url` as `twin` (session `sid`) with a fresh token ([`fresh_token`]).
    pub async fn connect(ws_url: &str, identity: &Identity, twin: u32, sid: Option<&str>) -> Self {
        let token = fresh_token(identity, twin, sid);
        Self::connect_with(ws_url, twin, &token)
            .await
            .unwrap_or_else(|e| panic!("login of twin {twin} failed: {e:?}"))
    }

    /// Logs in to `ws_url` with `token` as it is (e.g. one captured from another
    /// login); the HTTP status and body on refusal.
    pub async fn connect_with(ws_url: &str, twin: u32, token: &str) -> Result<Self, (u16, String)> {
        match tokio_tungstenite::connect_async(format!("{ws_url}?{token}")).await {
            Ok((ws, _)) => Ok(TestClient { twin, ws }),
            Err(e) => Err(refusal(e)),
        }
    }

    /// Tries to log in with an arbitrary URL suffix; returns the HTTP status and body on refusal.
    pub async fn try_login(url: &str) -> Result<(), (u16, String)> {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => Ok(()),
            Err(e) => Err(refusal(e)),
        }
    }

    /// Sends raw bytes as one binary frame.
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends an envelope as it is.
    pub async fn send(&mut self, env: &Envelope) {
        self.send_bytes(env.to_bytes())
            .await
            .expect("send envelope");
    }

    /// The next envelope, or `None` after `wait` (or when the connection closed).
    pub async fn recv(&mut self, wait: Duration) -> Option<Envelope> {
        loop {
            let frame = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match frame {
                Ok(WsMessage::Binary(bytes)) => {
                    return Some(
                        Envelope::decode_limited(&bytes, usize::MAX)
                            .expect("relay sent a valid envelope"),
                    );
                }
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                _ => return None,
            }
        }
    }

    /// The next `n` envelopes, or fewer if one does not come within `wait`.
    pub async fn recv_n(&mut self, n: usize, wait: Duration) -> Vec<Envelope> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.recv(wait).await {
                Some(env) => got.push(env),
                None => break,
            }
        }
        got
    }

    /// True once the relay has closed this connection (within `wait`).
    pub async fn closed(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// The HTTP status and body of a refused login (status 0 and the error when the
/// connection itself failed).
fn refusal(e: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        e => (0, e.to_string()),
    }
}

/// The development identity `//name` (sr25519), as tests' Alice and Bob.
pub fn dev_identity(name: &str) -> Identity {
    Identity::from_secret(&format!("//{name}"), rmb_identity::KeyType::Sr25519)
        .expect("a dev secret derives")
}

/// The uids of `envelopes`, in order.
pub fn uids(envelopes: &[Envelope]) -> Vec<String> {
    envelopes.iter().map(|e| e.uid.clone()).collect()
}

/// `n` small signed requests from `identity` (twin `src`) to twin `dst`, with uids
/// `<prefix>-0` … `<prefix>-<n-1>`, valid 60 s.
pub fn requests(identity: &Identity, src: u32, dst: u32, prefix: &str, n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            request(
                identity,
                Address::twin(src),
                dst,
                &format!("{prefix}-{i}"),
                b"x",
                60,
            )
        })
        .collect()
}

/// A signed request from `from` (twin `src`) to twin `dst`, valid `ttl` seconds.
pub fn request(
    identity: &Identity,
    src: Address,
    dst: u32,
    uid: &str,
    body: &[u8],
    ttl: u64,
) -> Envelope {
    let mut env = Envelope {
        uid: uid.to_string(),
        expiration: ttl,
        source: Some(src),
        destination: Some(Address::twin(dst)),
        message: Some(Message::Request(Request {
            command: "test.echo".into(),
        })),
        payload: Some(Payload::Plain(body.to_vec())),
        ..Default::default()
    };
    identity.seal_envelope(&mut env, None, now()).expect("sign");
    env
}

/// The error text of a relay error envelope, if it is one.
pub fn error_text(env: &Envelope) -> Option<&str> {
    match &env.message {
        Some(Message::Error(e)) => Some(e.message.as_str()),
        _ => None,
    }
}
