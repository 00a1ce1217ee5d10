//! The bench's apps' Redis connection: one socket per app, RESP2 written and read in
//! place, as the blocking clients most apps use (redis-py, go-redis's pool) do.
//!
//! Why not redis-rs here: its async connection multiplexes every command through a
//! driver task and a reply channel, which doubles the task wake-ups of an app that
//! only ever has one command in flight. The apps are part of what `peer-bench`
//! measures (their CPU is in every "all" column), so they should cost what a plain
//! client costs, not what a multiplexer adds. The peers keep redis-rs.

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Longest reply line accepted (a type, then a length, count, status or error).
const MAX_LINE: usize = 4096;
/// Largest bulk string accepted (the bench's replies are ≤ ~90 KB).
const MAX_REPLY: usize = 16 << 20;

/// Either kind of socket a `redis://` or `redis+unix://` URL names.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One app's connection: commands are written whole, replies read into `buf`, whose
/// unread part is `buf[pos..end]`.
pub struct AppConn {
    socket: Socket,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    out: Vec<u8>,
}
/// A reply this client understands (the bench sends nothing else).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
    Status,
}

impl AppConn {
    /// Connects to `redis://host:port/` or `redis+unix:///path`.
    pub async fn connect(url: &str) -> anyhow::Result<AppConn> {
        let socket = if let Some(path) = url.strip_prefix("redis+unix://") {
            Socket::Unix(UnixStream::connect(path).await.context(url.to_string())?)
        } else {
            let addr = url
                .strip_prefix("redis://")
                .ok_or_else(|| anyhow!("unsupported Redis URL {url}"))?
                .trim_end_matches('/');
            let tcp = TcpStream::connect(addr).await.context(url.to_string())?;
            tcp.set_nodelay(true)?;
            Socket::Tcp(tcp)
        };
        Ok(AppConn {
            socket,
            buf: vec![0; 16 * 1024],
            pos: 0,
            end: 0,
            out: Vec::with_capacity(1024),
        })
    }

    /// `LPUSH list value`: the list's new length.
    pub async fn lpush(&mut self, list: &str, value: &[u8]) -> anyhow::Result<i64> {
        match self.command(&[b"LPUSH", list.as_bytes(), value]).await? {
            Reply::Int(n) => Ok(n),
            other => bail!("LPUSH answered {other:?}"),
        }
    }

    /// `BRPOP list timeout`: the value popped, or `None` when `timeout_secs` passed.
    pub async fn brpop(
        &mut self,
        list: &str,
        timeout_secs: u64,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let timeout = timeout_secs.to_string();
        match self
            .command(&[b"BRPOP", list.as_bytes(), timeout.as_bytes()])
            .await?
        {
            Reply::Array(None) => Ok(None),
            Reply::Array(Some(mut pair)) if pair.len() == 2 => match pair.pop() {
                Some(Reply::Bulk(Some(value))) => Ok(Some(value)),
                other => bail!("BRPOP answered {other:?}"),
            },
            other => bail!("BRPOP answered {other:?}"),
        }
    }

    async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        match &mut self.socket {
            Socket::Tcp(s) => s.write_all(&self.out).await?,
            Socket::Unix(s) => s.write_all(&self.out).await?,
        }
        Box::pin(self.reply()).await
    }

    async fn reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.line().await?;
        let (kind, rest) = line.split_first().ok_or_else(|| anyhow!("empty reply"))?;
        let rest = std::str::from_utf8(rest)?.to_string();
        match kind {
            b'+' => Ok(Reply::Status),
            b'-' => bail!("redis: {rest}"),
            b':' => Ok(Reply::Int(rest.parse()?)),
            b'$' => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)?;
                if len > MAX_REPLY {
                    bail!("a {len}-byte reply");
                }
                self.fill(len + 2).await?;
                let value = self.buf[self.pos..self.pos + len].to_vec();
                self.pos += len + 2;
                Ok(Reply::Bulk(Some(value)))
            }
            b'*' => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::new();
                for _ in 0..len.min(1024) {
                    items.push(Box::pin(self.reply()).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => bail!("unknown reply type {:?}", *kind as char),
        }
    }

    /// The next line, without its `\r\n`.
    async fn line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            let unread = &self.buf[self.pos..self.end];
            if let Some(at) = unread.windows(2).position(|w| w == b"\r\n") {
                let line = unread[..at].to_vec();
                self.pos += at + 2;
                return Ok(line);
            }
            // Lengths and counts are short; an error line ("-ERR …") can be a sentence.
            if unread.len() > MAX_LINE {
                bail!("a reply line over {MAX_LINE} bytes");
            }
            self.read_more().await?;
        }
    }

    /// Reads until `n` unread bytes are buffered.
    async fn fill(&mut self, n: usize) -> anyhow::Result<()> {
        while self.end - self.pos < n {
            self.read_more().await?;
        }
        Ok(())
    }

    /// Reads what the socket has, after moving the unread bytes to the buffer's head
    /// (and growing it when they fill it).
    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let free = &mut self.buf[self.end..];
        let read = match &mut self.socket {
            Socket::Tcp(s) => s.read(free).await?,
            Socket::Unix(s) => s.read(free).await?,
        };
        if read == 0 {
            bail!("redis closed the connection");
        }
        self.end += read;
        Ok(())
    }
}
