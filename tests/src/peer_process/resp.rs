//! [`Resp`]: a minimal blocking Redis client speaking raw RESP, the way a local app of
//! the peer would (`LPUSH`, `BRPOP`, `GET`, ...), with no client library in between.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
}

impl Reply {
    /// The bytes of a bulk reply (`None` for nil).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// One connection to a Redis server.
pub struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    /// Connects to `redis://host:port/` (no auth, database 0).
    pub fn connect(url: &str) -> Self {
        let addr = url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        // A generous ceiling so a broken system fails instead of hanging.
        stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
        Resp {
            reader: BufReader::new(stream),
        }
    }

    /// Connects like [`Resp::connect`] but reports failure instead of panicking, with
    /// `timeout` for connecting and for each reply: for clients that must live through
    /// their Redis being killed and restarted (the chaos harness).
    pub fn try_connect(url: &str, timeout: Duration) -> io::Result<Self> {
        let addr = url.trim_start_matches("redis://").trim_end_matches('/');
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(timeout))?;
        Ok(Resp {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply; a Redis error reply panics.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        match self.try_cmd(args) {
            Ok(Reply::Error(e)) => panic!("redis error: {e}"),
            Ok(reply) => reply,
            Err(e) => panic!("redis connection failed: {e}"),
        }
    }

    /// Sends one command and reads its reply; an error reply is returned as
    /// [`Reply::Error`], a broken connection as `Err` (the connection is then unusable).
    pub fn try_cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read()
    }

    /// `LPUSH list value`.
    pub fn lpush(&mut self, list: &str, value: &str) {
        self.cmd(&[b"LPUSH", list.as_bytes(), value.as_bytes()]);
    }

    /// `BRPOP list timeout`: the popped value, or `None` after `timeout_secs`.
    pub fn brpop(&mut self, list: &str, timeout_secs: u64) -> Option<String> {
        match self.cmd(&[
            b"BRPOP",
            list.as_bytes(),
            timeout_secs.to_string().as_bytes(),
        ]) {
            Reply::Array(mut kv) if kv.len() == 2 => {
                let value = kv.pop().and_then(|v| v.bytes().map(<[u8]>::to_vec))?;
                Some(String::from_utf8(value).expect("utf-8 list value"))
            }
            _ => None,
        }
    }

    /// `GET key`.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.cmd(&[b"GET", key.as_bytes()])
            .bytes()
            .map(<[u8]>::to_vec)
    }

    /// `DEL key`.
    pub fn del(&mut self, key: &str) {
        self.cmd(&[b"DEL", key.as_bytes()]);
    }

    /// `TTL key` in seconds (-2: no such key, -1: no expiry).
    pub fn ttl(&mut self, key: &str) -> i64 {
        match self.cmd(&[b"TTL", key.as_bytes()]) {
            Reply::Int(n) => n,
            other => panic!("TTL replied {other:?}"),
        }
    }

    /// `LLEN list`.
    pub fn llen(&mut self, list: &str) -> i64 {
        match self.cmd(&[b"LLEN", list.as_bytes()]) {
            Reply::Int(n) => n,
            other => panic!("LLEN replied {other:?}"),
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        line.truncate(line.trim_end_matches("\r\n").len());
        Ok(line)
    }

    fn read(&mut self) -> io::Result<Reply> {
        let bad = |what: &str, line: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{what} in {line:?}"))
        };
        let line = self.line()?;
        if line.is_empty() {
            return Err(bad("empty line", &line));
        }
        let (kind, rest) = line.split_at(1);
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().map_err(|_| bad("bad integer", &line))?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad("bad bulk length", &line))?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let mut buf = vec![0u8; len as usize + 2];
                io::Read::read_exact(&mut self.reader, &mut buf)?;
                buf.truncate(len as usize);
                Reply::Bulk(buf)
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad("bad array length", &line))?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.read()?);
                }
                Reply::Array(items)
            }
            _ => return Err(bad("unexpected RESP type", &line)),
        })
    }
}
