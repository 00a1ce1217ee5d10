//! Bridging connections to local TCP services (`rmb-peer --expose PROTOCOL=HOST:PORT`),
//! and the inbound filter that hands connection traffic to [`Connections`] before an
//! application layer (the Redis API) sees the rest.

use std::collections::HashSet;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Connections, ListenError, ListenOptions, Stream, wire};
use crate::core::{INBOUND_CAPACITY, Inbound};

/// How long connecting to the local service may take before the open is refused.
pub const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `--expose` rule: a protocol bridged to a local TCP address, with its access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub protocol: String,
    /// `HOST:PORT` of the local service.
    pub target: String,
    /// Twins allowed to open it; `None`: every twin.
    pub allow: Option<HashSet<u32>>,
}

/// Why an `--expose` value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExposeParseError {
    #[error("expected PROTOCOL=HOST:PORT[,allow=TWIN,TWIN…], got '{0}'")]
    Shape(String),
    #[error(transparent)]
    Protocol(#[from] wire::WireError),
    #[error("'{0}' is not a twin id")]
    Twin(String),
}

impl std::str::FromStr for Expose {
    type Err = ExposeParseError;

    /// `ssh=127.0.0.1:22` or `ssh=127.0.0.1:22,allow=7,9`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || ExposeParseError::Shape(text.to_string());
        let (protocol, rest) = text.split_once('=').ok_or_else(shape)?;
        wire::check_protocol(protocol)?;
        let (target, allow) = match rest.split_once(",allow=") {
            Some((target, twins)) => {
                let twins = twins
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<u32>()
                            .map_err(|_| ExposeParseError::Twin(t.to_string()))
                    })
                    .collect::<Result<HashSet<u32>, _>>()?;
                (target, Some(twins))
            }
            None => (rest, None),
        };
        if !target.contains(':') || target.contains(',') {
            return Err(shape());
        }
        Ok(Expose {
            protocol: protocol.to_string(),
            target: target.to_string(),
            allow,
        })
    }
}

/// Running `--expose` bridges; [`shutdown`](Bridges::shutdown) stops them and waits.
pub struct Bridges {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Bridges {
    /// Listens for every rule's protocol and bridges each accepted connection to its
    /// service (an unreachable service refuses the open, so the opener is told).
    pub fn start(connections: &Connections, rules: &[Expose]) -> Result<Bridges, ListenError> {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        for rule in rules {
            let options = ListenOptions {
                allow: rule.allow.clone(),
            };
            let mut listener = connections.listen(&rule.protocol, options)?;
            let (rule, inner, stop) = (rule.clone(), tasks.clone(), stop.clone());
            tasks.spawn(async move {
                // Remote opens trigger these warnings: at most one per 10 s per rule.
                let mut warned: Option<std::time::Instant> = None;
                loop {
                    let incoming = tokio::select! {
                        _ = stop.cancelled() => return,
                        incoming = listener.next() => match incoming {
                            Some(incoming) => incoming,
                            None => return,
                        },
                    };
                    let connect = TcpStream::connect(&rule.target);
                    let tcp = match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, connect).await {
                        Ok(Ok(tcp)) => tcp,
                        Ok(Err(e)) => {
                            if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                                warned = Some(std::time::Instant::now());
                                tracing::warn!(protocol = %rule.protocol, target = %rule.target, error = %e, "exposed service unreachable; refusing (logged once per 10 s)");
                            }
                            incoming.refuse("the exposed service is unreachable").await;
                            continue;
                        }
                        Err(_) => {
                            incoming.refuse("the exposed service did not answer").await;
                            continue;
                        }
                    };
                    let remote = incoming.remote().clone();
                    match incoming.accept().await {
                        Ok(stream) => {
                            tracing::info!(protocol = %rule.protocol, %remote, "bridging a connection");
                            inner.spawn(bridge(stream, tcp, stop.clone()));
                        }
                        Err(e) => tracing::warn!(%remote, error = %e, "accepting failed"),
                    }
                }
            });
        }
        Ok(Bridges { tasks, stop })
    }

    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Copies both ways until both directions ended (each end's EOF half-closes the other).
pub async fn bridge(mut stream: Stream, mut tcp: TcpStream, stop: CancellationToken) {
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut stream, &mut tcp) => match result {
            Ok((up, down)) => tracing::debug!(up, down, "bridge finished"),
            Err(e) => tracing::debug!(error = %e, "bridge ended"),
        },
        _ = stop.cancelled() => {}
    }
}

/// Hands connection traffic of `inbound` to `connections`; everything else comes out of
/// the returned receiver (for the Redis API or another application layer).
pub fn filter_inbound(
    connections: Connections,
    mut inbound: mpsc::Receiver<Inbound>,
) -> (mpsc::Receiver<Inbound>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOUND_CAPACITY);
    let task = tokio::spawn(async move {
        while let Some(message) = inbound.recv().await {
            let rest = match message {
                Inbound::Request(r) => connections.handle_request(r).map(Inbound::Request),
                Inbound::Response(r) => connections.handle_response(r).map(Inbound::Response),
                Inbound::ConnFrame(frame) => {
                    connections.handle_frame(frame);
                    None
                }
            };
            if let Some(rest) = rest
                && tx.send(rest).await.is_err()
            {
                return;
            }
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_rules_parse() {
        let rule: Expose = "ssh=127.0.0.1:22".parse().unwrap();
        assert_eq!(
            (rule.protocol.as_str(), rule.target.as_str()),
            ("ssh", "127.0.0.1:22")
        );
        assert_eq!(rule.allow, None);
        let rule: Expose = "web=localhost:80,allow=7,9".parse().unwrap();
        assert_eq!(rule.allow, Some([7, 9].into()));
        assert!("ssh".parse::<Expose>().is_err());
        assert!("=h:1".parse::<Expose>().is_err());
        assert!("ssh=nohost".parse::<Expose>().is_err());
        assert!("ssh=h:1,allow=x".parse::<Expose>().is_err());
    }
}
