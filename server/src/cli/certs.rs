//! `ferry certs`: development certificates (see [`crate::certs`]).

use super::exit;
use crate::certs;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a CA: ca.crt and ca.key in --certs-dir.
    CreateCa {
        #[arg(long)]
        certs_dir: PathBuf,
        #[arg(long)]
        overwrite: bool,
    },
    /// Make node.crt and node.key, signed by the CA of --certs-dir, for
    /// the names and IP addresses the node is dialed by.
    CreateNode {
        #[arg(required = true)]
        hosts: Vec<String>,
        #[arg(long)]
        certs_dir: PathBuf,
        /// The certificate's common name (for --peer-cert-allowed-cn).
        #[arg(long, default_value = "node")]
        common_name: String,
        #[arg(long)]
        overwrite: bool,
    },
    /// Make client.USER.crt and client.USER.key: a client certificate
    /// whose common name is USER (for --client-cert-auth).
    CreateClient {
        user: String,
        #[arg(long)]
        certs_dir: PathBuf,
        #[arg(long)]
        overwrite: bool,
    },
}

pub fn certs(command: CertsCommand) -> i32 {
    let made = match command {
        CertsCommand::CreateCa {
            certs_dir,
            overwrite,
        } => certs::create_ca(&certs_dir, overwrite).map(|()| certs_dir.join(certs::CA_CERT)),
        CertsCommand::CreateNode {
            hosts,
            certs_dir,
            common_name,
            overwrite,
        } => certs::load_ca(&certs_dir)
            .and_then(|ca| ca.create_node(&certs_dir, &hosts, &common_name, overwrite))
            .map(|()| certs_dir.join(certs::NODE_CERT)),
        CertsCommand::CreateClient {
            user,
            certs_dir,
            overwrite,
        } => certs::load_ca(&certs_dir)
            .and_then(|ca| ca.create_client(&certs_dir, &user, overwrite))
            .map(|()| certs::client_cert(&certs_dir, &user)),
    };
    match made {
        Ok(path) => {
            println!("wrote {}", path.display());
            exit::OK
        }
        Err(certs::CertError::Exists(path)) => {
            eprintln!(
                "error: {} exists (pass --overwrite to replace it)",
                path.display()
            );
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}
