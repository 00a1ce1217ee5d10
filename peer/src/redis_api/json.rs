//! The four JSON documents of the rmb-rs Redis API (rmb-rs-protocol §6.4), field for field.
//!
//! Apps written for rmb-rs push and pop exactly these, so names, order and `null`s must match:
//! `Option::None` is written as an explicit `null` (serde's default, never skipped), the
//! client reference is called `ref`, and `dat` is standard padded base64 ([`encode_dat`],
//! [`decode_dat`]). Unknown fields are ignored when reading, as rmb-rs does. The CLI
//! (`rmb`) imports these types too, so there is one definition of the wire format.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::{Deserialize, Serialize};

/// The `ver` every document we write carries (rmb-rs writes 1 and ignores what it reads).
pub const VERSION: usize = 1;

/// Encodes a payload for the `dat` field: standard alphabet (`+/`), `=` padded.
pub fn encode_dat(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Standard alphabet, padding optional on input: what we write is always padded, but a
/// client that drops the `=` still gets its payload through instead of an error.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a `dat` field (standard alphabet; `=` padding accepted but not required).
pub fn decode_dat(dat: &str) -> Result<Vec<u8>, base64::DecodeError> {
    LENIENT.decode(dat)
}

/// A request a local client pushes to `msgbus.system.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonOutgoingRequest {
    /// Version; ignored.
    pub ver: usize,
    /// Client reference, returned verbatim in every response's `ref`.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Remote command, e.g. `zos.system.version`.
    pub cmd: String,
    /// Validity in seconds relative to `now`.
    pub exp: u64,
    /// Base64 payload.
    pub dat: String,
    /// Envelope tags (`"fail-fast"` asks relays for fast offline errors).
    pub tag: Option<String>,
    /// Destination twins; one envelope per twin, all with the same uid.
    pub dst: Vec<u32>,
    /// Redis list the responses are pushed to.
    pub ret: String,
    /// Schema / content type.
    pub shm: Option<String>,
    /// Client timestamp (unix seconds); 0 or a future value means "now".
    pub now: u64,
}

/// A request from a remote twin, pushed by the peer to `msgbus.<cmd>` for a local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonIncomingRequest {
    /// Always 1.
    pub ver: usize,
    /// The envelope uid; the service must copy it into its reply's `ref`.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Sender address, `"<twin>"` or `"<twin>:<sid>"`; the service copies it to `dst`.
    pub src: String,
    /// The command as the sender wrote it.
    pub cmd: String,
    /// The envelope's expiration (seconds from `now`).
    pub exp: u64,
    /// Base64 of the decrypted payload.
    pub dat: String,
    /// Envelope tags.
    pub tag: Option<String>,
    /// Where to reply: always `msgbus.system.reply`.
    pub ret: String,
    /// Schema / content type.
    pub shm: Option<String>,
    /// The envelope timestamp.
    pub now: u64,
}

/// A service's reply, pushed to `msgbus.system.reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonOutgoingResponse {
    /// Version; ignored.
    pub ver: usize,
    /// The incoming request's `ref` (its envelope uid).
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Base64 payload; ignored when `err` is set.
    pub dat: String,
    /// The incoming request's `src`.
    pub dst: String,
    /// Schema / content type.
    pub shm: Option<String>,
    /// Timestamp (0 = now).
    pub now: u64,
    /// When set, an error is sent instead of a payload.
    pub err: Option<JsonError>,
}

/// A response delivered to a client's `ret` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonIncomingResponse {
    /// Always 1.
    pub ver: usize,
    /// The client's own `ref` from its request.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Base64 payload (empty for errors).
    pub dat: String,
    /// Responder: `"<twin>[:sid]"`, `"0"` for relay errors, `""` for local errors.
    pub src: String,
    /// Schema / content type.
    pub shm: Option<String>,
    /// The response envelope's timestamp (0 for local errors).
    pub now: u64,
    /// Set when the call failed.
    pub err: Option<JsonError>,
}

/// An error as carried in `err`: rmb-rs codes (§8.1) or any code a service chooses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonError {
    /// Error code.
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

impl JsonIncomingResponse {
    /// A locally generated error for a client (rmb-rs's "undeliverable" shape, §8.3):
    /// empty `dat` and `src`, `now` 0, no schema.
    pub fn local_error(reference: Option<String>, code: u32, message: impl Into<String>) -> Self {
        JsonIncomingResponse {
            ver: VERSION,
            reference,
            dat: String::new(),
            src: String::new(),
            shm: None,
            now: 0,
            err: Some(JsonError {
                code,
                message: message.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT_REQ: &str = r#"{"ver":1,"ref":"r-1","cmd":"zos.system.version","exp":60,"dat":"","tag":null,"dst":[41],"ret":"6a0e","shm":"application/json","now":1700000000}"#;
    const IN_REQ: &str = r#"{"ver":1,"ref":"5f0c6c52-2a4e-4d0c-9d0e-3f3b1c9c2d11","src":"7","cmd":"zos.system.version","exp":60,"dat":"","tag":null,"ret":"msgbus.system.reply","shm":"application/json","now":1700000000}"#;
    const OUT_RESP: &str = r#"{"ver":1,"ref":"5f0c6c52-2a4e-4d0c-9d0e-3f3b1c9c2d11","dat":"eyJ2IjoxfQ==","dst":"7","shm":"application/json","now":1700000001,"err":null}"#;
    const IN_RESP: &str = r#"{"ver":1,"ref":"r-1","dat":"eyJ2IjoxfQ==","src":"41","shm":"application/json","now":1700000001,"err":null}"#;

    /// Parses `text`, checks a few fields, and requires re-serialisation to give the same bytes.
    fn round_trip<T: Serialize + for<'a> Deserialize<'a>>(text: &str) -> T {
        let value: T = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
        value
    }

    #[test]
    fn outgoing_request_matches_the_spec_example() {
        let req: JsonOutgoingRequest = round_trip(OUT_REQ);
        assert_eq!(req.reference.as_deref(), Some("r-1"));
        assert_eq!(req.dst, vec![41]);
        assert_eq!(req.tag, None);
        assert_eq!(req.shm.as_deref(), Some("application/json"));
    }

    #[test]
    fn incoming_request_matches_the_spec_example() {
        let req: JsonIncomingRequest = round_trip(IN_REQ);
        assert_eq!(req.src, "7");
        assert_eq!(req.ret, "msgbus.system.reply");
    }

    #[test]
    fn outgoing_response_matches_the_spec_example() {
        let resp: JsonOutgoingResponse = round_trip(OUT_RESP);
        assert_eq!(resp.dst, "7");
        assert_eq!(decode_dat(&resp.dat).unwrap(), br#"{"v":1}"#);
        assert_eq!(resp.err, None);
    }

    #[test]
    fn incoming_response_matches_the_spec_example() {
        let resp: JsonIncomingResponse = round_trip(IN_RESP);
        assert_eq!(resp.reference.as_deref(), Some("r-1"));
        assert_eq!(resp.src, "41");
    }

    #[test]
    fn none_is_written_as_explicit_null_and_errors_nest() {
        let resp = JsonIncomingResponse::local_error(None, 103, "unknown twin id '9'");
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"ver":1,"ref":null,"dat":"","src":"","shm":null,"now":0,"err":{"code":103,"message":"unknown twin id '9'"}}"#
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_required_ones_fail() {
        let with_extra = OUT_REQ.replace("\"ver\":1,", "\"ver\":1,\"extra\":[1,2],");
        let req: JsonOutgoingRequest = serde_json::from_str(&with_extra).unwrap();
        assert_eq!(req.cmd, "zos.system.version");
        let missing_ret = OUT_REQ.replace(",\"ret\":\"6a0e\"", "");
        assert!(serde_json::from_str::<JsonOutgoingRequest>(&missing_ret).is_err());
    }

    #[test]
    fn optional_fields_may_be_absent() {
        // rmb-rs (serde Option) accepts a missing optional field as None.
        let text = r#"{"ver":1,"cmd":"a","exp":5,"dat":"","dst":[1],"ret":"r","now":0}"#;
        let req: JsonOutgoingRequest = serde_json::from_str(text).unwrap();
        assert_eq!((req.reference, req.tag, req.shm), (None, None, None));
    }

    #[test]
    fn dat_is_standard_padded_base64() {
        assert_eq!(encode_dat(&[0xfb, 0xff]), "+/8=");
        assert_eq!(decode_dat("+/8=").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_dat("+/8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_dat("-_8").is_err());
        assert!(decode_dat("not base64!").is_err());
    }
}
