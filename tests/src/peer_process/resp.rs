//! [`Resp`]: a minimal blocking Redis client speaking raw RESP, the way a local app of
//! the peer would (`LPUSH`, `BRPOP`, `GET`, ...), with no client library in between.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
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

    /// Sends one command and reads its reply; a Redis error reply panics.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&out)
            .expect("write to redis");
        match self.read() {
            Reply::Error(e) => panic!("redis error: {e}"),
            reply => reply,
        }
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

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from redis");
        assert!(n > 0, "redis closed the connection");
        line.truncate(line.trim_end_matches("\r\n").len());
        line
    }

    fn read(&mut self) -> Reply {
        let line = self.line();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(rest.parse().expect("integer reply")),
            "$" => {
                let len: i64 = rest.parse().expect("bulk length");
                if len < 0 {
                    return Reply::Nil;
                }
                let mut buf = vec![0u8; len as usize + 2];
                std::io::Read::read_exact(&mut self.reader, &mut buf).expect("read bulk");
                buf.truncate(len as usize);
                Reply::Bulk(buf)
            }
            "*" => {
                let len: i64 = rest.parse().expect("array length");
                if len < 0 {
                    return Reply::Nil;
                }
                Reply::Array((0..len).map(|_| self.read()).collect())
            }
            other => panic!("unexpected RESP type {other:?} in {line:?}"),
        }
    }
}
