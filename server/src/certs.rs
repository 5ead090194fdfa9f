//! Development certificates, as `cockroach cert` makes them: a CA, node
//! certificates (server and client use, for the client port and for
//! mutual TLS between members) and client certificates whose common name
//! is a user.
//!
//! Files, all PEM in one directory: `ca.crt`, `ca.key`, `node.crt`,
//! `node.key`, `client.USER.crt`, `client.USER.key`. Keys are written
//! with mode 0600 and never overwritten unless asked. Production
//! deployments bring their own PKI; Ferry only reads PEM files.

use chrono::Datelike;
use ferry_engine::fs::{FileSystem, OsFs};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

/// Years a CA is valid; node and client certificates get half that.
const CA_YEARS: i32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists (pass --overwrite to replace it)")]
    Exists(PathBuf),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("a user name must have 1 to 256 bytes of letters, digits, '-', '_' or '.'")]
    BadUser,
}

/// The client certificate's file of `user`.
pub fn client_cert(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("client.{user}.crt"))
}

pub fn client_key(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("client.{user}.key"))
}

fn validity(params: &mut CertificateParams, years: i32) {
    let today = chrono::Utc::now().date_naive();
    // From yesterday: a clock a little behind must not find it not yet valid.
    let yesterday = today.pred_opt().unwrap_or(today);
    params.not_before = rcgen::date_time_ymd(
        yesterday.year(),
        yesterday.month() as u8,
        yesterday.day() as u8,
    );
    params.not_after = rcgen::date_time_ymd(
        today.year() + years,
        today.month() as u8,
        today.day().min(28) as u8,
    );
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn write(path: &Path, contents: &str, secret: bool, overwrite: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    if !overwrite && OsFs.exists(path) {
        return Err(CertError::Exists(path.to_owned()));
    }
    // Under a temporary name, renamed over the old one: a server
    // reloading its certificate never reads half of one.
    OsFs.write_atomic_as(path, contents.as_bytes(), secret)
        .map_err(io)
}

/// A CA loaded to sign with.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Makes a CA in `dir`.
pub fn create_ca(dir: &Path, overwrite: bool) -> Result<(), CertError> {
    OsFs.create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Ferry CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_YEARS);
    let cert = params.self_signed(&key)?;
    write(&dir.join(CA_KEY), &key.serialize_pem(), true, overwrite)?;
    write(&dir.join(CA_CERT), &cert.pem(), false, overwrite)
}

/// The CA of `dir` (`ca.crt` and `ca.key`).
pub fn load_ca(dir: &Path) -> Result<Ca, CertError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    let key = KeyPair::from_pem(&read(CA_KEY)?)?;
    // The issuer as rcgen needs it: the CA's own name and key.
    let cert = CertificateParams::from_ca_cert_pem(&read(CA_CERT)?)?.self_signed(&key)?;
    Ok(Ca { cert, key })
}

impl Ca {
    fn sign(
        &self,
        mut params: CertificateParams,
        usage: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), CertError> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usage;
        validity(&mut params, CA_YEARS / 2);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A node certificate for `hosts` (DNS names and IP addresses, as the
    /// node is dialed), usable to serve and to dial peers.
    pub fn create_node(
        &self,
        dir: &Path,
        hosts: &[String],
        common_name: &str,
        overwrite: bool,
    ) -> Result<(), CertError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name(common_name);
        let (cert, key) = self.sign(
            params,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        write(&dir.join(NODE_KEY), &key, true, overwrite)?;
        write(&dir.join(NODE_CERT), &cert, false, overwrite)
    }

    /// A client certificate for `user` (its common name).
    pub fn create_client(&self, dir: &Path, user: &str, overwrite: bool) -> Result<(), CertError> {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if user.is_empty() || user.len() > 256 || !user.chars().all(plain) || user.starts_with('.')
        {
            // It becomes part of a file name.
            return Err(CertError::BadUser);
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user);
        let (cert, key) = self.sign(params, vec![ExtendedKeyUsagePurpose::ClientAuth])?;
        write(&client_key(dir, user), &key, true, overwrite)?;
        write(&client_cert(dir, user), &cert, false, overwrite)
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    /// A key is never written into a file that was there before: a
    /// leftover (or planted) partial file readable by others keeps its
    /// permissions if opened, and the key with it.
    #[cfg(unix)]
    #[test]
    fn a_key_is_private_even_over_a_leftover_partial_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(super::CA_KEY);
        let partial = key.with_extension("tmp");
        std::fs::write(&partial, b"left by a crash").unwrap();
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::create_ca(dir.path(), false).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the CA key is {mode:o}");
        assert!(!partial.exists());
        let cert = dir.path().join(super::CA_CERT);
        assert!(std::fs::read_to_string(cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        // Not overwritten unless asked.
        assert!(matches!(
            super::create_ca(dir.path(), false),
            Err(super::CertError::Exists(_))
        ));
    }

    /// A subject of one common name names its user; one of two names
    /// none (readers disagree on which counts).
    #[test]
    fn a_certificate_with_two_common_names_names_no_user() {
        let der = |names: &[&str]| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            let mut subject = DistinguishedName::new();
            for (at, name) in names.iter().enumerate() {
                // rcgen keeps one attribute per type: a second common name
                // goes in under its OID (2.5.4.3) as a type of its own.
                let kind = match at {
                    0 => DnType::CommonName,
                    _ => DnType::CustomDnType(vec![2, 5, 4, 3]),
                };
                subject.push(kind, *name);
            }
            params.distinguished_name = subject;
            let key = KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(
            ferry_replication::tls::common_name(&der(&["alice"])).as_deref(),
            Some("alice")
        );
        assert_eq!(
            ferry_replication::tls::common_name(&der(&["alice", "root"])),
            None
        );
    }
}
