//! [`EvilRelay`]: a relay in the middle that reflects and re-sources what its clients
//! send unsigned, and the envelope rewrites it makes.

use super::*;

/// A relay in the middle: it logs its clients in to a real relay (same URL and token)
/// and passes every frame both ways, but keeps a copy of what its clients send unsigned
/// with one of the watched commands, and can write envelopes of its own to them, as
/// their relay could.
pub(super) struct EvilRelay {
    pub(super) url: String,
    captured: Arc<Mutex<Vec<Envelope>>>,
    down: Arc<Mutex<Vec<mpsc::UnboundedSender<WsMessage>>>>,
}

impl EvilRelay {
    pub(super) async fn start(
        upstream: &RelayProcess,
        watched: &'static [&'static str],
    ) -> EvilRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let evil = EvilRelay {
            url: format!("ws://{}/", listener.local_addr().unwrap()),
            captured: Arc::default(),
            down: Arc::default(),
        };
        let (captured, down, domain) = (
            Arc::clone(&evil.captured),
            Arc::clone(&evil.down),
            upstream.domain(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (captured, down, domain) =
                    (Arc::clone(&captured), Arc::clone(&down), domain.clone());
                tokio::spawn(async move {
                    let _ = Self::serve(tcp, &domain, watched, captured, down).await;
                });
            }
        });
        evil
    }

    // The handshake callback's error type is tungstenite's, large as it is.
    #[allow(clippy::result_large_err)]
    pub(super) async fn serve(
        tcp: tokio::net::TcpStream,
        upstream: &str,
        watched: &'static [&'static str],
        captured: Arc<Mutex<Vec<Envelope>>>,
        down: Arc<Mutex<Vec<mpsc::UnboundedSender<WsMessage>>>>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let path = Arc::new(Mutex::new(String::new()));
        let seen = Arc::clone(&path);
        let client = tokio_tungstenite::accept_hdr_async(
            tcp,
            move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                *seen.lock().unwrap() = req.uri().to_string();
                Ok(resp)
            },
        )
        .await?;
        let url = format!("ws://{upstream}{}", path.lock().unwrap());
        let (relay, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut to_client, mut from_client) = client.split();
        let (mut to_relay, mut from_relay) = relay.split();
        let (inject, mut injected) = mpsc::unbounded_channel();
        down.lock().unwrap().push(inject);
        let up = async move {
            while let Some(Ok(frame)) = from_client.next().await {
                if let WsMessage::Binary(bytes) = &frame
                    && let Ok(env) = Envelope::decode_limited(bytes, usize::MAX)
                    && env.is_unsigned()
                    && matches!(&env.message, Some(Message::Request(r)) if watched.contains(&r.command.as_str()))
                {
                    captured.lock().unwrap().push(env);
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
                        Some(Ok(frame)) => frame,
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
            if let Some(env) = self.captured.lock().unwrap().get(skip) {
                return env.clone();
            }
            assert!(
                Instant::now() < deadline,
                "nothing unsigned passed the relay"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `env` to every client session, as their relay delivering it.
    pub(super) fn deliver(&self, env: &Envelope) {
        for session in self.down.lock().unwrap().iter() {
            let _ = session.send(WsMessage::Binary(env.to_bytes().into()));
        }
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
