//! Certificates and a root user for the suites that run systems with TLS
//! and authentication on (`cluster --tls`).
//!
//! One CA signs a node certificate for loopback that every member of
//! either system serves on its client and peer ports; clients verify the
//! servers against the CA and log in as `root` with a password, so each
//! request carries a token, as a production deployment's would.

use ferry_client::{pb, Client, ClientOptions, Credentials, TlsOptions};
use ferry_server::certs;
use std::path::{Path, PathBuf};

/// The root user's password in benchmark clusters.
pub(crate) const ROOT_PASSWORD: &str = "bench-root-password";

/// Makes a CA and a loopback node certificate in `dir`.
pub(crate) fn create_pki(dir: &Path) {
    std::fs::create_dir_all(dir).expect("pki dir");
    certs::create_ca(dir, false).expect("create CA");
    certs::load_ca(dir)
        .expect("load CA")
        .create_node(
            dir,
            &["127.0.0.1".into(), "localhost".into()],
            "node",
            false,
        )
        .expect("create node certificate");
}

pub(crate) fn ca(dir: &Path) -> PathBuf {
    dir.join(certs::CA_CERT)
}

pub(crate) fn node_cert(dir: &Path) -> PathBuf {
    dir.join(certs::NODE_CERT)
}

pub(crate) fn node_key(dir: &Path) -> PathBuf {
    dir.join(certs::NODE_KEY)
}

/// A node's TLS settings from the certificates in `dir`: TLS on the client
/// port, mutual TLS between members.
pub(crate) fn serve_tls(dir: &Path) -> ferry_server::config::Tls {
    ferry_server::config::Tls {
        cert_file: Some(node_cert(dir)),
        key_file: Some(node_key(dir)),
        trusted_ca_file: Some(ca(dir)),
        peer_cert_file: Some(node_cert(dir)),
        peer_key_file: Some(node_key(dir)),
        peer_trusted_ca_file: Some(ca(dir)),
        ..ferry_server::config::Tls::default()
    }
}

/// Client options that verify the servers against `dir`'s CA, as root
/// (once [`enable_auth`] has run) or without credentials.
pub(crate) fn client_options(dir: &Path, as_root: bool) -> ClientOptions {
    ClientOptions {
        tls: Some(TlsOptions::from_files(&ca(dir), None).expect("read CA")),
        credentials: as_root.then(|| Credentials {
            user: "root".into(),
            password: ROOT_PASSWORD.into(),
        }),
        ..ClientOptions::default()
    }
}

/// Creates `root` with [`ROOT_PASSWORD`] and turns auth on, through
/// `client` (auth still off).
pub(crate) async fn enable_auth(client: &Client) {
    let channel = client.leader_channel().await.expect("leader channel");
    let mut auth = pb::auth_client::AuthClient::new(channel);
    auth.user_add(pb::UserAddRequest {
        name: "root".into(),
        password: ROOT_PASSWORD.into(),
        no_password: false,
    })
    .await
    .expect("add root");
    auth.user_grant_role(pb::UserRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .expect("grant root");
    auth.enable(pb::AuthEnableRequest {})
        .await
        .expect("enable auth");
}
