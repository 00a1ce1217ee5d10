//! The baseline: the least a WebSocket forwarder can do with the same tokio-tungstenite
//! stack. No login, no routing table beyond the URL, no protobuf: a client connects to
//! `/pair/<n>/a` or `/pair/<n>/b` and every binary frame from one side of pair `n` is
//! written to the other side.
//!
//! Each connection has a reader (this task) and a writer task fed by a bounded mpsc; the
//! writer writes everything already queued before one flush, so bursts share a syscall
//! (`--bare-flush-each` turns that off, to show what batching alone is worth).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Frames buffered per connection before the reader on the other side waits.
const OUTBOX: usize = 1024;

type Outboxes = Arc<Mutex<HashMap<(u32, bool), mpsc::Sender<Bytes>>>>;

/// A running forwarder; stops accepting when dropped.
pub struct Forwarder {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Forwarder {
    /// Listens on a free loopback port. With `flush_each`, the writer flushes after every
    /// frame (one write syscall per frame, like a `send` per message) instead of batching.
    pub async fn start(flush_each: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let outboxes = Outboxes::default();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve(stream, Arc::clone(&outboxes), flush_each));
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        });
        Ok(Forwarder { addr, task })
    }

    /// The URL one side of a pair connects to.
    pub fn url(&self, pair: usize, side_a: bool) -> String {
        let side = if side_a { "a" } else { "b" };
        format!("ws://{}/pair/{pair}/{side}", self.addr)
    }
}

/// `/pair/<n>/<a|b>` → `(n, is_a)`.
fn parse(path: &str) -> Option<(u32, bool)> {
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some("pair"), Some(n), Some(side), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let side = match side {
        "a" => true,
        "b" => false,
        _ => return None,
    };
    Some((n.parse().ok()?, side))
}

// The handshake callback's error type is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, outboxes: Outboxes, flush_each: bool) {
    let mut path = String::new();
    let remember_path = |request: &Request, response: Response| {
        path = request.uri().path().to_string();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, remember_path).await else {
        return;
    };
    let Some((pair, side)) = parse(&path) else {
        return;
    };
    let (outbox, mut inbox) = mpsc::channel::<Bytes>(OUTBOX);
    outboxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((pair, side), outbox);
    let (mut sink, mut stream) = ws.split();

    let writer = tokio::spawn(async move {
        while let Some(first) = inbox.recv().await {
            let mut next = Some(first);
            while let Some(bytes) = next {
                let written = if flush_each {
                    sink.send(Message::Binary(bytes)).await
                } else {
                    sink.feed(Message::Binary(bytes)).await
                };
                if written.is_err() {
                    return;
                }
                next = inbox.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });

    let mut peer: Option<mpsc::Sender<Bytes>> = None;
    while let Some(Ok(message)) = stream.next().await {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            _ => continue,
        };
        if peer.is_none() {
            peer = outboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(pair, !side))
                .cloned();
        }
        // Dropped while the other side is not connected (the load generator waits for both).
        let delivered = match &peer {
            Some(out) => out.send(bytes).await.is_ok(),
            None => true,
        };
        if !delivered {
            peer = None;
        }
    }
    outboxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&(pair, side));
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn paths_name_a_pair_and_a_side() {
        assert_eq!(parse("/pair/7/a"), Some((7, true)));
        assert_eq!(parse("/pair/0/b"), Some((0, false)));
        assert_eq!(parse("/pair/7/c"), None);
        assert_eq!(parse("/pair/x/a"), None);
        assert_eq!(parse("/pair/7/a/b"), None);
    }
}
