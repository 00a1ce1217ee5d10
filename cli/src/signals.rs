//! Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP all mean "clean up and exit".

/// Resolves at the first SIGINT, SIGTERM or SIGHUP.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("install a SIGHUP handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hangup.recv() => {}
    }
}
