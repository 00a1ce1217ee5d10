//! The async runtime a peer runs on, sized by `--threads`.
//!
//! One place for what `rmb-peer` and the benches that run peers in process build, so
//! that a thread count means the same in both.

/// A multi-threaded runtime with `threads` worker threads; 0 gives tokio's default (one
/// per CPU core, or TOKIO_WORKER_THREADS when set). Fewer threads suit a machine shared
/// with other busy services, where threads waking each other for every message cost
/// more than the extra cores give.
pub fn build(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(usize::from(threads));
    }
    builder.enable_all().build()
}
