//! `ferry user`, `ferry role`, `ferry auth`: users, roles and the auth
//! flag, with etcdctl's argument forms.

use super::output::{print_table, text};
use super::{connect, exit, fail, leader_channel, password, status_fail, Common};
use clap::{Subcommand, ValueEnum};
use ferry_client::pb::{self, auth_client::AuthClient};
use ferry_client::AuthChannel;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: NAME:PASSWORD, or NAME to be asked for the password.
    Add {
        user: String,
        /// A user that authenticates by client certificate only.
        #[arg(long)]
        no_password: bool,
    },
    Delete {
        name: String,
    },
    /// Change a user's password (asked for, or read from stdin).
    Passwd {
        name: String,
    },
    GrantRole {
        user: String,
        role: String,
    },
    RevokeRole {
        user: String,
        role: String,
    },
    List,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PermissionKind {
    Read,
    Write,
    Readwrite,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    Add {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Grant ROLE read, write or readwrite on KEY, on [KEY, RANGE_END),
    /// on the keys starting with KEY (--prefix) or from KEY on (--from-key).
    GrantPermission {
        role: String,
        kind: PermissionKind,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
        prefix: bool,
        #[arg(long, conflicts_with = "range_end")]
        from_key: bool,
    },
    /// Revoke the permission on exactly that key or range.
    RevokePermission {
        role: String,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
        prefix: bool,
        #[arg(long, conflicts_with = "range_end")]
        from_key: bool,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Turn auth on (a user `root` with the role `root` must exist).
    Enable,
    /// Turn auth off (root only).
    Disable,
    /// Whether auth is on, and who this command authenticated as.
    Status,
}

/// etcd's encoding of a permission's range end: empty for the key alone,
/// `\0` for every key from it on, else the exclusive end.
fn range_end(key: &str, end: Option<String>, prefix: bool, from_key: bool) -> Vec<u8> {
    if prefix {
        // An empty or all-0xff prefix has no end: every key from it on.
        return ferry_engine::prefix_end(key.as_bytes()).unwrap_or_else(|| vec![0]);
    }
    if from_key {
        return vec![0];
    }
    end.map(String::into_bytes).unwrap_or_default()
}

async fn admin(common: &Common) -> Result<AuthClient<AuthChannel>, i32> {
    let client = connect(common).await?;
    Ok(AuthClient::new(leader_channel(&client).await?))
}

fn done(common: &Common, what: &str) -> i32 {
    if common.json {
        println!("{}", json!({ "ok": true }));
    } else {
        println!("{what}");
    }
    exit::OK
}

pub async fn user(common: &Common, command: UserCommand) -> i32 {
    match user_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

fn ask(prompt: &str) -> Result<String, i32> {
    password::read(prompt).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

async fn user_inner(common: &Common, command: UserCommand) -> Result<i32, i32> {
    let mut auth = admin(common).await?;
    Ok(match command {
        UserCommand::Add { user, no_password } => {
            let (name, password) = match (user.split_once(':'), no_password) {
                (Some((name, password)), _) => (name.to_owned(), password.to_owned()),
                (None, true) => (user.clone(), String::new()),
                (None, false) => (user.clone(), ask(&format!("Password of {user}: "))?),
            };
            auth.user_add(pb::UserAddRequest {
                name: name.clone(),
                password,
                no_password,
            })
            .await
            .map_err(status_fail)?;
            done(common, &format!("User {name} added"))
        }
        UserCommand::Delete { name } => {
            auth.user_delete(pb::UserRequest { name: name.clone() })
                .await
                .map_err(status_fail)?;
            done(common, &format!("User {name} deleted"))
        }
        UserCommand::Passwd { name } => {
            let password = ask(&format!("New password of {name}: "))?;
            auth.user_change_password(pb::UserPasswordRequest {
                name: name.clone(),
                password,
            })
            .await
            .map_err(status_fail)?;
            done(common, "Password updated")
        }
        UserCommand::GrantRole { user, role } => {
            auth.user_grant_role(pb::UserRoleRequest {
                user: user.clone(),
                role: role.clone(),
            })
            .await
            .map_err(status_fail)?;
            done(common, &format!("Role {role} is granted to user {user}"))
        }
        UserCommand::RevokeRole { user, role } => {
            auth.user_revoke_role(pb::UserRoleRequest {
                user: user.clone(),
                role: role.clone(),
            })
            .await
            .map_err(status_fail)?;
            done(common, &format!("Role {role} is revoked from user {user}"))
        }
        UserCommand::List => {
            let users = auth
                .user_list(pb::UserListRequest {})
                .await
                .map_err(status_fail)?
                .into_inner()
                .users;
            if common.json {
                let users: Vec<_> = users
                    .iter()
                    .map(|u| json!({ "name": u.name, "roles": u.roles }))
                    .collect();
                println!("{}", json!({ "users": users }));
            } else {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| vec![u.name.clone(), u.roles.join(",")])
                    .collect();
                print_table(&["USER", "ROLES"], &rows);
            }
            exit::OK
        }
    })
}

pub async fn role(common: &Common, command: RoleCommand) -> i32 {
    match role_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

fn describe(permission: &pb::Permission) -> String {
    let key = text(&permission.key);
    match permission.range_end.as_slice() {
        [] => key,
        [0] => format!("[{key}, <end>)"),
        end => format!("[{key}, {})", text(end)),
    }
}

async fn role_inner(common: &Common, command: RoleCommand) -> Result<i32, i32> {
    let mut auth = admin(common).await?;
    Ok(match command {
        RoleCommand::Add { name } => {
            auth.role_add(pb::RoleRequest { name: name.clone() })
                .await
                .map_err(status_fail)?;
            done(common, &format!("Role {name} created"))
        }
        RoleCommand::Delete { name } => {
            auth.role_delete(pb::RoleRequest { name: name.clone() })
                .await
                .map_err(status_fail)?;
            done(common, &format!("Role {name} deleted"))
        }
        RoleCommand::GrantPermission {
            role,
            kind,
            key,
            range_end: end,
            prefix,
            from_key,
        } => {
            let kind = match kind {
                PermissionKind::Read => pb::permission::Kind::Read,
                PermissionKind::Write => pb::permission::Kind::Write,
                PermissionKind::Readwrite => pb::permission::Kind::Readwrite,
            };
            auth.role_grant_permission(pb::RoleGrantRequest {
                role: role.clone(),
                permission: Some(pb::Permission {
                    kind: kind as i32,
                    range_end: range_end(&key, end, prefix, from_key),
                    key: key.into_bytes(),
                }),
            })
            .await
            .map_err(status_fail)?;
            done(common, &format!("Role {role} updated"))
        }
        RoleCommand::RevokePermission {
            role,
            key,
            range_end: end,
            prefix,
            from_key,
        } => {
            auth.role_revoke_permission(pb::RoleRevokeRequest {
                role: role.clone(),
                range_end: range_end(&key, end, prefix, from_key),
                key: key.into_bytes(),
            })
            .await
            .map_err(status_fail)?;
            done(common, &format!("Permission of role {role} revoked"))
        }
        RoleCommand::List => {
            let roles = auth
                .role_list(pb::RoleListRequest {})
                .await
                .map_err(status_fail)?
                .into_inner()
                .roles;
            if common.json {
                let roles: Vec<_> = roles
                    .iter()
                    .map(|r| {
                        let permissions: Vec<_> = r
                            .permissions
                            .iter()
                            .map(|p| {
                                json!({
                                    "kind": pb::permission::Kind::try_from(p.kind)
                                        .map_or("unknown", |k| k.as_str_name()),
                                    "key": text(&p.key),
                                    "range_end": text(&p.range_end),
                                })
                            })
                            .collect();
                        json!({ "name": r.name, "permissions": permissions })
                    })
                    .collect();
                println!("{}", json!({ "roles": roles }));
            } else {
                let rows: Vec<Vec<String>> = roles
                    .iter()
                    .map(|r| {
                        let permissions: Vec<String> = r
                            .permissions
                            .iter()
                            .map(|p| {
                                let kind = pb::permission::Kind::try_from(p.kind)
                                    .map_or("UNKNOWN", |k| k.as_str_name());
                                format!("{kind} {}", describe(p))
                            })
                            .collect();
                        vec![r.name.clone(), permissions.join("; ")]
                    })
                    .collect();
                print_table(&["ROLE", "PERMISSIONS"], &rows);
            }
            exit::OK
        }
    })
}

pub async fn auth(common: &Common, command: AuthCommand) -> i32 {
    match auth_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn auth_inner(common: &Common, command: AuthCommand) -> Result<i32, i32> {
    Ok(match command {
        AuthCommand::Enable => {
            admin(common)
                .await?
                .enable(pb::AuthEnableRequest {})
                .await
                .map_err(status_fail)?;
            done(common, "Authentication Enabled")
        }
        AuthCommand::Disable => {
            admin(common)
                .await?
                .disable(pb::AuthDisableRequest {})
                .await
                .map_err(status_fail)?;
            done(common, "Authentication Disabled")
        }
        AuthCommand::Status => {
            // Any member answers; no leader needed.
            let client = connect(common).await?;
            let status = client.auth_status().await.map_err(|e| fail(&e))?;
            if common.json {
                println!(
                    "{}",
                    json!({ "enabled": status.enabled, "auth_revision": status.auth_revision, "user": status.user })
                );
            } else {
                println!(
                    "Authentication Status: {}\nAuthRevision: {}\nUser: {}",
                    status.enabled,
                    status.auth_revision,
                    if status.user.is_empty() {
                        "-"
                    } else {
                        &status.user
                    }
                );
            }
            exit::OK
        }
    })
}
