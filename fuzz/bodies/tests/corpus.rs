//! Runs every fuzz target's body (rmb-fuzz-bodies) over its checked-in seeds
//! (fuzz/seeds/<target>/), every input that once crashed it (fuzz/regressions/<target>/)
//! and deterministic mutations of both, with allocations counted: the short,
//! stable-Rust run of the fuzz targets that `cargo test --workspace` includes.
//!
//! `RMB_FUZZ_MUTATIONS` (default 10 000) sets the mutations per target.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rmb_fuzz_bodies::alloc::Counting;
use rmb_fuzz_bodies::mutate::{Rng, mutate};
use rmb_fuzz_bodies::{Body, TARGETS, seeds};

#[global_allocator]
static COUNTING: Counting = Counting;

/// Mutations per target unless `RMB_FUZZ_MUTATIONS` says otherwise.
const DEFAULT_MUTATIONS: usize = 10_000;

/// One target at a time: the allocation counters are process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The files of `dir`, sorted by name (none if it does not exist).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("reading a corpus folder").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("reading a corpus file");
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

fn mutations() -> usize {
    std::env::var("RMB_FUZZ_MUTATIONS")
        .ok()
        .map(|v| v.parse().expect("RMB_FUZZ_MUTATIONS is a number"))
        .unwrap_or(DEFAULT_MUTATIONS)
}

/// Runs `target` over its seeds, its regressions and mutations of them; a failing
/// input is written to target/fuzz-failures/ so it can be replayed and kept.
fn run(target: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let body: Body = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target")
        .1;
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{target}");
    let mut inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    inputs.extend(
        files(&fuzz_dir().join("regressions").join(target))
            .into_iter()
            .map(|(_, b)| b),
    );
    for input in &inputs {
        check(target, body, input);
    }
    let mut rng = Rng::new(
        target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into())),
    );
    for _ in 0..mutations() {
        let input = &inputs[rng.below(inputs.len())];
        let other = &inputs[rng.below(inputs.len())];
        let mutated = mutate(&mut rng, input, other);
        check(target, body, &mutated);
    }
}

fn check(target: &str, body: Body, input: &[u8]) {
    let result = std::panic::catch_unwind(|| body(input));
    if let Err(panic) = result {
        let dir = fuzz_dir().join("../target/fuzz-failures").join(target);
        std::fs::create_dir_all(&dir).expect("creating the failures folder");
        let path = dir.join(format!(
            "input-{:016x}",
            input
                .iter()
                .fold(0u64, |h, &b| h.wrapping_mul(131).wrapping_add(b.into()))
        ));
        std::fs::write(&path, input).expect("writing the failing input");
        std::panic::resume_unwind(Box::new(format!(
            "{target} failed on {}: {panic:?}",
            path.display()
        )));
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_run_here() {
            let here = [$(stringify!($name)),*];
            let all: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
            assert_eq!(here.to_vec(), all);
        }
    };
}

targets!(
    envelope_decode,
    jwt_parse,
    e2e_open,
    redis_request,
    redis_reply,
    redis_documents,
    http_bodies,
    topic_wire,
    conn_wire,
    pipe_frames,
    federation_batch,
    replica_frames,
    registry_bodies,
    personal_bodies,
);

/// Writes the seeds (made with the project's encoders, plus the reference captures) to
/// fuzz/seeds/. Run by hand when a format changes:
/// `cargo test -p rmb-fuzz-bodies --test corpus -- --ignored write_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand"]
fn write_seeds() {
    let reference = fuzz_dir().join("../../shared/reference");
    let mut all = seeds::made();
    all.extend(seeds::reference(&reference));
    for (target, name, bytes) in all {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
