//! How the auth state is kept in the engine, as system records.
//!
//! ## Format (version 1)
//!
//! ```text
//! 0x00 "auth/enabled"          1 byte: 1 on, absent or 0 off
//! 0x00 "auth/key"              32 bytes: the key tokens are signed with
//! 0x00 "auth/revision"         u64 LE: bumped by every change
//! 0x00 "auth/user/" ‖ name     1 | postcard(User)
//! 0x00 "auth/role/" ‖ name     1 | postcard(Role)
//! ```

use super::{AuthState, Role, User};
use ferry_engine::Snapshot;
use std::io;

const ENABLED: &[u8] = b"\x00auth/enabled";
const KEY: &[u8] = b"\x00auth/key";
const REVISION: &[u8] = b"\x00auth/revision";
const USER_PREFIX: &[u8] = b"\x00auth/user/";
const ROLE_PREFIX: &[u8] = b"\x00auth/role/";
const VERSION: u8 = 1;

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("auth state: undecodable {what}"),
    )
}

fn named(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut out = vec![VERSION];
    postcard::to_io(value, &mut out).map_err(io::Error::other)?;
    Ok(out)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> io::Result<T> {
    match bytes.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body).map_err(|_| bad(what)),
        _ => Err(bad(what)),
    }
}

/// The auth state a view of the engine holds.
pub(crate) fn load(view: &Snapshot) -> io::Result<AuthState> {
    let get = |key: &[u8]| view.get(key).map_err(io::Error::other);
    let mut state = AuthState {
        enabled: get(ENABLED)?.is_some_and(|v| v == [1]),
        token_key: match get(KEY)? {
            None => None,
            Some(key) => Some(key.as_slice().try_into().map_err(|_| bad("token key"))?),
        },
        revision: revision(get(REVISION)?)?,
        ..AuthState::default()
    };
    for item in view.prefix(USER_PREFIX) {
        let (key, value) = item.map_err(io::Error::other)?;
        let name =
            String::from_utf8(key[USER_PREFIX.len()..].to_vec()).map_err(|_| bad("user name"))?;
        state.users.insert(name, decode::<User>(&value, "user")?);
    }
    for item in view.prefix(ROLE_PREFIX) {
        let (key, value) = item.map_err(io::Error::other)?;
        let name =
            String::from_utf8(key[ROLE_PREFIX.len()..].to_vec()).map_err(|_| bad("role name"))?;
        state.roles.insert(name, decode::<Role>(&value, "role")?);
    }
    Ok(state)
}

/// The auth revision if auth is on (`None`: off), read with `get`: the two
/// records apply needs to judge a checked transaction, without the users
/// and roles.
pub(crate) fn enabled_revision(
    get: impl Fn(&[u8]) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<Option<u64>> {
    if get(ENABLED)?.is_none_or(|v| v != [1]) {
        return Ok(None);
    }
    revision(get(REVISION)?).map(Some)
}

/// The stored revision (absent: 0).
fn revision(bytes: Option<Vec<u8>>) -> io::Result<u64> {
    match bytes {
        None => Ok(0),
        Some(bytes) => Ok(u64::from_le_bytes(
            bytes.as_slice().try_into().map_err(|_| bad("revision"))?,
        )),
    }
}

/// The writes that turn `before` into `after` (engine key, `None` to
/// delete).
pub(crate) fn diff(
    before: &AuthState,
    after: &AuthState,
    write: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>),
) -> io::Result<()> {
    if before.enabled != after.enabled {
        write(ENABLED.to_vec(), Some(vec![u8::from(after.enabled)]));
    }
    if before.token_key != after.token_key {
        write(KEY.to_vec(), after.token_key.map(|k| k.to_vec()));
    }
    if before.revision != after.revision {
        write(
            REVISION.to_vec(),
            Some(after.revision.to_le_bytes().to_vec()),
        );
    }
    for (name, user) in &after.users {
        if before.users.get(name) != Some(user) {
            write(named(USER_PREFIX, name), Some(encode(user)?));
        }
    }
    for name in before
        .users
        .keys()
        .filter(|n| !after.users.contains_key(*n))
    {
        write(named(USER_PREFIX, name), None);
    }
    for (name, role) in &after.roles {
        if before.roles.get(name) != Some(role) {
            write(named(ROLE_PREFIX, name), Some(encode(role)?));
        }
    }
    for name in before
        .roles
        .keys()
        .filter(|n| !after.roles.contains_key(*n))
    {
        write(named(ROLE_PREFIX, name), None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Permission, PermissionKind};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The records of format version 1, as this release writes them; a
    /// later release must decode these bytes to the same state.
    const RECORDS_V1: &[(&str, &str)] = &[
        ("\x00auth/enabled", "01"),
        (
            "\x00auth/key",
            "0909090909090909090909090909090909090909090909090909090909090909",
        ),
        ("\x00auth/revision", "0500000000000000"),
        ("\x00auth/user/reader", "01000104726f6c6502"),
        ("\x00auth/role/role", "010100046a6f622f046a6f6230"),
    ];

    fn state() -> AuthState {
        let mut state = AuthState {
            enabled: true,
            token_key: Some([9; 32]),
            revision: 5,
            ..AuthState::default()
        };
        state.users.insert(
            "reader".into(),
            User {
                password_hash: None,
                roles: ["role".to_string()].into(),
                epoch: 2,
            },
        );
        state.roles.insert(
            "role".into(),
            Role {
                permissions: vec![Permission {
                    kind: PermissionKind::Read,
                    key: b"job/".to_vec(),
                    range_end: b"job0".to_vec(),
                }],
            },
        );
        state
    }

    #[test]
    fn version_1_records_are_what_this_release_writes_and_decode_back() {
        let mut written = Vec::new();
        diff(&AuthState::default(), &state(), &mut |key, value| {
            written.push((String::from_utf8(key).unwrap(), hex(&value.unwrap())))
        })
        .unwrap();
        let expected: Vec<(String, String)> = RECORDS_V1
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(written, expected);
        let user: User = decode(&[1, 0, 1, 4, b'r', b'o', b'l', b'e', 2], "user").unwrap();
        assert_eq!(&user, &state().users["reader"]);
        assert!(
            decode::<User>(&[2, 0, 1], "user").is_err(),
            "an unknown version"
        );
    }
}
