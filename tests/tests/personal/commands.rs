//! PMB's `watch`, `sink` and `openurl --html` as `rmb watch`, `rmb sink` and
//! `rmb open --html`, each run as a person runs them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::RelayProcess;

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_notifies_when_a_process_exits_or_a_file_settles() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let alice_listener = form_group(&alice, &[&bob], dir.path());
    let a = alice.twin.to_string();

    // A process that is not rmb's child (and is left unreaped, a zombie, for a while).
    let mut sleeper = Command::new("sleep").arg("2").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let started = Instant::now();
    let watched = bob.rmb(&["watch"], &["--pid", &pid, "--to", &a], "");
    let took = started.elapsed();
    assert!(watched.status.success(), "{}", text(&watched.stderr));
    assert!(
        took >= Duration::from_millis(1500),
        "returned after {took:?}"
    );
    let line = alice_listener.expect_line(&format!("process {pid} (sleep) exited"));
    assert!(line.contains("rmb watch: "), "{line}");
    sleeper.wait().unwrap();
    let gone = bob.rmb(&["watch"], &["--pid", &pid, "--to", &a], "");
    assert!(!gone.status.success());
    assert!(text(&gone.stderr).contains(&format!("no process {pid} is running")));

    // A file written for 2 s settles 1 s after its last write, not before.
    let file = dir.path().join("download.iso");
    std::fs::write(&file, b"start\n").unwrap();
    let writing = {
        let file = file.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
            for i in 0..20 {
                writeln!(f, "chunk {i}").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            Instant::now()
        })
    };
    let watched = bob.rmb(
        &["watch"],
        &[
            "--file",
            file.to_str().unwrap(),
            "--quiet-for",
            "1",
            "-m",
            "download done",
            "--to",
            &a,
        ],
        "",
    );
    let finished = Instant::now();
    let last_write = writing.join().unwrap();
    assert!(watched.status.success(), "{}", text(&watched.stderr));
    assert!(
        finished >= last_write + Duration::from_millis(900),
        "settled {:?} before the last write ended",
        last_write.saturating_duration_since(finished)
    );
    assert!(text(&watched.stderr).contains("stopped changing"));
    alice_listener.expect_line("rmb watch: download done");
}

/// Reads lines from the named pipe `fifo` until `n` came, then closes it.
fn read_fifo(fifo: &std::path::Path, n: usize) -> mpsc::Receiver<Vec<String>> {
    let (tx, rx) = mpsc::channel();
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let reader = BufReader::new(std::fs::File::open(fifo).unwrap());
        let lines: Vec<String> = reader.lines().take(n).map(Result::unwrap).collect();
        let _ = tx.send(lines);
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_writes_a_topic_into_a_named_pipe_across_readers_and_into_a_file() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("app-log");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let first = read_fifo(&fifo, 2);
    // A bare name is an own topic, created by the sink.
    let _sink = alice.background(
        &["sink"],
        &[fifo.to_str().unwrap(), "--topic", "logs", "--from-start"],
    );
    let publish = |text: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = run(
                &["pub", "--http", &alice.http, "logs", text].map(String::from),
                "",
            );
            if out.status.success() {
                return;
            }
            // The sink may not have created the topic yet.
            assert!(Instant::now() < deadline, "cannot publish to logs");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    publish("one");
    publish("two");
    let got = first
        .recv_timeout(WAIT)
        .expect("nothing read from the pipe");
    assert_eq!(got, ["one", "two"]);
    // The reader went away; a message published now waits for the next reader.
    publish("three");
    std::thread::sleep(Duration::from_millis(500));
    let second = read_fifo(&fifo, 1);
    let got = second
        .recv_timeout(WAIT)
        .expect("the next reader got nothing");
    assert_eq!(got, ["three"]);

    // Into a file: every stored message, appended.
    let file = dir.path().join("collected.log");
    let _file_sink = alice.background(
        &["sink"],
        &[file.to_str().unwrap(), "--topic", "logs", "--from-start"],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text == "one\ntwo\nthree\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the file holds {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A sink waiting for a reader that never comes still stops at once on Ctrl-C.
    let lonely = dir.path().join("nobody-reads");
    assert!(
        Command::new("mkfifo")
            .arg(&lonely)
            .status()
            .unwrap()
            .success()
    );
    let mut waiting = alice.background(
        &["sink"],
        &[lonely.to_str().unwrap(), "--topic", "logs", "--from-start"],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(waiting.exited().is_none());
    let stopping = Instant::now();
    waiting.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        stopping.elapsed()
    );
    assert!(waiting.exited().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_html_writes_a_private_page_and_opens_it() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let _owner = form_group(&alice, &[&bob], dir.path());
    let b = bob.twin.to_string();
    let pages = dir.path().join("pages");
    let page = "<html><body><h1>Report ✓</h1></body></html>\n";

    // No browser (headless, no --opener): the page is kept, and the sender told where.
    let clipboard = dir.path().join("bob-clipboard");
    let headless = bob.background(
        &["listen"],
        &[
            "--clipboard-file",
            clipboard.to_str().unwrap(),
            "--page-dir",
            pages.to_str().unwrap(),
        ],
    );
    let sent = alice.rmb(&["open"], &["--html", "--to", &b], page);
    let err = text(&sent.stderr);
    assert!(sent.status.success(), "{err}");
    let kept = err
        .split("kept in ")
        .nth(1)
        .and_then(|rest| rest.split(" (no browser there)").next())
        .unwrap_or_else(|| panic!("{err}"))
        .to_string();
    assert!(kept.starts_with(pages.to_str().unwrap()), "{kept}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), page);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pages), 0o700);
    assert_eq!(mode(std::path::Path::new(&kept)), 0o600);
    headless.expect_line(&format!(
        "[page] twin {}: {} bytes in {kept}",
        alice.twin,
        page.len()
    ));
    drop(headless);

    // With a browser: the opener gets the page's file (and a link's URL).
    let browser = dir.path().join("browser.sh");
    let seen = dir.path().join("seen");
    std::fs::write(
        &browser,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {seen}\ncase \"$1\" in /*) cat \"$1\" >> {seen};; esac\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _listener = bob.background(
        &["listen"],
        &[
            "--clipboard-file",
            clipboard.to_str().unwrap(),
            "--page-dir",
            pages.to_str().unwrap(),
            "--opener",
            browser.to_str().unwrap(),
        ],
    );
    let file = dir.path().join("report.html");
    std::fs::write(&file, page).unwrap();
    let sent = alice.rmb(
        &["open"],
        &["--html", file.to_str().unwrap(), "--to", &b],
        "",
    );
    let err = text(&sent.stderr);
    assert!(sent.status.success(), "{err}");
    assert!(err.contains("opened in the browser ("), "{err}");
    let opened = std::fs::read_to_string(&seen).unwrap();
    let (path, content) = opened.split_once('\n').unwrap();
    assert!(path.starts_with(pages.to_str().unwrap()), "{path}");
    assert_eq!(content, page);
    let link = alice.rmb(&["open"], &["https://example.com/r?1", "--to", &b], "");
    assert!(text(&link.stderr).contains("opened in the browser"));
    assert!(
        std::fs::read_to_string(&seen)
            .unwrap()
            .ends_with("https://example.com/r?1\n")
    );

    // Too large a page is refused by the sender.
    let big = "x".repeat(1024 * 1024 + 1);
    let refused = alice.rmb(&["open"], &["--html", "--to", &b], &big);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("limited to 1048576 bytes"));
}
