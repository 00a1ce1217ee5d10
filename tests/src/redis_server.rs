//! [`RedisServer`]: a private `redis-server` for one test, on a free loopback port.
//!
//! Tests never touch a Redis they did not start (and so never flush someone's data).
//! The server keeps its files in a temporary directory removed with it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

impl RedisServer {
    /// Starts a server that persists nothing (fast; for tests that never restart it).
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server with append-only persistence, fsync on every write, so that a
    /// restart ([`RedisServer::restart`]) keeps every acknowledged write.
    pub fn start_durable() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    /// Starts a server that persists nothing and also listens on `also` (an address of
    /// this host, e.g. the private bridge of a fault run's network namespaces, whose
    /// clients are not on loopback: protected mode is off).
    pub fn start_also_on(also: &str) -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--bind",
            "127.0.0.1",
            also,
        ])
    }

    /// Starts a server with append-only persistence written at every command and
    /// fsynced every second: a SIGKILL of the server loses nothing it acknowledged (the
    /// write reached the kernel before the reply), only a crash of the machine could.
    /// Many times faster than [`RedisServer::start_durable`] for apps writing one item
    /// at a time (the soak's, at hundreds a second).
    pub fn start_persistent() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
    }

    fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        std::fs::write(dir.path().join("options"), options.join("\n")).expect("write options");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let options = std::fs::read_to_string(self.dir.path().join("options")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(options.split('\n').filter(|_| !options.is_empty()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (tests/run.sh installs it)");
        self.child = Some(child);
        wait_for_ping(self.port, self.dir.path());
    }

    /// Its port (on every address it listens on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Its process id, while it runs (the soak samples its memory and open files).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again after [`RedisServer::kill`], on the same port and directory (a
    /// durable server reloads its data); waits until it answers. Does nothing if it runs.
    pub fn relaunch(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Sends one inline command (words without spaces, e.g. `["TTL", "key"]`) and returns
    /// the raw reply line (`:42`, `+OK`, `-ERR …`): lets a test look at or change what a
    /// program keeps in its Redis without a client library.
    pub fn inline(&self, words: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream
            .write_all(format!("{}\r\n", words.join(" ")).as_bytes())
            .expect("send to redis");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => reply.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&reply).trim_end().to_string()
    }

    /// Kills the server (SIGKILL: nothing is flushed) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILLs the server (nothing is flushed) and leaves it down until
    /// [`RedisServer::relaunch`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Longest wait for a (re)started server to answer: a durable one reloads its data first,
/// which takes seconds after an hour of writes (the soak).
const START_LIMIT: Duration = Duration::from_secs(30);

fn wait_for_ping(port: u16, dir: &Path) {
    let deadline = Instant::now() + START_LIMIT;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 16];
            if stream.write_all(b"PING\r\n").is_ok()
                && matches!(stream.read(&mut reply), Ok(n) if reply[..n].starts_with(b"+PONG"))
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "redis-server on port {port} (dir {}) did not answer PING",
        dir.display()
    );
}
