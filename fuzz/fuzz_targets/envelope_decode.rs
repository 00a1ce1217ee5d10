//! Any bytes given to the envelope decoder: no panic, and whatever decodes survives the
//! checks a receiver runs and re-encodes to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rmb_proto::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode_limited(data, 64 * 1024) else {
        return;
    };
    let _ = env.challenge_digest();
    let _ = env.source.as_ref().map(ToString::to_string);
    let _ = env.destination.as_ref().map(ToString::to_string);
    let _ = rmb_identity::envelope::check_shape(&env);
    let _ = env.valid_at(1_700_000_000);
    let again = Envelope::decode_limited(&env.to_bytes(), usize::MAX).expect("re-encoding decodes");
    assert_eq!(again, env);
});

