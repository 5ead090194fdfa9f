//! Password hashes: argon2id (the `argon2` crate's defaults: 19 MiB, two
//! passes), as PHC strings, so the parameters travel with each hash.
//!
//! Hashing and verifying take tens of milliseconds on purpose; callers run
//! them on a blocking thread, a few at a time (see `Gate`).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use ring::rand::{SecureRandom, SystemRandom};

/// The PHC string of `password` under a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness for a salt".to_owned())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (a PHC string from [`hash`]).
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_verifies_its_password_only_and_never_holds_it() {
        let hash = super::hash("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(super::verify("correct horse", &hash));
        assert!(!super::verify("wrong", &hash));
        assert!(!super::verify("correct horse", "not a hash"));
        assert_ne!(hash, super::hash("correct horse").unwrap(), "salted");
    }
}
