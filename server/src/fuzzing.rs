//! Entry points for the fuzz targets in `fuzz/` of bytes this crate
//! decodes from clients: batch-stream messages and auth tokens. See
//! `ferry_replication::fuzzing` for the properties each checks.
//!
//! Not part of the stable API.

use crate::auth::token;
use ferry_client::pb;
use prost::Message;

/// Every target, by name.
pub const TARGETS: &[ferry_replication::engine::fuzzing::Target] =
    &[("batch_request", batch_request), ("token", token)];

/// A `KV.Batch` request message as the server decodes it. Property: what
/// decodes re-encodes into an equal message, and that encoding is stable.
pub fn batch_request(bytes: &[u8]) {
    if let Ok(request) = pb::BatchRequest::decode(bytes) {
        let once = request.encode_to_vec();
        let again = pb::BatchRequest::decode(once.as_slice()).expect("re-encoded batch decodes");
        assert_eq!(again, request, "batch round trip");
        assert_eq!(again.encode_to_vec(), once, "batch re-encoding is stable");
    }
}

/// The key random input is checked against.
const KEY: [u8; 32] = [7; 32];

/// A token as a call presents it. Property: input that verifies is
/// exactly the token issued for its claims (so nothing but the issuer's
/// encoding passes, and a flipped byte never does).
pub fn token(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(claims) = token::verify(&KEY, text) {
        assert_eq!(
            token::issue(&KEY, &claims),
            text,
            "a verified token is the one issued"
        );
    }
    // A token issued for input-derived claims verifies to them.
    let claims = token::Claims {
        // At most 60 characters: 240 bytes, under the token's 255.
        user: text.chars().take(60).collect(),
        epoch: bytes.len() as u64,
        expires_ms: u64::from(bytes.first().copied().unwrap_or(0)) << 40,
    };
    let issued = token::issue(&KEY, &claims);
    assert_eq!(token::verify(&KEY, &issued).ok(), Some(claims));
}

/// Valid inputs for every target (see `ferry_replication::fuzzing::seeds`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let put = pb::BatchCall {
        id: 1,
        timeout_ms: 2000,
        request: Some(pb::batch_call::Request::Put(pb::PutRequest {
            key: b"task/1".to_vec(),
            value: b"queued".to_vec(),
            ..Default::default()
        })),
    };
    let get = pb::BatchCall {
        id: 2,
        timeout_ms: 0,
        request: Some(pb::batch_call::Request::Get(pb::GetRequest {
            key: b"task/1".to_vec(),
            ..Default::default()
        })),
    };
    let claims = token::Claims {
        user: "root".into(),
        epoch: 3,
        expires_ms: 1_700_000_000_000,
    };
    vec![
        (
            "batch_request",
            pb::BatchRequest {
                calls: vec![put, get],
                cancel: vec![7],
            }
            .encode_to_vec(),
        ),
        ("token", token::issue(&KEY, &claims).into_bytes()),
        // Regression: an upper-case spelling of a valid token once verified.
        (
            "token",
            token::issue(&KEY, &claims).to_uppercase().into_bytes(),
        ),
    ]
}
