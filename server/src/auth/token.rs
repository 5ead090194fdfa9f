//! Auth tokens: signed, so that any member verifies them without asking
//! another, and they keep working after a failover.
//!
//! ## Format (version 1)
//!
//! ```text
//! token = hex(1 | user length u8 | user | epoch u64 BE | expires_ms u64 BE | tag)
//! tag   = HMAC-SHA256(token key, everything before it)
//! ```
//!
//! The token key is part of the replicated auth state (set when auth is
//! enabled). A token stops working at its expiry, when its user is deleted,
//! when the user's password changes (the epoch moves), or when auth is
//! disabled and enabled again (a new key).

use ring::hmac;

const VERSION: u8 = 1;
const TAG: usize = 32;

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub epoch: u64,
    pub expires_ms: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token of this cluster")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
}

fn key(token_key: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, token_key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    // Lower-case only, as `hex` writes: one spelling per token, so a
    // token cannot be varied (by case) into another string that verifies.
    if !text.len().is_multiple_of(2)
        || text.len() > 1024
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The longest user name a token carries (its length is one byte). A
/// longer one is never cut to fit: a cut name could be another user's.
pub const MAX_USER_BYTES: usize = 255;

/// A signed token for `claims`, whose user name has at most
/// [`MAX_USER_BYTES`] bytes (the caller checks).
pub fn issue(token_key: &[u8; 32], claims: &Claims) -> String {
    let user = claims.user.as_bytes();
    let length = u8::try_from(user.len()).expect("a user name of at most MAX_USER_BYTES");
    let mut body = vec![VERSION, length];
    body.extend_from_slice(user);
    body.extend_from_slice(&claims.epoch.to_be_bytes());
    body.extend_from_slice(&claims.expires_ms.to_be_bytes());
    let tag = hmac::sign(&key(token_key), &body);
    body.extend_from_slice(tag.as_ref());
    hex(&body)
}

/// The claims of `token` if its signature holds (expiry and epoch are the
/// caller's to check against the time and the user).
pub fn verify(token_key: &[u8; 32], token: &str) -> Result<Claims, TokenError> {
    let bytes = unhex(token).ok_or(TokenError::Malformed)?;
    let (&version, rest) = bytes.split_first().ok_or(TokenError::Malformed)?;
    let (&user_len, rest) = rest.split_first().ok_or(TokenError::Malformed)?;
    let user_len = user_len as usize;
    if version != VERSION || rest.len() != user_len + 16 + TAG {
        return Err(TokenError::Malformed);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG);
    hmac::verify(&key(token_key), body, tag).map_err(|_| TokenError::BadSignature)?;
    let user = String::from_utf8(rest[..user_len].to_vec()).map_err(|_| TokenError::Malformed)?;
    let number = |at: usize| u64::from_be_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
    Ok(Claims {
        user,
        epoch: number(user_len),
        expires_ms: number(user_len + 8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_under_its_key_only_and_tampering_is_refused() {
        let claims = Claims {
            user: "alice".into(),
            epoch: 3,
            expires_ms: 1_700_000_000_000,
        };
        let token = issue(&[7; 32], &claims);
        assert_eq!(verify(&[7; 32], &token), Ok(claims.clone()));
        assert_eq!(verify(&[8; 32], &token), Err(TokenError::BadSignature));
        let mut tampered = token.clone().into_bytes();
        tampered[6] = if tampered[6] == b'0' { b'1' } else { b'0' };
        assert!(verify(&[7; 32], std::str::from_utf8(&tampered).unwrap()).is_err());
        // The longest name a token carries goes whole; a user may not have
        // a longer one (a token cut it once, and a cut name could be
        // another user's).
        let longest = Claims {
            user: "u".repeat(MAX_USER_BYTES),
            ..claims.clone()
        };
        assert_eq!(verify(&[7; 32], &issue(&[7; 32], &longest)), Ok(longest));
        assert!(crate::service::auth::check_name("user", &"u".repeat(MAX_USER_BYTES)).is_ok());
        assert!(crate::service::auth::check_name("user", &"u".repeat(MAX_USER_BYTES + 1)).is_err());
        let upper = token.to_uppercase();
        for bad in ["", "zz", "01", &token[..token.len() - 2], &upper, "+1"] {
            assert_eq!(verify(&[7; 32], bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }
}
