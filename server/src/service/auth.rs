//! The Auth service: authentication, and changes of users, roles and the
//! auth flag, each a replicated command (see `ferry_replication::auth`).

use super::{timed, Context};
use ferry_client::pb::{self, auth_server::Auth};
use ferry_replication::auth::{Access, AuthChange, Permission, PermissionKind};
use ring::rand::{SecureRandom, SystemRandom};
use tonic::{Request, Response, Status};

pub struct AuthService {
    pub context: Context,
}

/// Longest password hashed: argon2's time grows with it, and the request
/// comes from anyone who may add users.
const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest user or role name: what a token carries whole.
const MAX_NAME_BYTES: usize = crate::auth::token::MAX_USER_BYTES;

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "a {what} name must have 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A permission's key and range end are keys: bounded like them.
pub(crate) fn check_permission_keys(
    max_key_bytes: usize,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), Status> {
    if key.len() > max_key_bytes || range_end.len() > max_key_bytes {
        return Err(Status::invalid_argument(format!(
            "a permission's key and range end are keys: at most max_key_bytes = {max_key_bytes}"
        )));
    }
    Ok(())
}

pub(crate) async fn hash(password: String) -> Result<String, Status> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(Status::invalid_argument(format!(
            "a password must have 1 to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    tokio::task::spawn_blocking(move || crate::auth::password::hash(&password))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::internal)
}

fn kind(value: i32) -> Result<PermissionKind, Status> {
    match pb::permission::Kind::try_from(value) {
        Ok(pb::permission::Kind::Read) => Ok(PermissionKind::Read),
        Ok(pb::permission::Kind::Write) => Ok(PermissionKind::Write),
        Ok(pb::permission::Kind::Readwrite) => Ok(PermissionKind::ReadWrite),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown permission kind {value}"
        ))),
    }
}

fn wire(permission: &Permission) -> pb::Permission {
    pb::Permission {
        kind: match permission.kind {
            PermissionKind::Read => pb::permission::Kind::Read,
            PermissionKind::Write => pb::permission::Kind::Write,
            PermissionKind::ReadWrite => pb::permission::Kind::Readwrite,
        } as i32,
        key: permission.key.clone(),
        range_end: permission.range_end.clone(),
    }
}

impl AuthService {
    /// Checks that the caller is root (or auth is off), then proposes
    /// `change`.
    async fn change<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        change: impl std::future::Future<Output = Result<AuthChange, Status>>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        timed(&self.context, method, async {
            self.context
                .gate
                .authorize_caught_up(request, &Access::Root, |e| self.context.status(e))
                .await?;
            let revision =
                self.context
                    .node
                    .change_auth(change.await?)
                    .await
                    .map_err(|e| match e {
                        ferry_replication::Error::Rejected(reason) => {
                            Status::failed_precondition(reason)
                        }
                        other => self.context.status(other),
                    })?;
            Ok(Response::new(pb::AuthChangeResponse {
                header: self.context.header(revision),
            }))
        })
        .await
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        timed(&self.context, "Authenticate", async {
            let request = request.into_inner();
            let (token, ttl) = self
                .context
                .gate
                .authenticate(&request.name, &request.password)
                .await?;
            Ok(Response::new(pb::AuthenticateResponse {
                header: self.context.header(self.context.applied()),
                token,
                ttl_seconds: ttl.as_secs(),
            }))
        })
        .await
    }

    async fn status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        timed(&self.context, "AuthStatus", async {
            let state = self.context.node.auth();
            let user = if state.enabled {
                self.context.gate.authorize(&request, &Access::Any)?.user
            } else {
                None
            };
            Ok(Response::new(pb::AuthStatusResponse {
                header: self.context.header(self.context.applied()),
                enabled: state.enabled,
                auth_revision: state.revision,
                user: user.unwrap_or_default(),
            }))
        })
        .await
    }

    async fn enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        self.change("AuthEnable", &request, async {
            let mut token_key = [0u8; 32];
            SystemRandom::new()
                .fill(&mut token_key)
                .map_err(|_| Status::internal("no randomness for the token key"))?;
            Ok(AuthChange::Enable { token_key })
        })
        .await
    }

    async fn disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        self.change("AuthDisable", &request, async { Ok(AuthChange::Disable) })
            .await
    }

    async fn user_add(
        &self,
        request: Request<pb::UserAddRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let message = request.get_ref().clone();
        self.change("UserAdd", &request, async move {
            check_name("user", &message.name)?;
            let password_hash = if message.no_password {
                None
            } else {
                Some(hash(message.password).await?)
            };
            Ok(AuthChange::UserAdd {
                name: message.name,
                password_hash,
            })
        })
        .await
    }

    async fn user_delete(
        &self,
        request: Request<pb::UserRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change("UserDelete", &request, async {
            Ok(AuthChange::UserDelete { name })
        })
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<pb::UserPasswordRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let message = request.get_ref().clone();
        self.change("UserChangePassword", &request, async move {
            Ok(AuthChange::UserPassword {
                name: message.name,
                password_hash: hash(message.password).await?,
            })
        })
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::UserRoleRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let pb::UserRoleRequest { user, role } = request.get_ref().clone();
        self.change("UserGrantRole", &request, async {
            Ok(AuthChange::UserGrantRole { user, role })
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::UserRoleRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let pb::UserRoleRequest { user, role } = request.get_ref().clone();
        self.change("UserRevokeRole", &request, async {
            Ok(AuthChange::UserRevokeRole { user, role })
        })
        .await
    }

    async fn user_list(
        &self,
        request: Request<pb::UserListRequest>,
    ) -> Result<Response<pb::UserListResponse>, Status> {
        timed(&self.context, "UserList", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let state = self.context.node.auth();
            Ok(Response::new(pb::UserListResponse {
                header: self.context.header(self.context.applied()),
                users: state
                    .users
                    .iter()
                    .map(|(name, user)| pb::UserInfo {
                        name: name.clone(),
                        roles: user.roles.iter().cloned().collect(),
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn role_add(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change("RoleAdd", &request, async move {
            check_name("role", &name)?;
            Ok(AuthChange::RoleAdd { name })
        })
        .await
    }

    async fn role_delete(
        &self,
        request: Request<pb::RoleRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.change("RoleDelete", &request, async {
            Ok(AuthChange::RoleDelete { name })
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::RoleGrantRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let message = request.get_ref().clone();
        let limits = self.context.limits.clone();
        self.change("RoleGrantPermission", &request, async move {
            let permission = message
                .permission
                .ok_or_else(|| Status::invalid_argument("a grant needs a permission"))?;
            check_permission_keys(limits.max_key_bytes, &permission.key, &permission.range_end)?;
            Ok(AuthChange::RoleGrant {
                role: message.role,
                permission: Permission {
                    kind: kind(permission.kind)?,
                    key: permission.key,
                    range_end: permission.range_end,
                },
            })
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::RoleRevokeRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let pb::RoleRevokeRequest {
            role,
            key,
            range_end,
        } = request.get_ref().clone();
        self.change("RoleRevokePermission", &request, async {
            Ok(AuthChange::RoleRevoke {
                role,
                key,
                range_end,
            })
        })
        .await
    }

    async fn role_list(
        &self,
        request: Request<pb::RoleListRequest>,
    ) -> Result<Response<pb::RoleListResponse>, Status> {
        timed(&self.context, "RoleList", async {
            self.context.gate.authorize(&request, &Access::Root)?;
            let state = self.context.node.auth();
            Ok(Response::new(pb::RoleListResponse {
                header: self.context.header(self.context.applied()),
                roles: state
                    .roles
                    .iter()
                    .map(|(name, role)| pb::RoleInfo {
                        name: name.clone(),
                        permissions: role.permissions.iter().map(wire).collect(),
                    })
                    .collect(),
            }))
        })
        .await
    }
}
