//! Issue #30 item 8: one stranger must not keep the owner's machines out of the group.
//! Wrong invite codes are counted per sending twin (20 per 15 minutes), and past a much
//! higher ceiling for everyone together (1000) only twins that presented no wrong code
//! themselves are still heard, so a machine that types its code right always joins.

use rmb_testsupport::relay_process::RelayProcess;

use super::node::*;

/// `n` well-formed codes of `owner`'s that no invite has (letters the owner's codes,
/// ten random characters, could not all repeat by chance).
fn wrong_codes(owner: u32, n: usize) -> Vec<String> {
    "ABCDEFGHJKLMNPQRSTUVWXYZ"
        .chars()
        .take(n)
        .map(|c| format!("{owner}-{c}{c}{c}{c}{c}-{c}{c}{c}{c}{c}"))
        .collect()
}

/// Runs `rmb agent join CODE` on `node`: `Ok` if it joined, else what it printed.
fn join(node: &Node, code: &str) -> Result<(), String> {
    let out = node.rmb(&["agent", "join", code], &[], "");
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stderr))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_guessing_codes_blocks_only_itself() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let bob = Node::start("//Bob", &relay, &registry).await;
    let carol = Node::start("//Carol", &relay, &registry).await;
    let dave = Node::start("//Dave", &relay, &registry).await;
    let eve = Node::start("//Eve", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let _owner = form_group(&alice, &[], dir.path());
    let invite = |who: &Node| {
        let out = who.rmb(&["agent", "invite"], &[], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let code = invite(&alice);

    // The attack of the issue: twenty wrong codes from Carol, a stranger.
    let wrong = wrong_codes(alice.twin, 21);
    for guess in &wrong[..20] {
        let refused = join(&carol, guess).unwrap_err();
        assert!(
            refused.contains("wrong or expired invite code (403)"),
            "{refused}"
        );
    }
    // Carol is refused from now on without her code being looked at...
    let refused = join(&carol, &wrong[20]).unwrap_err();
    assert!(
        refused.contains("too many wrong invite codes lately") && refused.contains("(429)"),
        "{refused}"
    );
    // ...and Bob, the owner's new machine, joins with the right code.
    join(&bob, &code).unwrap_or_else(|e| panic!("Bob kept out by Carol's guesses: {e}"));
    let mut both = vec![alice.twin, bob.twin];
    both.sort();
    assert_eq!(members(&alice), both);

    // The ceiling for everyone together, reached (as by fifty strangers of twenty
    // guesses each; set in the owner's Redis rather than sent, for time).
    assert_eq!(
        alice
            .redis
            .inline(&["SET", "rmb.pmb.join.failures", "1000", "EX", "900"]),
        "+OK"
    );
    let second = invite(&alice);
    // A twin with no wrong code of its own is still heard: a wrong code is counted...
    let refused = join(&dave, &wrong[0]).unwrap_err();
    assert!(
        refused.contains("wrong or expired invite code (403)"),
        "{refused}"
    );
    // ...and after it, under the ceiling, Dave is refused, the right code too, which
    // stays valid.
    let refused = join(&dave, &second).unwrap_err();
    assert!(refused.contains("(429)"), "{refused}");
    let (_, secret) = second.split_once('-').unwrap();
    let pending = format!("rmb.pmb.invite.{}", secret.replace('-', ""));
    assert_eq!(alice.redis.inline(&["EXISTS", &pending]), ":1");
    // A machine that types its code right is never refused: Eve, another of the
    // owner's machines, joins with it.
    join(&eve, &second).unwrap_or_else(|e| panic!("Eve refused under the ceiling: {e}"));
    let mut three = vec![alice.twin, bob.twin, eve.twin];
    three.sort();
    assert_eq!(members(&alice), three);
    // Every wrong code was counted in all: the ceiling's 1000 and Dave's.
    assert_eq!(
        alice
            .redis
            .inline(&["INCRBY", "rmb.pmb.join.failures", "0"]),
        ":1001"
    );
}
