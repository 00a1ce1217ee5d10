//! [`RpcLoad`]: the RPC workload of a run (the client's sender and reader, the echo bot)
//! as one value, so that the chaos run and the soak (`crate::soak`) drive it the same way
//! and build the same [`Report`] from it.

use super::*;

/// The client app and the echo bot of one run, running in their threads.
pub(crate) struct RpcLoad {
    book: Arc<Mutex<Book>>,
    bot_book: Arc<Mutex<BotBook>>,
    stop_sending: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    bot: Option<JoinHandle<()>>,
    /// When the first request was scheduled: the zero of the crash schedule.
    pub(crate) start: Instant,
}

impl RpcLoad {
    /// Starts the sender (at `config.rate` for `config.duration`), the reader and the bot.
    pub(crate) fn start(net: &Net, config: &Config) -> Self {
        let book = Arc::new(Mutex::new(Book::default()));
        let bot_book = Arc::new(Mutex::new(BotBook::default()));
        let stop_sending = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let sender = spawn_sender(
            net.redis_a.url(),
            net.twin_b,
            config,
            start,
            Arc::clone(&book),
            Arc::clone(&stop_sending),
        );
        let reader = spawn_reader(net.redis_a.url(), Arc::clone(&book), Arc::clone(&stop));
        let bot = spawn_bot(net.redis_b.url(), Arc::clone(&bot_book), Arc::clone(&stop));
        RpcLoad {
            book,
            bot_book,
            stop_sending,
            stop,
            sender: Some(sender),
            reader: Some(reader),
            bot: Some(bot),
            start,
        }
    }

    /// Once the sending time is up: lets a sender behind its schedule (a slow machine, a
    /// Redis restart) go on for [`SENDER_GRACE`] at most, sampling `net` meanwhile, then
    /// stops it. Returns the seconds requests were sent for.
    pub(crate) fn stop_sending(&mut self, net: &mut Net) -> f64 {
        let grace = Instant::now() + SENDER_GRACE;
        while self.sender.as_ref().is_some_and(|s| !s.is_finished()) && Instant::now() < grace {
            net.sample_until(Instant::now() + Duration::from_millis(100));
        }
        self.stop_sending.store(true, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            sender.join().expect("the client's sender panicked");
        }
        self.start.elapsed().as_secs_f64()
    }

    /// Requests pushed so far.
    pub(crate) fn sent(&self) -> usize {
        lock(&self.book).sent.len()
    }

    /// Requests with at least one response.
    pub(crate) fn answered(&self) -> usize {
        lock(&self.book).answered()
    }

    /// Stops the reader and the bot (after the drain).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the client's reader panicked");
        }
        if let Some(bot) = self.bot.take() {
            bot.join().expect("the echo bot panicked");
        }
    }

    /// What every request got, with the peers' counters and what `net` left behind.
    pub(crate) fn report(
        &self,
        net: &mut Net,
        config: &Config,
        send_secs: f64,
        drain_secs: f64,
    ) -> Report {
        let book = lock(&self.book);
        let bots = lock(&self.bot_book);
        let mut report = Report {
            relay: config.relay,
            rate: config.rate,
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
            resent: net.counters.total("resent"),
            duplicates: net.counters.total("duplicates"),
            replayed: net.counters.total("replayed"),
            leftovers: net.leftovers(),
            info: net.info(),
            errors: Vec::new(),
            lost_by_second: Vec::new(),
            crashes: std::mem::take(&mut net.records),
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

impl Drop for RpcLoad {
    /// A run that panics midway still stops its threads.
    fn drop(&mut self) {
        self.stop_sending.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}
