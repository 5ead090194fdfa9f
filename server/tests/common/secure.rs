//! Certificates and users for tests of secure clusters.

use ferry_client::{pb, Client, ClientOptions, Credentials, TlsOptions};
use ferry_server::certs;
use std::path::{Path, PathBuf};

/// The root user's password in secure test clusters.
pub const ROOT_PASSWORD: &str = "root-secret-7f3a9";

/// A CA in `dir` with a node certificate for loopback and client
/// certificates for `root` and `reader`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        certs::create_ca(dir, false).unwrap();
        let ca = certs::load_ca(dir).unwrap();
        ca.create_node(
            dir,
            &["127.0.0.1".into(), "localhost".into()],
            "node",
            false,
        )
        .unwrap();
        for user in ["root", "reader"] {
            ca.create_client(dir, user, false).unwrap();
        }
        Pki {
            dir: dir.to_owned(),
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    pub fn ca(&self) -> String {
        self.file(certs::CA_CERT)
    }

    /// `ferry serve` flags: TLS on the client port (client certificates
    /// from this CA accepted, not required) and mutual TLS between members.
    pub fn serve_flags(&self) -> Vec<String> {
        let mut flags = self.client_port_flags();
        flags.extend(self.peer_flags());
        flags
    }

    pub fn client_port_flags(&self) -> Vec<String> {
        vec![
            "--cert-file".into(),
            self.file(certs::NODE_CERT),
            "--key-file".into(),
            self.file(certs::NODE_KEY),
            "--trusted-ca-file".into(),
            self.ca(),
        ]
    }

    pub fn peer_flags(&self) -> Vec<String> {
        vec![
            "--peer-cert-file".into(),
            self.file(certs::NODE_CERT),
            "--peer-key-file".into(),
            self.file(certs::NODE_KEY),
            "--peer-trusted-ca-file".into(),
            self.ca(),
        ]
    }

    pub fn tls(&self) -> TlsOptions {
        TlsOptions::from_files(&self.dir.join(certs::CA_CERT), None).unwrap()
    }

    /// TLS with `user`'s client certificate.
    pub fn tls_as(&self, user: &str) -> TlsOptions {
        TlsOptions::from_files(
            &self.dir.join(certs::CA_CERT),
            Some((
                &certs::client_cert(&self.dir, user),
                &certs::client_key(&self.dir, user),
            )),
        )
        .unwrap()
    }

    /// The CLI's flags to connect as `user` with `password`.
    pub fn cli_flags(&self, endpoints: &[String], user: &str, password: &str) -> Vec<String> {
        vec![
            "--endpoints".into(),
            endpoints.join(","),
            "--cacert".into(),
            self.ca(),
            "--user".into(),
            format!("{user}:{password}"),
        ]
    }
}

/// Client options over `tls`, as `user` with `password` if given.
pub fn options(tls: TlsOptions, user: Option<(&str, &str)>) -> ClientOptions {
    ClientOptions {
        tls: Some(tls),
        credentials: user.map(|(user, password)| Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..super::options()
    }
}

/// Connects with `options` once a leader is known.
pub async fn connect(endpoints: Vec<String>, options: ClientOptions) -> Client {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Client::connect_with(endpoints.clone(), options.clone()).await {
            Ok(client) if client.leader().is_some() => return client,
            result => assert!(
                std::time::Instant::now() < deadline,
                "no leader in 30 s: {:?}",
                result.err()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Creates `root` (role `root`, [`ROOT_PASSWORD`]) and turns auth on,
/// through `client` (auth still off).
pub async fn enable_auth(client: &Client) {
    let mut auth = pb::auth_client::AuthClient::new(client.leader_channel().await.unwrap());
    auth.user_add(pb::UserAddRequest {
        name: "root".into(),
        password: ROOT_PASSWORD.into(),
        no_password: false,
    })
    .await
    .unwrap();
    auth.user_grant_role(pb::UserRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.enable(pb::AuthEnableRequest {}).await.unwrap();
}
