//! Unit tests of the connection state machine: time is an input, so losses, reordering,
//! windows and timers are driven step by step.

use super::*;

#[test]
fn ranges_of_a_wrapped_buffer_copy_out_whole() {
    let mut deque: VecDeque<u8> = VecDeque::with_capacity(8);
    deque.extend(0..8u8);
    deque.drain(..5);
    deque.extend(8..13u8); // wraps: front [5, 6, 7], back [8..13]
    let all: Vec<u8> = deque.iter().copied().collect();
    for start in 0..=all.len() {
        for len in 0..=all.len() - start {
            assert_eq!(
                copy_range(&deque, start, len),
                all[start..start + len],
                "{start}+{len}"
            );
        }
    }
}

fn cfg() -> Config {
    Config {
        window: 64 << 10,
        send_buffer: 64 << 10,
        max_frame: 4096,
        ..Config::default()
    }
}

/// Moves frames between two states; `lose(i)` drops the i-th frame sent.
struct Pair {
    a: State,
    b: State,
    now: Instant,
    sent: usize,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        Pair {
            a: State::new(cfg(), now, cfg().window),
            b: State::new(cfg(), now, cfg().window),
            now,
            sent: 0,
        }
    }

    /// One round: each side's frames reach the other (minus losses, maybe reversed).
    fn round(&mut self, lose: &dyn Fn(usize) -> bool, reverse: bool) {
        let mut to_b = Vec::new();
        while let Some(f) = self.a.poll_transmit(self.now) {
            self.sent += 1;
            if !lose(self.sent) {
                to_b.push(f);
            }
        }
        let mut to_a = Vec::new();
        while let Some(f) = self.b.poll_transmit(self.now) {
            self.sent += 1;
            if !lose(self.sent) {
                to_a.push(f);
            }
        }
        if reverse {
            to_b.reverse();
        }
        for f in to_b {
            self.b.on_frame(self.now, f);
        }
        for f in to_a {
            self.a.on_frame(self.now, f);
        }
        self.now += Duration::from_millis(10);
        self.a.on_timeout(self.now);
        self.b.on_timeout(self.now);
    }
}

fn transfer(lose: &dyn Fn(usize) -> bool, reverse: bool) -> Stats {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut p = Pair::new();
    let (mut written, mut got) = (0, Vec::new());
    let mut buf = vec![0u8; 10_000];
    for _ in 0..100_000 {
        if written < data.len() {
            written += p.a.write(&data[written..]).unwrap();
            if written == data.len() {
                p.a.finish();
            }
        }
        p.round(lose, reverse);
        while let Read::Data(n) = p.b.read(&mut buf).unwrap() {
            got.extend_from_slice(&buf[..n]);
        }
        if p.b.read(&mut buf).unwrap() == Read::End && p.a.finish_acked() {
            break;
        }
    }
    assert!(p.a.finish_acked(), "{:?}\n{:?}", p.a, p.b);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes arrived changed");
    p.a.stats()
}

#[test]
fn a_stream_arrives_whole_without_loss() {
    let stats = transfer(&|_| false, false);
    assert_eq!(stats.timeouts, 0);
    assert_eq!(stats.bytes_sent, 300_000);
}

#[test]
fn lost_and_reordered_frames_are_sent_again_in_order() {
    // About one frame in seven lost, pseudo-randomly (a fixed period could lose
    // the same retransmission every time).
    let lose = |i: usize| {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (x >> 29).is_multiple_of(7)
    };
    let stats = transfer(&lose, true);
    assert!(stats.timeouts > 0);
    assert!(stats.bytes_sent > 300_000, "some bytes were sent twice");
}

#[test]
fn a_reader_that_does_not_read_bounds_what_is_in_flight() {
    let mut p = Pair::new();
    let chunk = vec![1u8; 32 << 10];
    for _ in 0..200 {
        let _ = p.a.write(&chunk).unwrap();
        p.round(&|_| false, false);
    }
    // Window (64 KiB) at the reader, send buffer (64 KiB) at the writer: no more.
    assert_eq!(p.b.readable(), 64 << 10);
    assert_eq!(p.a.write(&chunk).unwrap(), 0);
    // Reading frees the window and data flows again.
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(p.b.read(&mut buf).unwrap(), Read::Data(64 << 10));
    for _ in 0..5 {
        p.round(&|_| false, false);
    }
    assert_eq!(p.b.readable(), 64 << 10);
    assert!(p.a.write(&chunk).unwrap() > 0);
}

#[test]
fn a_lost_window_update_is_recovered_by_probes() {
    let mut p = Pair::new();
    let chunk = vec![1u8; 64 << 10];
    assert_eq!(p.a.write(&chunk).unwrap(), 64 << 10);
    for _ in 0..20 {
        p.round(&|_| false, false);
    }
    // The reader's window is full; the writer queues more, which must wait.
    assert_eq!(p.a.write(&chunk).unwrap(), 64 << 10);
    p.round(&|_| false, false);
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(p.b.read(&mut buf).unwrap(), Read::Data(64 << 10));
    // Every frame lost for a while (the window update among them).
    for _ in 0..20 {
        p.round(&|_| true, false);
    }
    for _ in 0..1000 {
        p.round(&|_| false, false);
        if p.b.readable() == 64 << 10 {
            break;
        }
    }
    assert_eq!(p.b.readable(), 64 << 10);
}

#[test]
fn half_close_then_close_is_seen_by_both_sides() {
    let mut p = Pair::new();
    p.a.write(b"question").unwrap();
    p.a.finish();
    for _ in 0..3 {
        p.round(&|_| false, false);
    }
    let mut buf = [0u8; 64];
    assert_eq!(p.b.read(&mut buf).unwrap(), Read::Data(8));
    assert_eq!(p.b.read(&mut buf).unwrap(), Read::End);
    assert!(p.a.finish_acked());
    // B still writes after A's half-close.
    p.b.write(b"answer").unwrap();
    p.b.finish();
    for _ in 0..3 {
        p.round(&|_| false, false);
    }
    assert_eq!(p.a.read(&mut buf).unwrap(), Read::Data(6));
    assert_eq!(p.a.read(&mut buf).unwrap(), Read::End);
    assert!(p.a.is_closed() && p.b.is_closed());
    p.a.detach();
    p.b.detach();
    assert!(!p.a.is_done(p.now));
    p.now += Duration::from_secs(3);
    assert!(p.a.is_done(p.now) && p.b.is_done(p.now));
}

#[test]
fn dropping_an_unfinished_connection_resets_the_peer() {
    let mut p = Pair::new();
    p.b.write(b"more to come").unwrap();
    p.round(&|_| false, false);
    p.a.detach();
    p.round(&|_| false, false);
    assert_eq!(p.a.error(), Some(&StreamError::Closed));
    assert_eq!(
        p.b.write(b"x"),
        Err(StreamError::Reset { code: CODE_CLOSED })
    );
    assert!(p.a.is_done(p.now));
}

#[test]
fn a_silent_peer_is_declared_dead_after_the_idle_timeout() {
    let mut p = Pair::new();
    let idle = p.a.config().idle_timeout;
    let start = p.now;
    let mut probes = 0;
    while p.a.error().is_none() {
        let next = p.a.poll_timeout().unwrap();
        assert!(next >= p.now);
        p.now = next;
        p.a.on_timeout(p.now);
        while p.a.poll_transmit(p.now).is_some() {
            probes += 1;
        }
    }
    assert!(probes >= 3, "probes were sent while waiting ({probes})");
    assert!(matches!(p.a.error(), Some(StreamError::TimedOut(d)) if *d >= idle));
    assert_eq!(p.now - start, idle);
}

#[test]
fn hostile_frames_reset_instead_of_growing_buffers() {
    let mut p = Pair::new();
    let beyond = Frame {
        flags: wire::DATA,
        offset: 0,
        data: vec![0; (64 << 10) + 1],
        ..Frame::default()
    };
    p.b.on_frame(p.now, beyond);
    assert_eq!(p.b.error(), Some(&StreamError::Protocol));
    let mut q = Pair::new();
    q.b.on_frame(
        q.now,
        Frame {
            flags: wire::DATA | wire::FIN,
            offset: 10,
            ..Frame::default()
        },
    );
    q.b.on_frame(
        q.now,
        Frame {
            flags: wire::DATA | wire::FIN,
            offset: 5,
            ..Frame::default()
        },
    );
    assert_eq!(q.b.error(), Some(&StreamError::Protocol));
    // An ack for bytes never sent is ignored.
    let mut r = Pair::new();
    r.a.write(b"abc").unwrap();
    r.a.on_frame(
        r.now,
        Frame {
            ack: 1000,
            ..Frame::default()
        },
    );
    assert!(r.a.poll_transmit(r.now).is_some_and(|f| f.data == b"abc"));
}
