//! Connections to a twin behind a real NAT (Linux network namespaces, nftables
//! masquerade): runs `tests/nat/connections-nat.sh` with the workspace's binaries. The
//! script prints why and exits 77 where namespaces cannot be created (not root, no
//! netns support); the test then reports the skip and passes.

use std::process::Command;

use rmb_testsupport::relay_process::binaries;

#[test]
fn a_twin_outside_calls_and_forwards_into_a_nat_that_blocks_direct_tcp() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/nat/connections-nat.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("RMB_BIN_DIR", binaries())
        .output()
        .expect("run the NAT script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    match output.status.code() {
        Some(77) => println!("skipped: {}", stdout.trim()),
        Some(0) => assert!(stdout.contains("PASS"), "the script ended without PASS"),
        other => panic!("the NAT test failed ({other:?})"),
    }
}
