//! Users, roles and permissions, as replicated state, and the one rule
//! that decides what a user may do.
//!
//! The model is etcd's: a role grants read, write or readwrite on a key or
//! on a range `[key, range_end)`; a user has roles; the `root` role (and
//! the `root` user, who must hold it) may do everything, including what no
//! permission names: membership, leadership, snapshots, exports,
//! compaction, backups and auth changes. Auth is off until enabled, which
//! needs a `root` user holding the `root` role.
//!
//! Changes are [`AuthChange`] commands through Raft, so every member holds
//! the same users and roles; passwords arrive already hashed (the server
//! hashes them with argon2id before proposing), so no password is in the
//! log, the engine or a snapshot. The state machine keeps the state
//! decoded in memory ([`AuthState`]) for the per-request checks.

pub(crate) mod store;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The name of the role (and of the user) that may do everything.
pub const ROOT: &str = "root";

/// Why apply refused a transaction whose permissions were checked under an
/// auth state older than the one it is applied in (see
/// [`crate::types::Txn::auth_revision`]). Nothing was changed, and the
/// refusal is not remembered for the request's retries: the proposer
/// checks again under the newer state and proposes again.
pub const STALE_CHECK: &str = "the permissions were checked under an older auth state; check again";

/// Bounds of the auth state, checked when a change is applied (a change
/// past one is refused without effect). Every member keeps the whole state
/// in memory, reloads it at each change, and a role or a user is one engine
/// value: unbounded, a role could pass the engine's limit on a value, and
/// the write's failure would stop every member. Part of what apply does.
pub const MAX_USERS: usize = 65_536;
pub const MAX_ROLES: usize = 65_536;
pub const MAX_ROLES_PER_USER: usize = 1024;
pub const MAX_PERMISSIONS_PER_ROLE: usize = 1024;
/// Bytes of a name (user or role) at most.
pub const MAX_NAME_BYTES: usize = 255;
/// Bytes of a role's permissions' keys and range ends, together, at most.
pub const MAX_PERMISSION_BYTES_PER_ROLE: usize = 4 << 20;
/// Bytes of the whole auth state at most (as [`AuthState::bytes`] counts
/// them): what each change loads and copies, and what a role's deletion
/// may rewrite in one batch.
pub const MAX_AUTH_STATE_BYTES: usize = 64 << 20;

/// Whether a refusal (`Error::Rejected`) is [`STALE_CHECK`].
pub fn is_stale_check(reason: &str) -> bool {
    reason == STALE_CHECK
}

/// What a permission lets its holder do with keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionKind {
    Read,
    Write,
    ReadWrite,
}

impl PermissionKind {
    fn allows(self, access: AccessKind) -> bool {
        matches!(
            (self, access),
            (PermissionKind::ReadWrite, _)
                | (PermissionKind::Read, AccessKind::Read)
                | (PermissionKind::Write, AccessKind::Write)
        )
    }
}

/// A grant of a role: `kind` on `key` alone, or on `[key, range_end)`
/// (`range_end` empty: the key alone; `[0]`: every key from `key` on, as
/// etcd spells it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermissionKind,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

impl Permission {
    /// The keys it covers, as `[start, end)` (`None`: no end).
    fn interval(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        interval(&self.key, &self.range_end)
    }
}

/// `[key, range_end)` in etcd's spelling as a half-open interval:
/// `range_end` empty means the key alone, `[0]` every key from `key` on.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => (key.to_vec(), Some([key, &[0]].concat())),
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub permissions: Vec<Permission>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The argon2id hash (PHC string) of the password; `None`: the user
    /// can only authenticate by a client certificate.
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
    /// Raised by every password change and by recreation: tokens carry it,
    /// so they stop working when it moves.
    pub epoch: u64,
}

/// Everything auth knows, as of some applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthState {
    pub enabled: bool,
    /// The key tokens are signed with (set when auth is enabled).
    pub token_key: Option<[u8; 32]>,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// Bumped by every change.
    pub revision: u64,
}

impl AuthState {
    /// About the bytes the state takes in the engine: its names, hashes
    /// and permission keys, and a little for each record.
    pub fn bytes(&self) -> usize {
        let users: usize = self
            .users
            .iter()
            .map(|(name, user)| {
                name.len()
                    + user.password_hash.as_ref().map_or(0, String::len)
                    + user.roles.iter().map(|r| r.len() + 1).sum::<usize>()
                    + 16
            })
            .sum();
        let roles: usize = self
            .roles
            .iter()
            .map(|(name, role)| {
                name.len()
                    + role
                        .permissions
                        .iter()
                        .map(|p| p.key.len() + p.range_end.len() + 4)
                        .sum::<usize>()
                    + 8
            })
            .sum();
        users + roles
    }
}

/// What an access does to keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Keys `[start, end)` (`end = None`: to the end of the key space).
    Keys {
        kind: AccessKind,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// What only root may do (membership, snapshots, compaction…).
    Root,
    /// What any authenticated user may do (status, its own token).
    Any,
}

impl Access {
    /// The single key `key`.
    pub fn key(kind: AccessKind, key: &[u8]) -> Access {
        Access::Keys {
            kind,
            start: key.to_vec(),
            end: Some([key, &[0]].concat()),
        }
    }

    /// A put or delete of `key`: a write, and a read as well when it
    /// returns the key's previous value (`prev_kv`), which a write-only
    /// user must not see (etcd checks the same).
    pub fn write_key(key: &[u8], prev_kv: bool) -> Vec<Access> {
        let write = Access::key(AccessKind::Write, key);
        if prev_kv {
            vec![Access::key(AccessKind::Read, key), write]
        } else {
            vec![write]
        }
    }

    /// What a transaction's `op` needs: a read or write of the keys it
    /// touches, and a read too of those whose previous values it returns.
    pub fn op(op: &crate::types::Op) -> Vec<Access> {
        use crate::types::Op;
        let keys = |kind, start: &Vec<u8>, end: &Option<Vec<u8>>| Access::Keys {
            kind,
            start: start.clone(),
            end: end.clone(),
        };
        match op {
            Op::Get { key } => vec![Access::key(AccessKind::Read, key)],
            Op::Put { key, prev_kv, .. } | Op::Delete { key, prev_kv } => {
                Access::write_key(key, *prev_kv)
            }
            Op::DeleteRange {
                start,
                end,
                prev_kv,
            } => {
                let write = keys(AccessKind::Write, start, end);
                if *prev_kv {
                    vec![keys(AccessKind::Read, start, end), write]
                } else {
                    vec![write]
                }
            }
            Op::Range { start, end, .. } => vec![keys(AccessKind::Read, start, end)],
        }
    }

    /// What a transaction needs: a read of every key it compares and what
    /// each op of either branch needs (which branch runs is known only
    /// when apply evaluates the compares).
    pub fn txn(txn: &crate::types::Txn) -> Vec<Access> {
        let compares = txn
            .compares
            .iter()
            .map(|compare| Access::key(AccessKind::Read, &compare.key));
        let ops = txn.success.iter().chain(&txn.failure).flat_map(Access::op);
        compares.chain(ops).collect()
    }
}

impl AuthState {
    /// Whether `user` holds the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` (which must exist) may do `access`.
    pub fn allows(&self, user: &str, access: &Access) -> bool {
        let Some(record) = self.users.get(user) else {
            return false;
        };
        if record.roles.contains(ROOT) {
            return true;
        }
        let (kind, start, end) = match access {
            Access::Any => return true,
            Access::Root => return false,
            Access::Keys { kind, start, end } => (*kind, start, end),
        };
        // The granted intervals of that kind, merged, must cover the request.
        let mut granted: Vec<(Vec<u8>, Option<Vec<u8>>)> = record
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| role.permissions.iter())
            .filter(|p| p.kind.allows(kind))
            .map(Permission::interval)
            .collect();
        granted.sort();
        // Walk the grants by start: `uncovered` is the first requested key
        // no grant seen so far covers.
        let mut uncovered = start.clone();
        for (grant_start, grant_end) in granted {
            if grant_start > uncovered {
                break;
            }
            match grant_end {
                None => return true,
                Some(grant_end) if grant_end > uncovered => uncovered = grant_end,
                Some(_) => {}
            }
            if end.as_ref().is_some_and(|end| uncovered >= *end) {
                return true;
            }
        }
        false
    }
}

/// A change of the auth state, replicated as a command.
///
/// ## Format
///
/// Part of the command envelope (see `types::command`): a kind's fields
/// never change; new changes are new variants appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    /// Turns auth on; refused unless a `root` user holds the `root` role.
    Enable {
        token_key: [u8; 32],
    },
    Disable,
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserPassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrant {
        role: String,
        permission: Permission,
    },
    RoleRevoke {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
}

impl AuthChange {
    /// Applies the change to `state`, or says why it cannot be (the
    /// command is then refused without effect).
    pub(crate) fn apply(&self, state: &mut AuthState) -> Result<(), String> {
        fn user_mut<'a>(state: &'a mut AuthState, name: &str) -> Result<&'a mut User, String> {
            state
                .users
                .get_mut(name)
                .ok_or_else(|| format!("user {name:?} does not exist"))
        }
        match self {
            AuthChange::Enable { token_key } => {
                if !state.is_root(ROOT) {
                    return Err("auth needs a root user with the root role first".into());
                }
                state.enabled = true;
                state.token_key = Some(*token_key);
            }
            AuthChange::Disable => state.enabled = false,
            AuthChange::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() || name.len() > MAX_NAME_BYTES {
                    return Err(format!("a user name must have 1 to {MAX_NAME_BYTES} bytes"));
                }
                if state.users.contains_key(name) {
                    return Err(format!("user {name:?} already exists"));
                }
                if state.users.len() >= MAX_USERS {
                    return Err(format!(
                        "there are {MAX_USERS} users, the most there may be"
                    ));
                }
                state.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                        // Tokens of an earlier user of that name never
                        // match: the epoch starts at the revision.
                        epoch: state.revision + 1,
                    },
                );
            }
            AuthChange::UserDelete { name } => {
                if name == ROOT && state.enabled {
                    return Err("root cannot be deleted while auth is enabled".into());
                }
                state
                    .users
                    .remove(name)
                    .ok_or_else(|| format!("user {name:?} does not exist"))?;
            }
            AuthChange::UserPassword {
                name,
                password_hash,
            } => {
                let user = user_mut(state, name)?;
                user.password_hash = Some(password_hash.clone());
                user.epoch += 1;
            }
            AuthChange::UserGrantRole { user, role } => {
                if role != ROOT && !state.roles.contains_key(role) {
                    return Err(format!("role {role:?} does not exist"));
                }
                let record = user_mut(state, user)?;
                if !record.roles.contains(role) && record.roles.len() >= MAX_ROLES_PER_USER {
                    return Err(format!(
                        "user {user:?} has {MAX_ROLES_PER_USER} roles, the most a user may have"
                    ));
                }
                record.roles.insert(role.clone());
            }
            AuthChange::UserRevokeRole { user, role } => {
                if user == ROOT && role == ROOT && state.enabled {
                    return Err("root keeps the root role while auth is enabled".into());
                }
                if !user_mut(state, user)?.roles.remove(role) {
                    return Err(format!("user {user:?} does not have role {role:?}"));
                }
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() || name.len() > MAX_NAME_BYTES {
                    return Err(format!("a role name must have 1 to {MAX_NAME_BYTES} bytes"));
                }
                if name == ROOT || state.roles.contains_key(name) {
                    return Err(format!("role {name:?} already exists"));
                }
                if state.roles.len() >= MAX_ROLES {
                    return Err(format!(
                        "there are {MAX_ROLES} roles, the most there may be"
                    ));
                }
                state.roles.insert(name.clone(), Role::default());
            }
            AuthChange::RoleDelete { name } => {
                if name == ROOT {
                    return Err("the root role cannot be deleted".into());
                }
                state
                    .roles
                    .remove(name)
                    .ok_or_else(|| format!("role {name:?} does not exist"))?;
                for user in state.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthChange::RoleGrant { role, permission } => {
                let record = state
                    .roles
                    .get_mut(role)
                    .ok_or_else(|| format!("role {role:?} does not exist"))?;
                record
                    .permissions
                    .retain(|p| (&p.key, &p.range_end) != (&permission.key, &permission.range_end));
                let bytes: usize = record
                    .permissions
                    .iter()
                    .chain([permission])
                    .map(|p| p.key.len() + p.range_end.len())
                    .sum();
                if record.permissions.len() >= MAX_PERMISSIONS_PER_ROLE
                    || bytes > MAX_PERMISSION_BYTES_PER_ROLE
                {
                    return Err(format!(
                        "role {role:?} may hold at most {MAX_PERMISSIONS_PER_ROLE} permissions \
                         of {MAX_PERMISSION_BYTES_PER_ROLE} bytes of keys"
                    ));
                }
                record.permissions.push(permission.clone());
            }
            AuthChange::RoleRevoke {
                role,
                key,
                range_end,
            } => {
                let record = state
                    .roles
                    .get_mut(role)
                    .ok_or_else(|| format!("role {role:?} does not exist"))?;
                let before = record.permissions.len();
                record
                    .permissions
                    .retain(|p| (&p.key, &p.range_end) != (key, range_end));
                if record.permissions.len() == before {
                    return Err(format!(
                        "role {role:?} has no permission on that key or range"
                    ));
                }
            }
        }
        state.revision += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AuthState {
        let mut state = AuthState::default();
        let changes = [
            AuthChange::UserAdd {
                name: "root".into(),
                password_hash: Some("h".into()),
            },
            AuthChange::UserGrantRole {
                user: "root".into(),
                role: ROOT.into(),
            },
            AuthChange::RoleAdd {
                name: "jobs".into(),
            },
            AuthChange::RoleGrant {
                role: "jobs".into(),
                permission: Permission {
                    kind: PermissionKind::Read,
                    key: b"job/".to_vec(),
                    range_end: b"job0".to_vec(),
                },
            },
            AuthChange::RoleGrant {
                role: "jobs".into(),
                permission: Permission {
                    kind: PermissionKind::ReadWrite,
                    key: b"job/7".to_vec(),
                    range_end: Vec::new(),
                },
            },
            AuthChange::UserAdd {
                name: "reader".into(),
                password_hash: Some("h".into()),
            },
            AuthChange::UserGrantRole {
                user: "reader".into(),
                role: "jobs".into(),
            },
        ];
        for change in changes {
            change.apply(&mut state).unwrap();
        }
        state
    }

    #[test]
    fn permissions_cover_what_they_name_and_nothing_else() {
        let state = state();
        let read = |start: &str, end: Option<&str>| Access::Keys {
            kind: AccessKind::Read,
            start: start.into(),
            end: end.map(Into::into),
        };
        assert!(state.allows("reader", &read("job/", Some("job0"))));
        assert!(state.allows("reader", &read("job/1", Some("job/2"))));
        assert!(state.allows("reader", &Access::key(AccessKind::Read, b"job/9")));
        assert!(!state.allows("reader", &read("job", Some("job0"))));
        assert!(!state.allows("reader", &read("job/", None)));
        assert!(!state.allows("reader", &Access::key(AccessKind::Read, b"other")));
        assert!(!state.allows("reader", &Access::key(AccessKind::Write, b"job/1")));
        assert!(state.allows("reader", &Access::key(AccessKind::Write, b"job/7")));
        assert!(!state.allows("reader", &Access::key(AccessKind::Write, b"job/70")));
        assert!(!state.allows("reader", &Access::Root));
        assert!(state.allows("reader", &Access::Any));
        assert!(state.allows("root", &Access::Root));
        assert!(state.allows("root", &read("", None)));
        assert!(!state.allows("nobody", &Access::Any));
    }

    #[test]
    fn merged_grants_cover_a_range_none_covers_alone() {
        let mut state = state();
        for (key, end) in [("a", "c"), ("c", "e")] {
            AuthChange::RoleGrant {
                role: "jobs".into(),
                permission: Permission {
                    kind: PermissionKind::Read,
                    key: key.into(),
                    range_end: end.into(),
                },
            }
            .apply(&mut state)
            .unwrap();
        }
        let read = |start: &str, end: &str| Access::Keys {
            kind: AccessKind::Read,
            start: start.into(),
            end: Some(end.into()),
        };
        assert!(state.allows("reader", &read("b", "d")));
        assert!(!state.allows("reader", &read("b", "f")));
    }

    #[test]
    fn auth_needs_root_and_root_stays() {
        let mut state = AuthState::default();
        let enable = AuthChange::Enable { token_key: [1; 32] };
        assert!(enable.apply(&mut state).is_err());
        let mut state = self::state();
        enable.apply(&mut state).unwrap();
        assert!(state.enabled);
        assert!(AuthChange::UserDelete { name: ROOT.into() }
            .apply(&mut state)
            .is_err());
        assert!(AuthChange::UserRevokeRole {
            user: ROOT.into(),
            role: ROOT.into()
        }
        .apply(&mut state)
        .is_err());
        let epoch = state.users["reader"].epoch;
        AuthChange::UserPassword {
            name: "reader".into(),
            password_hash: "h2".into(),
        }
        .apply(&mut state)
        .unwrap();
        assert!(state.users["reader"].epoch > epoch);
        AuthChange::RoleDelete {
            name: "jobs".into(),
        }
        .apply(&mut state)
        .unwrap();
        assert!(state.users["reader"].roles.is_empty());
    }

    #[test]
    fn the_auth_state_is_bounded_where_a_record_could_grow() {
        let mut state = AuthState::default();
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        for change in [
            AuthChange::UserAdd {
                name: long.clone(),
                password_hash: None,
            },
            AuthChange::RoleAdd { name: long },
        ] {
            assert!(change.apply(&mut state).is_err());
        }
        AuthChange::UserAdd {
            name: "u".into(),
            password_hash: None,
        }
        .apply(&mut state)
        .unwrap();
        AuthChange::RoleAdd { name: "r".into() }
            .apply(&mut state)
            .unwrap();
        let grant = |key: Vec<u8>| AuthChange::RoleGrant {
            role: "r".into(),
            permission: Permission {
                kind: PermissionKind::Read,
                key,
                range_end: Vec::new(),
            },
        };
        for k in 0..MAX_PERMISSIONS_PER_ROLE {
            grant(format!("k{k}").into_bytes())
                .apply(&mut state)
                .unwrap();
        }
        assert!(grant(b"one more".to_vec()).apply(&mut state).is_err());
        // Granted again, a permission replaces itself.
        grant(b"k0".to_vec()).apply(&mut state).unwrap();
        assert_eq!(state.roles["r"].permissions.len(), MAX_PERMISSIONS_PER_ROLE);
        // By bytes: permissions of a third of the bound and a byte each;
        // the third passes it with the keys already there.
        AuthChange::RoleAdd {
            name: "wide".into(),
        }
        .apply(&mut state)
        .unwrap();
        let wide = |k: u8| AuthChange::RoleGrant {
            role: "wide".into(),
            permission: Permission {
                kind: PermissionKind::Read,
                key: vec![k; MAX_PERMISSION_BYTES_PER_ROLE / 3 + 1],
                range_end: Vec::new(),
            },
        };
        wide(0).apply(&mut state).unwrap();
        wide(1).apply(&mut state).unwrap();
        assert!(wide(2).apply(&mut state).is_err());
        for r in 0..MAX_ROLES_PER_USER {
            let name = format!("role{r}");
            AuthChange::RoleAdd { name: name.clone() }
                .apply(&mut state)
                .unwrap();
            AuthChange::UserGrantRole {
                user: "u".into(),
                role: name,
            }
            .apply(&mut state)
            .unwrap();
        }
        assert!(AuthChange::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        }
        .apply(&mut state)
        .is_err());
        // Granted again, a role the user has is no more.
        AuthChange::UserGrantRole {
            user: "u".into(),
            role: "role0".into(),
        }
        .apply(&mut state)
        .unwrap();
    }
}
