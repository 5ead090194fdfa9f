//! etcd's Auth service over Ferry's users and roles
//! (`ferry_replication::auth`): the same replicated state as Ferry's own
//! Auth service, so a user added through either API exists in both.
//!
//! Differences from etcd, each refused with a clear error rather than
//! half-done: passwords are hashed with argon2id by the server, so
//! `hashed_password` (a bcrypt hash made by etcd's client) is not
//! accepted; every call but Authenticate and AuthStatus needs root, as in
//! etcd 3.4, except that a user may get itself and its own roles (etcd's
//! `authApplierV3.UserGet` and `RoleGet` allow the same). A change is checked against the current state first, for
//! etcd's error messages; apply checks it again, for races.

use super::pb::{authpb, etcdserverpb as rpc};
use super::{message, Etcd};
use crate::service::auth::{check_name, check_permission_keys, hash};
use ferry_replication::auth::{Access, AuthChange, AuthState, Permission, PermissionKind, ROOT};
use ferry_replication::types::Command;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::{Request, Response, Status};

pub struct AuthService {
    pub etcd: Etcd,
}

/// etcd's messages for refused auth changes.
mod refusal {
    pub const USER_EXISTS: &str = "etcdserver: user name already exists";
    pub const USER_NOT_FOUND: &str = "etcdserver: user name not found";
    pub const ROLE_EXISTS: &str = "etcdserver: role name already exists";
    pub const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
    pub const ROLE_NOT_GRANTED: &str = "etcdserver: role is not granted to the user";
    pub const PERMISSION_NOT_GRANTED: &str = "etcdserver: permission is not granted to the role";
    pub const ROOT_MISSING: &str = "etcdserver: root user does not exist";
    pub const ROOT_ROLE_MISSING: &str = "etcdserver: root user does not have root role";
    pub const NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
    pub const FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
    pub const EMPTY_ROLE: &str = "etcdserver: role name is empty";
    pub const NO_PASSWORD: &str = "etcdserver: password is empty";
}

fn user_exists(state: &AuthState, name: &str) -> Result<(), Status> {
    if state.users.contains_key(name) {
        Ok(())
    } else {
        Err(Status::failed_precondition(refusal::USER_NOT_FOUND))
    }
}

fn role_exists(state: &AuthState, name: &str) -> Result<(), Status> {
    if name == ROOT || state.roles.contains_key(name) {
        Ok(())
    } else {
        Err(Status::failed_precondition(refusal::ROLE_NOT_FOUND))
    }
}

fn kind(perm_type: i32) -> Result<PermissionKind, Status> {
    match authpb::permission::Type::try_from(perm_type) {
        Ok(authpb::permission::Type::Read) => Ok(PermissionKind::Read),
        Ok(authpb::permission::Type::Write) => Ok(PermissionKind::Write),
        Ok(authpb::permission::Type::Readwrite) => Ok(PermissionKind::ReadWrite),
        Err(_) => Err(Status::invalid_argument("unknown permission type")),
    }
}

fn wire(permission: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: match permission.kind {
            PermissionKind::Read => authpb::permission::Type::Read,
            PermissionKind::Write => authpb::permission::Type::Write,
            PermissionKind::ReadWrite => authpb::permission::Type::Readwrite,
        } as i32,
        key: permission.key.clone(),
        range_end: permission.range_end.clone(),
    }
}

impl AuthService {
    /// Checks that the caller is root, that `check` passes on the current
    /// state, then proposes the change `make` builds; answers `answer`
    /// with the header.
    async fn change<T, R>(
        &self,
        method: &'static str,
        request: &Request<T>,
        check: impl FnOnce(&AuthState) -> Result<(), Status>,
        make: impl std::future::Future<Output = Result<AuthChange, Status>>,
        answer: impl FnOnce(Option<rpc::ResponseHeader>) -> R,
    ) -> Result<Response<R>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed(method, async {
                // The change is checked on the caught-up state too.
                context
                    .gate
                    .authorize_caught_up(request, &Access::Root, |e| self.etcd.status(e))
                    .await?;
                check(&context.node.auth())?;
                let change = make.await?;
                let revision = context
                    .node
                    .txn_anywhere(Command::Auth(change))
                    .await
                    .map_err(|e| match e {
                        // Lost a race with another change since the check.
                        ferry_replication::Error::Rejected(reason) => {
                            Status::failed_precondition(reason)
                        }
                        other => self.etcd.status(other),
                    })?
                    .revision;
                Ok(Response::new(answer(self.etcd.header(revision))))
            })
            .await
    }

    /// A read of the auth state by root.
    async fn read<T, R>(
        &self,
        method: &'static str,
        request: &Request<T>,
        read: impl FnOnce(&AuthState, Option<rpc::ResponseHeader>) -> Result<R, Status>,
    ) -> Result<Response<R>, Status> {
        self.read_if(method, request, |_, _| false, read).await
    }

    /// `read` for root, or for a user `mine` says the read is about (its
    /// own user, or one of its roles: etcd lets a user read those).
    async fn read_if<T, R>(
        &self,
        method: &'static str,
        request: &Request<T>,
        mine: impl FnOnce(&AuthState, &str) -> bool,
        read: impl FnOnce(&AuthState, Option<rpc::ResponseHeader>) -> Result<R, Status>,
    ) -> Result<Response<R>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed(method, async {
                let caller = context
                    .gate
                    .authorize_caught_up(request, &Access::Any, |e| self.etcd.status(e))
                    .await?;
                let state = context.node.auth();
                let allowed =
                    caller.root || caller.user.as_deref().is_some_and(|u| mine(&state, u));
                if !allowed {
                    return Err(Status::permission_denied(format!(
                        "only {ROOT} may do this, or a user about itself"
                    )));
                }
                read(&state, self.etcd.header(context.applied())).map(Response::new)
            })
            .await
    }
}

#[tonic::async_trait]
impl rpc::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<rpc::AuthEnableRequest>,
    ) -> Result<Response<rpc::AuthEnableResponse>, Status> {
        self.change(
            "etcd.AuthEnable",
            &request,
            |state| match state.users.get(ROOT) {
                None => Err(Status::failed_precondition(refusal::ROOT_MISSING)),
                Some(root) if !root.roles.contains(ROOT) => {
                    Err(Status::failed_precondition(refusal::ROOT_ROLE_MISSING))
                }
                Some(_) => Ok(()),
            },
            async {
                let mut token_key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut token_key)
                    .map_err(|_| Status::internal("no randomness for the token key"))?;
                Ok(AuthChange::Enable { token_key })
            },
            |header| rpc::AuthEnableResponse { header },
        )
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<rpc::AuthDisableRequest>,
    ) -> Result<Response<rpc::AuthDisableResponse>, Status> {
        self.change(
            "etcd.AuthDisable",
            &request,
            |_| Ok(()),
            async { Ok(AuthChange::Disable) },
            |header| rpc::AuthDisableResponse { header },
        )
        .await
    }

    async fn auth_status(
        &self,
        request: Request<rpc::AuthStatusRequest>,
    ) -> Result<Response<rpc::AuthStatusResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.AuthStatus", async {
                context.gate.authorize(&request, &Access::Any)?;
                let state = context.node.auth();
                Ok(Response::new(rpc::AuthStatusResponse {
                    header: self.etcd.header(context.applied()),
                    enabled: state.enabled,
                    auth_revision: state.revision,
                }))
            })
            .await
    }

    async fn authenticate(
        &self,
        request: Request<rpc::AuthenticateRequest>,
    ) -> Result<Response<rpc::AuthenticateResponse>, Status> {
        let context = &self.etcd.context;
        self.etcd
            .timed("etcd.Authenticate", async {
                let request = request.into_inner();
                if !context.node.auth().enabled {
                    return Err(Status::failed_precondition(refusal::NOT_ENABLED));
                }
                let (token, _) = context
                    .gate
                    .authenticate(&request.name, &request.password)
                    .await
                    .map_err(|status| match status.code() {
                        tonic::Code::Unauthenticated => Status::invalid_argument(refusal::FAILED),
                        _ => status,
                    })?;
                Ok(Response::new(rpc::AuthenticateResponse {
                    header: self.etcd.header(context.applied()),
                    token,
                }))
            })
            .await
    }

    async fn user_add(
        &self,
        request: Request<rpc::AuthUserAddRequest>,
    ) -> Result<Response<rpc::AuthUserAddResponse>, Status> {
        let message = request.get_ref().clone();
        let no_password = message.options.as_ref().is_some_and(|o| o.no_password);
        let name = message.name.clone();
        let hashed = !message.hashed_password.is_empty();
        let password_empty = message.password.is_empty();
        self.change(
            "etcd.UserAdd",
            &request,
            |state| {
                if name.is_empty() {
                    return Err(Status::invalid_argument(message::USER_EMPTY));
                }
                if hashed {
                    return Err(Status::invalid_argument(
                        "a hashed password from etcd's client is not accepted: send the \
                         password, which the server hashes with argon2id",
                    ));
                }
                if !no_password && password_empty {
                    return Err(Status::invalid_argument(refusal::NO_PASSWORD));
                }
                if state.users.contains_key(&name) {
                    return Err(Status::failed_precondition(refusal::USER_EXISTS));
                }
                check_name("user", &name)
            },
            async {
                let password_hash = if no_password {
                    None
                } else {
                    Some(hash(message.password).await?)
                };
                Ok(AuthChange::UserAdd {
                    name: message.name,
                    password_hash,
                })
            },
            |header| rpc::AuthUserAddResponse { header },
        )
        .await
    }

    async fn user_get(
        &self,
        request: Request<rpc::AuthUserGetRequest>,
    ) -> Result<Response<rpc::AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        let own = |_: &AuthState, user: &str| user == name;
        self.read_if("etcd.UserGet", &request, own, |state, header| {
            let user = state
                .users
                .get(&name)
                .ok_or_else(|| Status::failed_precondition(refusal::USER_NOT_FOUND))?;
            Ok(rpc::AuthUserGetResponse {
                header,
                roles: user.roles.iter().cloned().collect(),
            })
        })
        .await
    }

    async fn user_list(
        &self,
        request: Request<rpc::AuthUserListRequest>,
    ) -> Result<Response<rpc::AuthUserListResponse>, Status> {
        self.read("etcd.UserList", &request, |state, header| {
            Ok(rpc::AuthUserListResponse {
                header,
                users: state.users.keys().cloned().collect(),
            })
        })
        .await
    }

    async fn user_delete(
        &self,
        request: Request<rpc::AuthUserDeleteRequest>,
    ) -> Result<Response<rpc::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change(
            "etcd.UserDelete",
            &request,
            |state| user_exists(state, &name),
            async { Ok(AuthChange::UserDelete { name: name.clone() }) },
            |header| rpc::AuthUserDeleteResponse { header },
        )
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<rpc::AuthUserChangePasswordRequest>,
    ) -> Result<Response<rpc::AuthUserChangePasswordResponse>, Status> {
        let message = request.get_ref().clone();
        let name = message.name.clone();
        self.change(
            "etcd.UserChangePassword",
            &request,
            |state| {
                if !message.hashed_password.is_empty() {
                    return Err(Status::invalid_argument(
                        "a hashed password from etcd's client is not accepted",
                    ));
                }
                user_exists(state, &name)
            },
            async {
                Ok(AuthChange::UserPassword {
                    name: message.name,
                    password_hash: hash(message.password).await?,
                })
            },
            |header| rpc::AuthUserChangePasswordResponse { header },
        )
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<rpc::AuthUserGrantRoleRequest>,
    ) -> Result<Response<rpc::AuthUserGrantRoleResponse>, Status> {
        let rpc::AuthUserGrantRoleRequest { user, role } = request.get_ref().clone();
        self.change(
            "etcd.UserGrantRole",
            &request,
            |state| {
                user_exists(state, &user)?;
                role_exists(state, &role)
            },
            async {
                Ok(AuthChange::UserGrantRole {
                    user: user.clone(),
                    role: role.clone(),
                })
            },
            |header| rpc::AuthUserGrantRoleResponse { header },
        )
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<rpc::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<rpc::AuthUserRevokeRoleResponse>, Status> {
        let rpc::AuthUserRevokeRoleRequest { name, role } = request.get_ref().clone();
        self.change(
            "etcd.UserRevokeRole",
            &request,
            |state| {
                user_exists(state, &name)?;
                if state
                    .users
                    .get(&name)
                    .is_some_and(|u| !u.roles.contains(&role))
                {
                    return Err(Status::failed_precondition(refusal::ROLE_NOT_GRANTED));
                }
                Ok(())
            },
            async {
                Ok(AuthChange::UserRevokeRole {
                    user: name.clone(),
                    role: role.clone(),
                })
            },
            |header| rpc::AuthUserRevokeRoleResponse { header },
        )
        .await
    }

    async fn role_add(
        &self,
        request: Request<rpc::AuthRoleAddRequest>,
    ) -> Result<Response<rpc::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change(
            "etcd.RoleAdd",
            &request,
            |state| {
                if name.is_empty() {
                    return Err(Status::invalid_argument(refusal::EMPTY_ROLE));
                }
                if name == ROOT || state.roles.contains_key(&name) {
                    return Err(Status::failed_precondition(refusal::ROLE_EXISTS));
                }
                check_name("role", &name)
            },
            async { Ok(AuthChange::RoleAdd { name: name.clone() }) },
            |header| rpc::AuthRoleAddResponse { header },
        )
        .await
    }

    async fn role_get(
        &self,
        request: Request<rpc::AuthRoleGetRequest>,
    ) -> Result<Response<rpc::AuthRoleGetResponse>, Status> {
        let name = request.get_ref().role.clone();
        let held = |state: &AuthState, user: &str| {
            state
                .users
                .get(user)
                .is_some_and(|u| u.roles.contains(&name))
        };
        self.read_if("etcd.RoleGet", &request, held, |state, header| {
            role_exists(state, &name)?;
            Ok(rpc::AuthRoleGetResponse {
                header,
                // In key order, as etcd keeps them.
                perm: state
                    .roles
                    .get(&name)
                    .map(|role| {
                        let mut perms: Vec<_> = role.permissions.iter().map(wire).collect();
                        perms.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                        perms
                    })
                    .unwrap_or_default(),
            })
        })
        .await
    }

    async fn role_list(
        &self,
        request: Request<rpc::AuthRoleListRequest>,
    ) -> Result<Response<rpc::AuthRoleListResponse>, Status> {
        self.read("etcd.RoleList", &request, |state, header| {
            Ok(rpc::AuthRoleListResponse {
                header,
                roles: state.roles.keys().cloned().collect(),
            })
        })
        .await
    }

    async fn role_delete(
        &self,
        request: Request<rpc::AuthRoleDeleteRequest>,
    ) -> Result<Response<rpc::AuthRoleDeleteResponse>, Status> {
        let name = request.get_ref().role.clone();
        self.change(
            "etcd.RoleDelete",
            &request,
            |state| {
                if state.roles.contains_key(&name) {
                    Ok(())
                } else {
                    Err(Status::failed_precondition(refusal::ROLE_NOT_FOUND))
                }
            },
            async { Ok(AuthChange::RoleDelete { name: name.clone() }) },
            |header| rpc::AuthRoleDeleteResponse { header },
        )
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<rpc::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<rpc::AuthRoleGrantPermissionResponse>, Status> {
        let message = request.get_ref().clone();
        let role = message.name.clone();
        let max_key = self.etcd.context.limits.max_key_bytes;
        self.change(
            "etcd.RoleGrantPermission",
            &request,
            |state| role_exists(state, &role),
            async {
                let permission = message
                    .perm
                    .ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
                if permission.key.is_empty() {
                    return Err(Status::invalid_argument(message::EMPTY_KEY));
                }
                check_permission_keys(max_key, &permission.key, &permission.range_end)?;
                Ok(AuthChange::RoleGrant {
                    role: message.name,
                    permission: Permission {
                        kind: kind(permission.perm_type)?,
                        key: permission.key,
                        range_end: permission.range_end,
                    },
                })
            },
            |header| rpc::AuthRoleGrantPermissionResponse { header },
        )
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<rpc::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<rpc::AuthRoleRevokePermissionResponse>, Status> {
        let rpc::AuthRoleRevokePermissionRequest {
            role,
            key,
            range_end,
        } = request.get_ref().clone();
        self.change(
            "etcd.RoleRevokePermission",
            &request,
            |state| {
                let granted = state.roles.get(&role).is_some_and(|r| {
                    r.permissions
                        .iter()
                        .any(|p| p.key == key && p.range_end == range_end)
                });
                role_exists(state, &role)?;
                if granted {
                    Ok(())
                } else {
                    Err(Status::failed_precondition(refusal::PERMISSION_NOT_GRANTED))
                }
            },
            async {
                Ok(AuthChange::RoleRevoke {
                    role: role.clone(),
                    key: key.clone(),
                    range_end: range_end.clone(),
                })
            },
            |header| rpc::AuthRoleRevokePermissionResponse { header },
        )
        .await
    }
}
