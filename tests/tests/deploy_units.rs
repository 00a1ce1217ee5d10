//! What the shipped deployment files rely on, checked without a container engine: the
//! systemd units in `deploy/systemd/` pass `systemd-analyze verify` without a single
//! warning (and score as hardened in `systemd-analyze security`), `rmb-relay
//! --health-check` (the images' health probe) tells a healthy relay from a missing one,
//! over HTTP and TLS, and `rmb key new --out` (the compose example's first-start step)
//! makes a private secret once and never replaces it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::relay_process::{RelayProcess, binaries};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args…` to completion, echoing what it printed.
fn run(program: &Path, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .env_remove("RMB_REDIS")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    eprintln!(
        "$ {} {}\n{}{}-> {}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

/// The units, each copied into a temporary directory with its `ExecStart` binary
/// replaced by the one just built (verify checks that it exists) and a template given
/// an instance (`rmb-relay@.service` as `rmb-relay@8081.service`).
fn unit_copies(dir: &Path) -> Vec<PathBuf> {
    let bins = binaries();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/systemd")).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read unit");
        assert!(
            text.contains("/usr/local/bin/"),
            "{name}: ExecStart is expected under /usr/local/bin"
        );
        let text = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let name = name.replace("@.service", "@8081.service");
        let copy = dir.join(name);
        std::fs::write(&copy, text).expect("write unit copy");
        units.push(copy);
    }
    units.sort();
    assert_eq!(
        units.len(),
        3,
        "rmb-peer, rmb-relay and rmb-relay@: {units:?}"
    );
    units
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

#[test]
fn systemd_units_verify_without_warnings_and_score_as_hardened() {
    let Some(analyze) = systemd_analyze() else {
        println!("SKIPPED: systemd-analyze not found (Debian's systemd package)");
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    for unit in unit_copies(dir.path()) {
        let output = run(&analyze, &["verify", unit.to_str().unwrap()]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "verify {}: {said}", unit.display());
        // verify exits 0 even for unknown keys or bad values: any word from it is a
        // warning about the unit.
        assert!(
            said.trim().is_empty(),
            "verify {} warned: {said}",
            unit.display()
        );

        // The exposure score (0 safest … 10), from the unit file alone.
        let output = run(
            &analyze,
            &["security", "--offline=true", unit.to_str().unwrap()],
        );
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) else {
            println!("systemd-analyze security --offline is not supported here: no score");
            continue;
        };
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score in {line:?}"));
        println!("{}: exposure {score}", unit.display());
        assert!(
            score <= 2.0,
            "{}: exposure {score} above 2.0",
            unit.display()
        );
    }
}

/// Every `rmb-relay` flag a unit passes exists (verify does not run the binary): each
/// unit's `ExecStart` flags appear in `rmb-relay --help` / `rmb-peer --help`.
#[test]
fn unit_flags_exist() {
    let bins = binaries();
    let dir = tempfile::tempdir().expect("temporary directory");
    for unit in unit_copies(dir.path()) {
        let text = std::fs::read_to_string(&unit).unwrap();
        let exec: String = text
            .split("ExecStart=")
            .nth(1)
            .expect("ExecStart")
            .split("\n\n")
            .next()
            .unwrap()
            .lines()
            .take_while(|l| !l.contains('='))
            .collect::<Vec<_>>()
            .join(" ");
        let program = exec.split_whitespace().next().unwrap();
        let help = run(Path::new(program), &["--help"]);
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{}: {program} has no {flag}",
                unit.display()
            );
        }
        assert!(program.starts_with(bins.to_str().unwrap()));
    }
}

#[test]
fn relay_health_check_tells_healthy_from_unreachable() {
    let relay_bin = binaries().join("rmb-relay");
    let relay = RelayProcess::start(&[]);
    let url = format!("{}/health", relay.http_url());
    let output = run(&relay_bin, &["--health-check", &url]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("healthy: {"), "{stdout}");

    // Nothing listening, and a path that is not 200.
    let closed = format!("http://127.0.0.1:{}/health", free_port());
    let output = run(&relay_bin, &["--health-check", &closed]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unhealthy"));
    let missing = format!("{}/no-such-path", relay.http_url());
    let output = run(&relay_bin, &["--health-check", &missing]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("404"));
}

#[test]
fn relay_health_check_over_tls_verifies_the_relay_certificate() {
    let relay_bin = binaries().join("rmb-relay");
    let dir = tempfile::tempdir().expect("temporary directory");
    // A certificate for the relay's public name only, as in production.
    let certified = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()])
        .expect("self-signed certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let relay = RelayProcess::start(&["--tls-cert", cert, "--tls-key", key]);
    let url = format!("https://relay.test:{}/health", relay.port);
    let resolve = format!("relay.test=127.0.0.1:{}", relay.port);

    // Its own name, sent to loopback, its CA trusted: healthy.
    let output = run(
        &relay_bin,
        &[
            "--health-check",
            &url,
            "--resolve",
            &resolve,
            "--relay-ca",
            cert,
        ],
    );
    assert!(output.status.success());
    // The CA not trusted: the certificate is refused, so the check fails.
    let output = run(&relay_bin, &["--health-check", &url, "--resolve", &resolve]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    // The address instead of the name: the certificate is not for it, so not healthy.
    let by_address = format!("https://127.0.0.1:{}/health", relay.port);
    let output = run(
        &relay_bin,
        &["--health-check", &by_address, "--relay-ca", cert],
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn key_new_out_makes_a_private_secret_once() {
    let rmb = binaries().join("rmb");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("twin.mnemonic");
    let out = path.to_str().unwrap();

    let output = run(&rmb, &["key", "new", "--out", out]);
    assert!(output.status.success());
    assert!(output.stdout.is_empty(), "the secret is not printed");
    let first = std::fs::read_to_string(&path).expect("secret written");
    assert_eq!(first.split_whitespace().count(), 12, "{first:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    let output = run(&rmb, &["key", "show", "--mnemonic-file", out]);
    assert!(output.status.success(), "the file is a usable secret");

    // Run again (a container's next start): the same secret, still success.
    let output = run(&rmb, &["key", "new", "--out", out]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("kept"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);

    // A directory that does not exist is an error, not a silent success.
    let nowhere = dir.path().join("missing/twin.mnemonic");
    let output = run(&rmb, &["key", "new", "--out", nowhere.to_str().unwrap()]);
    assert!(!output.status.success());
}
