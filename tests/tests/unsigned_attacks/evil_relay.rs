//! [`EvilRelay`]: a relay in the middle that reflects and re-sources what its clients
//! send unsigned, and the envelope rewrites it makes. Like a real relay it tells its
//! clients what the relay behind it routes (the `rmb-relay-capabilities` header of the
//! upgrade response), unless started to hide it.

use super::*;

/// Which way an envelope went through the [`EvilRelay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// From its client to the relay behind.
    Up,
    /// From the relay behind to its client (injected envelopes are not logged).
    Down,
}

/// What the sessions of one [`EvilRelay`] share with the test.
#[derive(Default)]
struct Shared {
    /// Unsigned requests of a watched command sent by clients, in order.
    captured: Mutex<Vec<Envelope>>,
    /// Every envelope that went through, either way, in order.
    log: Mutex<Vec<(Dir, Envelope)>>,
    down: Mutex<Vec<mpsc::UnboundedSender<WsMessage>>>,
}

/// A relay in the middle: it logs its clients in to a real relay (same URL and token)
/// and passes every frame both ways, but keeps a copy of what its clients send unsigned
/// with one of the watched commands (and a log of everything), and can write envelopes
/// of its own to them, as their relay could.
pub(super) struct EvilRelay {
    pub(super) url: String,
    shared: Arc<Shared>,
}

impl EvilRelay {
    /// Passes on the upstream relay's capabilities header, as a relay of that version
    /// would.
    pub(super) async fn start(
        upstream: &RelayProcess,
        watched: &'static [&'static str],
    ) -> EvilRelay {
        Self::start_with(upstream, watched, true).await
    }

    /// With `pass_capabilities` false the upgrade response carries no
    /// `rmb-relay-capabilities` header: an older relay, as its clients see it.
    pub(super) async fn start_with(
        upstream: &RelayProcess,
        watched: &'static [&'static str],
        pass_capabilities: bool,
    ) -> EvilRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let evil = EvilRelay {
            url: format!("ws://{}/", listener.local_addr().unwrap()),
            shared: Arc::default(),
        };
        let (shared, domain) = (Arc::clone(&evil.shared), upstream.domain());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (shared, domain) = (Arc::clone(&shared), domain.clone());
                tokio::spawn(async move {
                    let _ = Self::serve(tcp, &domain, watched, pass_capabilities, shared).await;
                });
            }
        });
        evil
    }

    // The handshake callback's error type is tungstenite's, large as it is.
    #[allow(clippy::result_large_err)]
    async fn serve(
        tcp: tokio::net::TcpStream,
        upstream: &str,
        watched: &'static [&'static str],
        pass_capabilities: bool,
        shared: Arc<Shared>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        // Log in upstream first (same path and token), so that the answer to the client
        // can say what the relay behind routes.
        let path = request_target(&tcp).await?;
        let url = format!("ws://{upstream}{path}");
        let (relay, upgraded) = tokio_tungstenite::connect_async(url).await?;
        let capabilities = upgraded
            .headers()
            .get(rmb_proto::RELAY_CAPABILITIES_HEADER)
            .filter(|_| pass_capabilities)
            .cloned();
        let client = tokio_tungstenite::accept_hdr_async(
            tcp,
            move |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                if let Some(value) = capabilities {
                    resp.headers_mut()
                        .insert(rmb_proto::RELAY_CAPABILITIES_HEADER, value);
                }
                Ok(resp)
            },
        )
        .await?;
        let (mut to_client, mut from_client) = client.split();
        let (mut to_relay, mut from_relay) = relay.split();
        let (inject, mut injected) = mpsc::unbounded_channel();
        shared.down.lock().unwrap().push(inject);
        let seen = Arc::clone(&shared);
        let up = async move {
            while let Some(Ok(frame)) = from_client.next().await {
                if let WsMessage::Binary(bytes) = &frame
                    && let Ok(env) = Envelope::decode_limited(bytes, usize::MAX)
                {
                    if env.is_unsigned()
                        && matches!(&env.message, Some(Message::Request(r)) if watched.contains(&r.command.as_str()))
                    {
                        seen.captured.lock().unwrap().push(env.clone());
                    }
                    seen.log.lock().unwrap().push((Dir::Up, env));
                }
                let close = matches!(frame, WsMessage::Close(_));
                if to_relay.send(frame).await.is_err() || close {
                    break;
                }
            }
        };
        let down = async move {
            loop {
                let frame = tokio::select! {
                    frame = from_relay.next() => match frame {
                        Some(Ok(frame)) => {
                            if let WsMessage::Binary(bytes) = &frame
                                && let Ok(env) = Envelope::decode_limited(bytes, usize::MAX)
                            {
                                shared.log.lock().unwrap().push((Dir::Down, env));
                            }
                            frame
                        }
                        _ => break,
                    },
                    Some(frame) = injected.recv() => frame,
                };
                if to_client.send(frame).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = up => {},
            _ = down => {},
        }
        Ok(())
    }

    /// The first unsigned envelope captured after the first `skip`, waiting for it.
    pub(super) async fn captured(&self, skip: usize) -> Envelope {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(env) = self.shared.captured.lock().unwrap().get(skip) {
                return env.clone();
            }
            assert!(
                Instant::now() < deadline,
                "nothing unsigned passed the relay"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The envelopes that went `dir` so far and that `keep` keeps, in order.
    pub(super) fn seen(&self, dir: Dir, keep: impl Fn(&Envelope) -> bool) -> Vec<Envelope> {
        let log = self.shared.log.lock().unwrap();
        log.iter()
            .filter(|(d, env)| *d == dir && keep(env))
            .map(|(_, env)| env.clone())
            .collect()
    }

    /// Writes `env` to every client session, as their relay delivering it.
    pub(super) fn deliver(&self, env: &Envelope) {
        for session in self.shared.down.lock().unwrap().iter() {
            let _ = session.send(WsMessage::Binary(env.to_bytes().into()));
        }
    }
}

/// The request target (path and query) of the HTTP upgrade request waiting on `tcp`,
/// read without consuming it (the WebSocket handshake reads it again).
async fn request_target(
    tcp: &tokio::net::TcpStream,
) -> Result<String, tokio_tungstenite::tungstenite::Error> {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + WAIT;
    loop {
        let n = tcp.peek(&mut buf).await?;
        let head = &buf[..n];
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            let line = String::from_utf8_lossy(head);
            let target = line.split_whitespace().nth(1).unwrap_or("/");
            return Ok(target.to_string());
        }
        if n == 0 || n == buf.len() || Instant::now() > deadline {
            return Err(std::io::Error::other("no upgrade request").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `env` turned around: from its destination back to its source.
pub(super) fn reflected(env: &Envelope) -> Envelope {
    let mut env = env.clone();
    std::mem::swap(&mut env.source, &mut env.destination);
    env
}

/// `env` claiming another source.
pub(super) fn resourced(env: &Envelope, source: Address) -> Envelope {
    let mut env = env.clone();
    env.source = Some(source);
    env
}

/// Posts `env` to `relay`'s federation endpoint, as another relay forwarding it would;
/// the HTTP status.
pub(super) async fn federate(relay: &RelayProcess, env: &Envelope) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/", relay.http_url()))
        .body(env.to_bytes())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
