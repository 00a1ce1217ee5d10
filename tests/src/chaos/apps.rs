//! The apps of a chaos run: the client (sender and response reader) on peer A's Redis
//! and the echo bot on peer B's, written so that a restart of *their* Redis never loses
//! or doubles a message (see [`super`]).

use super::*;

/// What the client sent and got.
#[derive(Default)]
pub(crate) struct Book {
    /// Index = the request's `ref`.
    pub(crate) sent: Vec<Sent>,
    /// Responses by `ref`, in arrival order.
    pub(crate) answers: HashMap<u64, Vec<Answer>>,
    pub(crate) strays: u64,
}

pub(crate) struct Sent {
    pub(crate) payload: Vec<u8>,
    /// Scheduled send time, from the first request.
    pub(crate) at: Duration,
}

pub(crate) enum Answer {
    Ok,
    Mismatch,
    Error(String),
}

impl Book {
    pub(crate) fn answered(&self) -> usize {
        self.answers.len()
    }

    /// Files one raw response from `chaos.ret`.
    pub(crate) fn record(&mut self, raw: &[u8]) {
        let Ok(resp) = serde_json::from_slice::<Value>(raw) else {
            self.strays += 1;
            return;
        };
        let Some(n) = resp["ref"].as_str().and_then(|r| r.parse::<u64>().ok()) else {
            self.strays += 1;
            return;
        };
        let Some(sent) = self.sent.get(n as usize) else {
            self.strays += 1;
            return;
        };
        let answer = if resp["err"].is_null() {
            let dat = resp["dat"].as_str().and_then(|d| STANDARD.decode(d).ok());
            if dat.as_deref() == Some(&sent.payload[..]) {
                Answer::Ok
            } else {
                Answer::Mismatch
            }
        } else {
            Answer::Error(format!(
                "code {}: {}",
                resp["err"]["code"],
                resp["err"]["message"].as_str().unwrap_or("?")
            ))
        };
        self.answers.entry(n).or_default().push(answer);
    }
}

/// What the bot handled.
#[derive(Default)]
pub(crate) struct BotBook {
    pub(crate) runs: u64,
    pub(crate) by_uid: HashMap<String, u32>,
    pub(crate) by_payload: HashMap<String, u32>,
    pub(crate) unreadable: u64,
}

impl BotBook {
    pub(crate) fn count(&mut self, req: Option<&Value>) {
        self.runs += 1;
        let Some(req) = req else {
            self.unreadable += 1;
            return;
        };
        let uid = req["ref"].as_str().unwrap_or_default().to_string();
        *self.by_uid.entry(uid).or_default() += 1;
        let dat = req["dat"].as_str().unwrap_or_default().to_string();
        *self.by_payload.entry(dat).or_default() += 1;
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One Redis connection that is redialled on the next command after a failure.
pub(crate) struct Link {
    pub(crate) url: String,
    pub(crate) conn: Option<Resp>,
}

impl Link {
    pub(crate) fn new(url: &str) -> Self {
        Link {
            url: url.to_string(),
            conn: None,
        }
    }

    /// The reply, or why there is none (an error reply keeps the connection; a broken
    /// one is dropped).
    pub(crate) fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        if self.conn.is_none() {
            let conn = Resp::try_connect(&self.url, IO_TIMEOUT).map_err(|e| e.to_string())?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match conn.try_cmd(args) {
            Ok(Reply::Error(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.conn = None;
                Err(e.to_string())
            }
        }
    }

    /// Like [`Link::cmd`], retrying until it works (`None` if `give_up` is set first).
    pub(crate) fn cmd_retrying(&mut self, args: &[&[u8]], give_up: &AtomicBool) -> Option<Reply> {
        loop {
            match self.cmd(args) {
                Ok(reply) => return Some(reply),
                Err(_) if give_up.load(Ordering::SeqCst) => return None,
                Err(_) => std::thread::sleep(RETRY_PAUSE),
            }
        }
    }

    pub(crate) fn int(&mut self, args: &[&[u8]]) -> u64 {
        match self.cmd(args) {
            Ok(Reply::Int(n)) => n.max(0) as u64,
            _ => 0,
        }
    }

    pub(crate) fn count_keys(&mut self, pattern: &str) -> u64 {
        match self.cmd(&[b"KEYS", pattern.as_bytes()]) {
            Ok(Reply::Array(keys)) => keys.len() as u64,
            _ => 0,
        }
    }
}

/// The client's sending side: one request every `1 / rate` seconds, each pushed exactly
/// once however often its Redis restarts.
pub(crate) fn spawn_sender(
    url: String,
    twin_b: u32,
    config: &Config,
    start: Instant,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let (rate, duration, exp) = (config.rate.max(1), config.duration, config.exp);
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    std::thread::spawn(move || {
        let mut link = Link::new(&url);
        for n in 0u64.. {
            let at = Duration::from_secs_f64(n as f64 / f64::from(rate));
            if at >= duration || stop.load(Ordering::SeqCst) {
                break;
            }
            if let Some(wait) = (start + at).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let payload = format!("req-{n}-{nonce:016x}");
            let request = json!({
                "ver": 1, "ref": n.to_string(), "cmd": COMMAND, "exp": exp,
                "dat": STANDARD.encode(&payload), "tag": null, "dst": [twin_b],
                "ret": RET, "shm": null, "now": unix_now(),
            })
            .to_string();
            lock(&book).sent.push(Sent {
                payload: payload.into_bytes(),
                at,
            });
            let n_text = n.to_string();
            let args: [&[u8]; 7] = [
                b"EVAL",
                PUSH_ONCE.as_bytes(),
                b"2",
                PUSHED.as_bytes(),
                LOCAL.as_bytes(),
                n_text.as_bytes(),
                request.as_bytes(),
            ];
            // Retried until Redis takes it: the script makes a second push a no-op.
            let never = AtomicBool::new(false);
            link.cmd_retrying(&args, &never);
        }
    })
}

/// The client's receiving side: files every response of `chaos.ret`.
pub(crate) fn spawn_reader(
    url: String,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        consume(
            &url,
            (RET, RET_INFLIGHT),
            &stop,
            |item| lock(&book).record(item),
            |link, item| {
                link.cmd(&[b"LREM", RET_INFLIGHT.as_bytes(), b"1", item])
                    .map(drop)
            },
        )
    })
}

/// The echo bot: answers every request of `msgbus.chaos.echo` with its own payload.
pub(crate) fn spawn_bot(
    url: String,
    book: Arc<Mutex<BotBook>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        consume(
            &url,
            (BOT_QUEUE, BOT_INFLIGHT),
            &stop,
            |item| lock(&book).count(serde_json::from_slice(item).ok().as_ref()),
            answer,
        )
    })
}

/// Takes the items of `queue` one by one, never losing or doubling one across a Redis
/// restart: each is moved to `inflight` (`BLMOVE`), handed to `take` once, then `finish`
/// must remove it from `inflight`. After a failure, what `inflight` still holds is
/// finished first; the item being finished when it failed is not taken a second time.
/// Items are taken from the right (lists the peer fills with `LPUSH`).
pub(crate) fn consume(
    url: &str,
    lists: (&str, &str),
    stop: &AtomicBool,
    take: impl FnMut(&[u8]),
    finish: impl FnMut(&mut Link, &[u8]) -> Result<(), String>,
) {
    consume_from(url, lists, b"RIGHT", stop, take, finish)
}

/// [`consume`], taking items from `side` (`LEFT` for lists filled with `RPUSH`, oldest
/// first).
pub(crate) fn consume_from(
    url: &str,
    (queue, inflight): (&str, &str),
    side: &[u8],
    stop: &AtomicBool,
    mut take: impl FnMut(&[u8]),
    mut finish: impl FnMut(&mut Link, &[u8]) -> Result<(), String>,
) {
    let mut link = Link::new(url);
    // The item taken but maybe not yet finished.
    let mut taken: Option<Vec<u8>> = None;
    let mut recover = true;
    while !stop.load(Ordering::SeqCst) {
        if recover {
            let Ok(Reply::Array(items)) = link.cmd(&[b"LRANGE", inflight.as_bytes(), b"0", b"-1"])
            else {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            };
            let mut done = true;
            for item in items.iter().filter_map(Reply::bytes) {
                if taken.as_deref() != Some(item) {
                    take(item);
                    taken = Some(item.to_vec());
                }
                if finish(&mut link, item).is_err() {
                    done = false;
                    break;
                }
                taken = None;
            }
            if !done {
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            recover = false;
        }
        match link.cmd(&[
            b"BLMOVE",
            queue.as_bytes(),
            inflight.as_bytes(),
            side,
            b"LEFT",
            BLOCK_SECS.as_bytes(),
        ]) {
            Ok(Reply::Bulk(item)) => {
                take(&item);
                taken = Some(item);
                if finish(&mut link, taken.as_deref().expect("just set")).is_ok() {
                    taken = None;
                } else {
                    recover = true;
                }
            }
            Ok(_) => {}
            Err(_) => {
                recover = true;
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// Replies to one request of the bot's in-flight list and removes it from there, in one
/// script (an unreadable request is only removed).
pub(crate) fn answer(link: &mut Link, item: &[u8]) -> Result<(), String> {
    let Ok(req) = serde_json::from_slice::<Value>(item) else {
        return link
            .cmd(&[b"LREM", BOT_INFLIGHT.as_bytes(), b"1", item])
            .map(drop);
    };
    let reply = json!({
        "ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"],
        "shm": null, "now": 0, "err": null,
    })
    .to_string();
    link.cmd(&[
        b"EVAL",
        REPLY_ONCE.as_bytes(),
        b"2",
        BOT_INFLIGHT.as_bytes(),
        REPLY.as_bytes(),
        item,
        reply.as_bytes(),
    ])
    .map(drop)
}
