//! [`RpcLoad`]: the client app and the echo bot of a run, started on two peers' Redis
//! servers, and the accounting of what every request got. [`super::run`] drives it
//! through crashes; the fault runs of [`crate::faults`] through network faults.

use super::*;

/// A client sending at a fixed rate on one Redis and an echo bot on another; stopped
/// (threads joined) by [`RpcLoad::finish`].
pub struct RpcLoad {
    book: Arc<Mutex<Book>>,
    bot_book: Arc<Mutex<BotBook>>,
    stop_sending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    reader: JoinHandle<()>,
    bot: JoinHandle<()>,
    start: Instant,
    urls: (String, String),
}

impl RpcLoad {
    /// Starts the client on `url_a` (requests to `twin_b`, `config.rate` per second for
    /// `config.duration`, `exp` = `config.exp`) and the bot on `url_b`.
    pub fn start(url_a: &str, url_b: &str, twin_b: u32, config: &Config) -> RpcLoad {
        let book = Arc::new(Mutex::new(Book::default()));
        let bot_book = Arc::new(Mutex::new(BotBook::default()));
        let stop_sending = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let sender = spawn_sender(
            url_a.to_string(),
            twin_b,
            config,
            start,
            Arc::clone(&book),
            Arc::clone(&stop_sending),
        );
        let reader = spawn_reader(url_a.to_string(), Arc::clone(&book), Arc::clone(&stop));
        let bot = spawn_bot(url_b.to_string(), Arc::clone(&bot_book), Arc::clone(&stop));
        RpcLoad {
            book,
            bot_book,
            stop_sending,
            stop,
            sender: Some(sender),
            reader,
            bot,
            start,
            urls: (url_a.to_string(), url_b.to_string()),
        }
    }

    /// When the first request was due.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Whether the sender has sent its whole schedule.
    pub fn sender_finished(&self) -> bool {
        self.sender.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the sender (what it has not sent yet is never sent); the requests sent.
    pub fn stop_sending(&mut self) -> usize {
        self.stop_sending.store(true, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            sender.join().expect("the client's sender panicked");
        }
        self.sent()
    }

    /// Requests sent so far.
    pub fn sent(&self) -> usize {
        lock(&self.book).sent.len()
    }

    /// Requests with at least one response so far.
    pub fn answered(&self) -> usize {
        lock(&self.book).answered()
    }

    /// Stops the client's reader and the bot and counts: every request's first answer,
    /// answers beyond the first, handler runs, leftovers in both Redis servers. The
    /// peers' counters, `info` and `crashes` are left for the caller.
    pub fn finish(
        mut self,
        relay: RelayMode,
        rate: u32,
        send_secs: f64,
        drain_secs: f64,
    ) -> Report {
        self.stop_sending();
        self.stop.store(true, Ordering::SeqCst);
        self.reader.join().expect("the client's reader panicked");
        self.bot.join().expect("the echo bot panicked");
        let book = lock(&self.book);
        let bots = lock(&self.bot_book);
        let mut report = Report {
            relay,
            rate,
            send_secs,
            drain_secs,
            sent: book.sent.len() as u64,
            ok: 0,
            error: 0,
            mismatched: 0,
            lost: 0,
            duplicated: 0,
            strays: book.strays,
            handler_runs: bots.runs,
            handled_twice: bots.by_uid.values().filter(|n| **n > 1).count() as u64,
            payloads_handled_twice: bots.by_payload.values().filter(|n| **n > 1).count() as u64,
            bot_unreadable: bots.unreadable,
            resent: 0,
            duplicates: 0,
            replayed: 0,
            leftovers: leftovers(&self.urls.0, &self.urls.1),
            info: Vec::new(),
            errors: Vec::new(),
            lost_by_second: Vec::new(),
            crashes: Vec::new(),
        };
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut lost_by_second: BTreeMap<u64, u64> = BTreeMap::new();
        for (n, sent) in book.sent.iter().enumerate() {
            let answers = book.answers.get(&(n as u64)).map_or(&[][..], Vec::as_slice);
            match answers.first() {
                None => {
                    report.lost += 1;
                    *lost_by_second.entry(sent.at.as_secs()).or_default() += 1;
                }
                Some(Answer::Ok) => report.ok += 1,
                Some(Answer::Mismatch) => {
                    report.error += 1;
                    report.mismatched += 1;
                }
                Some(Answer::Error(_)) => report.error += 1,
            }
            report.duplicated += answers.len().saturating_sub(1) as u64;
            for answer in answers {
                if let Answer::Error(text) = answer {
                    *errors.entry(text.clone()).or_default() += 1;
                }
            }
        }
        report.errors = errors.into_iter().collect();
        report.errors.sort_by_key(|e| std::cmp::Reverse(e.1));
        report.lost_by_second = lost_by_second.into_iter().collect();
        report
    }
}

/// Lists and key sets of the client's Redis (`url_a`) and the bot's (`url_b`) that
/// must be empty once every request is answered.
pub fn leftovers(url_a: &str, url_b: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, url, own) in [
        ("A", url_a, [RET, RET_INFLIGHT]),
        ("B", url_b, [BOT_QUEUE, BOT_INFLIGHT]),
    ] {
        let mut link = Link::new(url);
        let lists = [
            LOCAL,
            "msgbus.system.local.claimed",
            REPLY,
            "msgbus.system.reply.claimed",
        ];
        for list in lists.into_iter().chain(own) {
            let n = link.int(&[b"LLEN", list.as_bytes()]);
            out.push((format!("{name}:{list}"), n));
        }
        let n = link.count_keys("msgbus.outbox.*");
        out.push((format!("{name}:msgbus.outbox.* keys"), n));
    }
    out
}
