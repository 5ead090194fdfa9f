//! Security with real `ferry serve` processes: TLS refusals, mutual TLS
//! between members, users and roles, tokens, secrets at rest and in logs,
//! certificate rotation, names from a lying server, and the bounds a
//! client cannot exceed.

mod common;

use common::secure::{self, Pki, ROOT_PASSWORD};
use common::{ferry, ProcessCluster};
use ferry_client::pb::{self, auth_client::AuthClient, maintenance_client::MaintenanceClient};
use ferry_client::{Client, ClientOptions, Error, TlsOptions, Txn};
use futures_util::StreamExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

fn quick(options: ClientOptions) -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(3),
        ..options
    }
}

/// A one-node cluster with TLS and mutual TLS (`extra` flags too), auth
/// on, and a root client.
async fn secure_node(pki: &Pki, extra: &[&str]) -> (ProcessCluster, Client) {
    let cluster = ProcessCluster::start_with(1, |_| {
        let mut flags = pki.serve_flags();
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    });
    let tls = if extra.contains(&"--client-cert-auth") {
        pki.tls_as("root")
    } else {
        pki.tls()
    };
    let setup = secure::connect(cluster.endpoints(), secure::options(tls.clone(), None)).await;
    secure::enable_auth(&setup).await;
    let root = secure::connect(
        cluster.endpoints(),
        secure::options(tls, Some(("root", ROOT_PASSWORD))),
    )
    .await;
    (cluster, root)
}

async fn admin(client: &Client) -> AuthClient<ferry_client::AuthChannel> {
    AuthClient::new(client.leader_channel().await.unwrap())
}

/// Adds `user` with `password` and a role of the same name holding
/// `permissions` (kind, key, range end). (A new channel for each call: a
/// raw stub's token is not renewed, and some tests make it short-lived.)
async fn add_user(root: &Client, user: &str, password: &str, permissions: &[(i32, &[u8], &[u8])]) {
    admin(root)
        .await
        .user_add(pb::UserAddRequest {
            name: user.into(),
            password: password.into(),
            no_password: false,
        })
        .await
        .unwrap();
    admin(root)
        .await
        .role_add(pb::RoleRequest { name: user.into() })
        .await
        .unwrap();
    for (kind, key, range_end) in permissions {
        admin(root)
            .await
            .role_grant_permission(pb::RoleGrantRequest {
                role: user.into(),
                permission: Some(pb::Permission {
                    kind: *kind,
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                }),
            })
            .await
            .unwrap();
    }
    admin(root)
        .await
        .user_grant_role(pb::UserRoleRequest {
            user: user.into(),
            role: user.into(),
        })
        .await
        .unwrap();
}

const READ: i32 = pb::permission::Kind::Read as i32;
const WRITE: i32 = pb::permission::Kind::Write as i32;
const READWRITE: i32 = pb::permission::Kind::Readwrite as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_refuses_plaintext_clients_and_certificates_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"));
    let other = Pki::create(&dir.path().join("other"));
    let cluster = ProcessCluster::start_with(1, |_| {
        let mut flags = pki.client_port_flags();
        flags.push("--client-cert-auth".into());
        flags
    });
    let endpoints = cluster.endpoints();
    let good = secure::connect(endpoints.clone(), secure::options(pki.tls_as("root"), None)).await;
    let revision = good.put("k", "v").await.unwrap();

    let refused = |options: ClientOptions, what: &'static str| {
        let endpoints = endpoints.clone();
        async move {
            let attempt = Client::connect_with(endpoints, quick(options)).await;
            assert!(attempt.is_err(), "{what} was let in");
        }
    };
    refused(common::options(), "a plaintext client").await;
    refused(
        secure::options(other.tls_as("root"), None),
        "a client that trusts another CA",
    )
    .await;
    refused(
        secure::options(pki.tls(), None),
        "a client without a certificate",
    )
    .await;
    // The right CA trusted, but a certificate the other CA signed.
    let forged = TlsOptions {
        identity: other.tls_as("root").identity,
        ..pki.tls()
    };
    refused(secure::options(forged, None), "a certificate of another CA").await;

    assert_eq!(good.get("k").await.unwrap().unwrap().mod_revision, revision);
    let log = cluster.log(1);
    assert!(log.contains("TLS connection refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_peer_certificate_is_from_another_ca_can_neither_join_nor_feed_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"));
    let other = Pki::create(&dir.path().join("other"));
    let mut cluster = ProcessCluster::start_with(3, |_| pki.serve_flags());
    let client = secure::connect(cluster.endpoints(), secure::options(pki.tls(), None)).await;
    client.put("before", "1").await.unwrap();
    let before = client.status().await.unwrap();

    // Node 4 has certificates of another CA: added as a learner, it never
    // connects, and `cluster add` says so within its deadline.
    cluster.new_node(4);
    let rogue_flags = other.serve_flags();
    cluster.spawn_with(4, false, &[], &rogue_flags);
    let endpoints = cluster.endpoints()[..3].join(",");
    let (raft4, client4) = (cluster.raft_addr(4), cluster.client_addr(4));
    let (code, out, err) = ferry(&[
        "cluster",
        "add",
        "--id",
        "4",
        "--raft-addr",
        &raft4,
        "--client-addr",
        &client4,
        "--timeout-secs",
        "4",
        "--endpoints",
        &endpoints,
        "--cacert",
        &pki.ca(),
    ]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("never connected"), "{err}");
    let status = client.status().await.unwrap();
    let learner = status.members.iter().find(|m| m.id == 4).unwrap();
    assert!(learner.never_contacted && learner.matched_index == 0);

    // Node 5, also of the other CA, forms a cluster of its own and adds
    // node 1 as its learner: as its leader, it sends node 1 entries of its
    // own term, which node 1 never accepts.
    cluster.new_node(5);
    cluster.spawn_with(5, true, &[], &rogue_flags);
    let rogue = secure::connect(
        vec![cluster.client_addr(5)],
        secure::options(other.tls(), None),
    )
    .await;
    let mut rogue_cluster =
        pb::cluster_client::ClusterClient::new(rogue.leader_channel().await.unwrap());
    rogue_cluster
        .member_add(pb::MemberAddRequest {
            id: 1,
            raft_addr: cluster.raft_addr(1),
            client_addr: cluster.client_addr(1),
            wait: false,
        })
        .await
        .unwrap();
    rogue.put("forged", "x").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The cluster went on as if neither existed.
    let after = client.status().await.unwrap();
    assert_eq!(
        (after.leader_id, after.term),
        (before.leader_id, before.term)
    );
    client.put("after", "2").await.unwrap();
    assert!(client.get("forged").await.unwrap().is_none());
    assert_eq!(client.get("before").await.unwrap().unwrap().value, b"1");
    let log = cluster.log(1);
    assert!(
        log.contains("TLS connection refused") && log.contains("port=\"peer\""),
        "{log}"
    );
    assert!(cluster.log(5).contains("cannot reach peer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cannot_write_nor_read_or_watch_outside_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    // Client certificates required: `reader`'s certificate makes it reader.
    let (cluster, root) = secure_node(&pki, &["--client-cert-auth"]).await;
    add_user(&root, "reader", "reader-pw-1", &[(READ, b"app/", b"app0")]).await;
    let written = root.put("app/x", "1").await.unwrap();
    root.put("other/y", "1").await.unwrap();

    let by_cert = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls_as("reader"), None),
    )
    .await;
    // A token wins over the certificate: this one is reader too.
    let by_password = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls_as("root"), Some(("reader", "reader-pw-1"))),
    )
    .await;
    for reader in [&by_cert, &by_password] {
        let denied = |result: Result<_, Error>| {
            assert!(
                matches!(result, Err(Error::PermissionDenied(_))),
                "{:?}",
                result.err()
            );
        };
        denied(reader.put("app/x", "2").await.map(drop));
        denied(reader.delete("app/x").await.map(drop));
        denied(
            reader
                .txn(Txn::new().when_absent("app/none").then_put("app/x", "3"))
                .await
                .map(drop),
        );
        denied(reader.get("other/y").await.map(drop));
        denied(reader.prefix("", 10).await.map(drop));
        denied(reader.range("app/", "b", 10).await.map(drop));
        denied(reader.compact(1).await.map(drop));
        let kv = reader.get("app/x").await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"1"[..], written));
        assert_eq!(reader.prefix("app/", 10).await.unwrap().kvs.len(), 1);

        let mut outside = reader.watch_prefix("other/", 0);
        let refused = tokio::time::timeout(Duration::from_secs(10), outside.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(refused, Err(Error::PermissionDenied(_))),
            "{refused:?}"
        );
    }
    let mut inside = by_cert.watch_prefix("app/", written + 1);
    let revision = root.put("app/z", "1").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), inside.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kv.unwrap().mod_revision, revision);
    assert_eq!(
        root.get("app/x").await.unwrap().unwrap().mod_revision,
        written
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_the_root_role_cannot_administer_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let (cluster, root) = secure_node(&pki, &[]).await;
    // Every key, read and write: still not root.
    add_user(&root, "ops", "ops-pw-1", &[(READWRITE, b"", b"\0")]).await;
    let ops = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("ops", "ops-pw-1"))),
    )
    .await;
    ops.put("k", "v").await.unwrap();
    let members = root.status().await.unwrap().members;

    let channel = ops.leader_channel().await.unwrap();
    let mut cluster_api = pb::cluster_client::ClusterClient::new(channel.clone());
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut auth = AuthClient::new(channel);
    let member = || pb::MemberRequest { id: 1 };
    let code = |status: tonic::Status| status.code();
    let denied = vec![
        (
            "MemberAdd",
            cluster_api
                .member_add(pb::MemberAddRequest {
                    id: 9,
                    raft_addr: "127.0.0.1:1".into(),
                    client_addr: "127.0.0.1:2".into(),
                    wait: false,
                })
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "Promote",
            cluster_api.promote(member()).await.map(drop).map_err(code),
        ),
        (
            "Remove",
            cluster_api.remove(member()).await.map(drop).map_err(code),
        ),
        (
            "TransferLeader",
            cluster_api
                .transfer_leader(member())
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "Checkpoint",
            maintenance
                .checkpoint(pb::CheckpointRequest::default())
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "Snapshot",
            maintenance
                .snapshot(pb::SnapshotRequest::default())
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "ExportState",
            maintenance
                .export_state(pb::ExportStateRequest::default())
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "ExportHistory",
            maintenance
                .export_history(pb::ExportHistoryRequest::default())
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "Compact",
            maintenance
                .compact(pb::CompactRequest { revision: 2 })
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "Defragment",
            maintenance
                .defragment(pb::DefragmentRequest::default())
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "UserAdd",
            auth.user_add(pb::UserAddRequest {
                name: "x".into(),
                password: "y".into(),
                no_password: false,
            })
            .await
            .map(drop)
            .map_err(code),
        ),
        (
            "UserGrantRole",
            auth.user_grant_role(pb::UserRoleRequest {
                user: "ops".into(),
                role: "root".into(),
            })
            .await
            .map(drop)
            .map_err(code),
        ),
        (
            "Disable",
            auth.disable(pb::AuthDisableRequest {})
                .await
                .map(drop)
                .map_err(code),
        ),
        (
            "UserList",
            auth.user_list(pb::UserListRequest {})
                .await
                .map(drop)
                .map_err(code),
        ),
    ];
    for (call, result) in denied {
        assert_eq!(result, Err(Code::PermissionDenied), "{call}");
    }
    // Status is open to any user, but not the data directory.
    let status = maintenance
        .status(pb::MaintenanceStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(status.data_dir.is_empty());
    let root_status = MaintenanceClient::new(root.leader_channel().await.unwrap())
        .status(pb::MaintenanceStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!root_status.data_dir.is_empty());

    // The CLI says so too, and nothing changed.
    let mut args = vec!["cluster", "transfer-leader", "1"];
    let flags = pki.cli_flags(&cluster.endpoints(), "ops", "ops-pw-1");
    args.extend(flags.iter().map(String::as_str));
    let (code, out, err) = ferry(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert_eq!(root.status().await.unwrap().members, members);
    assert!(root.auth_status().await.unwrap().enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_the_sdk_renews_them_unnoticed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let (cluster, root) = secure_node(&pki, &["--auth-token-ttl-secs", "2"]).await;
    add_user(&root, "app", "app-pw-1", &[(READWRITE, b"app/", b"app0")]).await;

    // A raw token works, then expires.
    let channel = root.leader_channel().await.unwrap();
    let token = AuthClient::new(channel.clone())
        .authenticate(pb::AuthenticateRequest {
            name: "app".into(),
            password: "app-pw-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(token.ttl_seconds, 2);
    let raw_get = |token: String| {
        let endpoint = cluster.client_addr(1);
        let tls = pki.tls();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{endpoint}"))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
                        .domain_name("127.0.0.1"),
                )
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut request = tonic::Request::new(pb::GetRequest {
                key: b"app/k".to_vec(),
                consistency: pb::Consistency::Linearizable as i32,
            });
            request
                .metadata_mut()
                .insert(ferry_client::TOKEN_METADATA, token.parse().unwrap());
            pb::kv_client::KvClient::new(channel).get(request).await
        }
    };
    raw_get(token.token.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired = raw_get(token.token.clone()).await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert!(expired.message().contains("expired"), "{expired:?}");
    // A forged token is no better.
    let forged = raw_get(format!("{}00", &token.token[..token.token.len() - 2])).await;
    assert_eq!(forged.unwrap_err().code(), Code::Unauthenticated);

    // The SDK renews its token; calls and a watch go on across expiries.
    let app = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("app", "app-pw-1"))),
    )
    .await;
    // From a revision read first: a watch "from now" would start when its
    // stream opens, after a put on a loaded machine.
    let now = app.prefix("app/", 1).await.unwrap().revision;
    let mut watch = app.watch_prefix("app/", now + 1);
    let mut revisions = Vec::new();
    for i in 0..4 {
        revisions.push(app.put(format!("app/{i}"), "v").await.unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for revision in revisions {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.kv.unwrap().mod_revision, revision);
    }

    // A new password ends the tokens issued before it.
    let fresh = AuthClient::new(channel.clone())
        .authenticate(pb::AuthenticateRequest {
            name: "app".into(),
            password: "app-pw-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    admin(&root)
        .await
        .user_change_password(pb::UserPasswordRequest {
            name: "app".into(),
            password: "app-pw-2".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        raw_get(fresh).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(matches!(
        app.put("app/late", "v").await,
        Err(Error::Unauthenticated(_))
    ));
}

/// Every file under `dir`, recursively, as bytes.
fn files(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_is_kept_in_clear_in_a_data_directory_or_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"));
    // Debug logs, so that every line the servers can write is there to
    // be searched.
    let env = vec![(
        "RUST_LOG".to_owned(),
        "info,ferry_server=debug,ferry_replication=debug,openraft=debug".to_owned(),
    )];
    let mut cluster = ProcessCluster::start_configured(3, |_| pki.serve_flags(), env);
    let setup = secure::connect(cluster.endpoints(), secure::options(pki.tls(), None)).await;
    secure::enable_auth(&setup).await;
    let root = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("root", ROOT_PASSWORD))),
    )
    .await;
    let passwords = ["first-Secret-91", "second-Secret-92", "third-Secret-93"];
    add_user(&root, "alice", passwords[0], &[(READWRITE, b"a/", b"a0")]).await;
    let flags = pki.cli_flags(&cluster.endpoints(), "root", ROOT_PASSWORD);
    let mut args = vec!["user", "passwd", "alice"];
    args.extend(flags.iter().map(String::as_str));
    let output = std::process::Command::new(common::FERRY)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{}\n", passwords[1]).as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let alice = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("alice", passwords[1]))),
    )
    .await;
    alice.put("a/1", "v").await.unwrap();
    // Refused attempts are not logged with their password either.
    let wrong = Client::connect_with(
        cluster.endpoints(),
        quick(secure::options(pki.tls(), Some(("alice", passwords[2])))),
    )
    .await;
    assert!(matches!(wrong, Err(Error::Unauthenticated(_))));
    // Every member has applied the changes, and flushed them to tables too.
    root.put("last", "1").await.unwrap();
    MaintenanceClient::new(root.leader_channel().await.unwrap())
        .checkpoint(pb::CheckpointRequest::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        assert_eq!(cluster.sigterm(id), Some(0), "{}", cluster.log(id));
    }

    let mut everything = Vec::new();
    files(cluster.root.path(), &mut everything);
    let mut hashes = 0;
    for (path, bytes) in &everything {
        for password in passwords.iter().chain([&ROOT_PASSWORD]) {
            assert!(
                !contains(bytes, password.as_bytes()),
                "{password} in {}",
                path.display()
            );
        }
        hashes += usize::from(contains(bytes, b"$argon2id$"));
    }
    // The search looked where the users are: their hashes are there.
    assert!(hashes >= 3, "found argon2id hashes in {hashes} files");
    let logs = everything
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "log"));
    assert!(logs.map(|(_, b)| b.len()).sum::<usize>() > 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(&dir.path().join("pki"));
    let next = Pki::create(&dir.path().join("next"));
    // The node reads its certificate from a directory of its own.
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    for file in ["node.crt", "node.key"] {
        std::fs::copy(pki.dir.join(file), live.join(file)).unwrap();
    }
    let live_file = |name: &str| live.join(name).to_string_lossy().into_owned();
    let cluster = ProcessCluster::start_with(1, |_| {
        vec![
            "--cert-file".into(),
            live_file("node.crt"),
            "--key-file".into(),
            live_file("node.key"),
        ]
    });
    let old = secure::connect(cluster.endpoints(), secure::options(pki.tls(), None)).await;
    old.put("k", "1").await.unwrap();

    // A new certificate from another CA, moved into place as deployment
    // tools do (a new file renamed over the old one).
    for file in ["node.key", "node.crt"] {
        let staged = live.join(format!("{file}.new"));
        std::fs::copy(next.dir.join(file), &staged).unwrap();
        std::fs::rename(&staged, live.join(file)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let rotated = loop {
        let attempt = Client::connect_with(
            cluster.endpoints(),
            quick(secure::options(next.tls(), None)),
        )
        .await;
        match attempt {
            Ok(client) => break client,
            Err(error) => assert!(
                Instant::now() < deadline,
                "never served the new certificate: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rotated.get("k").await.unwrap().unwrap().value, b"1");
    // New connections of clients that trust only the old CA are refused.
    let stale =
        Client::connect_with(cluster.endpoints(), quick(secure::options(pki.tls(), None))).await;
    assert!(stale.is_err());
    assert!(cluster.log(1).contains("TLS files changed: reloaded"));
}

/// A Maintenance service that streams an export whose file names it
/// chooses, as a lying or compromised server might.
#[derive(Clone)]
struct LyingExports {
    names: Vec<String>,
}

type Chunks = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<pb::ExportChunk, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for LyingExports {
    type SnapshotStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::SnapshotChunk, tonic::Status>> + Send>,
    >;
    type ExportStateStream = Chunks;
    type ExportHistoryStream = Chunks;

    async fn checkpoint(
        &self,
        _: tonic::Request<pb::CheckpointRequest>,
    ) -> Result<tonic::Response<pb::CheckpointResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("checkpoint"))
    }
    async fn snapshot(
        &self,
        _: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<tonic::Response<Self::SnapshotStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("snapshot"))
    }
    async fn export_state(
        &self,
        _: tonic::Request<pb::ExportStateRequest>,
    ) -> Result<tonic::Response<Chunks>, tonic::Status> {
        Err(tonic::Status::unimplemented("export_state"))
    }
    async fn export_history(
        &self,
        _: tonic::Request<pb::ExportHistoryRequest>,
    ) -> Result<tonic::Response<Chunks>, tonic::Status> {
        use pb::export_chunk::Chunk;
        let data = b"not parquet".to_vec();
        let crc = crc32fast::hash(&data);
        let mut chunks = vec![Chunk::Info(pb::ExportInfo {
            revision: 1,
            estimated_bytes: 0,
        })];
        for name in &self.names {
            chunks.push(Chunk::File(name.clone()));
            chunks.push(Chunk::Data(data.clone()));
            chunks.push(Chunk::End(pb::ExportFileEnd {
                size: data.len() as u64,
                crc,
            }));
        }
        chunks.push(Chunk::Summary(pb::ExportSummary {
            rows: 0,
            files: self.names.len() as u32,
            bytes: 0,
            checksum: 0,
        }));
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(pb::ExportChunk { chunk: Some(c) })),
        );
        Ok(tonic::Response::new(Box::pin(stream)))
    }
    async fn compact(
        &self,
        _: tonic::Request<pb::CompactRequest>,
    ) -> Result<tonic::Response<pb::CompactResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("compact"))
    }
    async fn defragment(
        &self,
        _: tonic::Request<pb::DefragmentRequest>,
    ) -> Result<tonic::Response<pb::DefragmentResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("defragment"))
    }
    async fn status(
        &self,
        _: tonic::Request<pb::MaintenanceStatusRequest>,
    ) -> Result<tonic::Response<pb::MaintenanceStatusResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("status"))
    }
}

/// Serves `names` as an export on a free port; returns its address.
async fn lying_server(names: &[&str]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cluster = common::fake::OneMember::default();
    *cluster.addr.lock().unwrap() = addr.clone();
    let exports = LyingExports {
        names: names.iter().map(|s| s.to_string()).collect(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::cluster_server::ClusterServer::new(cluster))
            .add_service(pb::maintenance_server::MaintenanceServer::new(exports))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_a_lying_server_cannot_leave_the_directory_and_no_symlink_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "precious").unwrap();
    let export = dir.path().join("export");
    let export_arg = export.to_string_lossy().into_owned();
    let escape = format!("../outside/{}", "evil.parquet");
    let absolute = outside
        .join("absolute.parquet")
        .to_string_lossy()
        .into_owned();
    for names in [
        vec![escape.as_str()],
        vec!["part-000000.parquet", absolute.as_str()],
        vec!["..", "part-000000.parquet"],
        vec![".hidden"],
        vec!["part-000000.parquet", "part-000000.parquet"],
    ] {
        let addr = lying_server(&names).await;
        let arg = export_arg.clone();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            ferry(&["history", "export", &arg, "--endpoints", &addr])
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "{names:?} accepted: {out}{err}");
        assert!(!export.exists(), "{names:?} left {}", export.display());
        let mut left: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from("keep")], "{names:?}");
    }

    // The staging directory is a symlink to a directory elsewhere: it is
    // replaced, never written through.
    std::os::unix::fs::symlink(&outside, dir.path().join("export.partial")).unwrap();
    let addr = lying_server(&["part-000000.parquet"]).await;
    let export_arg2 = export_arg.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        ferry(&["history", "export", &export_arg2, "--endpoints", &addr])
    })
    .await
    .unwrap();
    // Whatever the outcome (the bytes are not Parquet), nothing outside changed.
    let mut left: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("keep")],
        "{code} {out}{err}"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "precious"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_over_huge_values_is_paged_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::single_node(dir.path(), Default::default()).await;
    let value = vec![7u8; 1 << 20];
    for i in 0..9 {
        client.put(format!("big/{i}"), value.clone()).await.unwrap();
    }
    let limits = ferry_server::config::Limits::default();
    let mut page = client.prefix("big/", 0).await.unwrap();
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let bytes: usize = page
            .kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        assert!(
            bytes <= limits.max_range_bytes + limits.max_value_bytes + 64,
            "a page of {bytes} bytes"
        );
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.continuation.take() {
            Some(token) => page = client.range_after("big/", token, 0).await.unwrap(),
            None => break,
        }
    }
    let expected: Vec<Vec<u8>> = (0..9).map(|i| format!("big/{i}").into_bytes()).collect();
    assert_eq!(keys, expected);
    assert!(pages >= 4, "{pages} pages");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_millions_of_keys_does_not_delay_writes() {
    // Enough for each count to take seconds in a debug build (the test
    // checks it did), few enough to load quickly.
    const KEYS: u64 = 3_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcessCluster {
        root: dir,
        nodes: Vec::new(),
        extra_args: Vec::new(),
        env: Vec::new(),
    };
    cluster.new_node(1);
    let data_dir = cluster.nodes[0].dir.clone();
    let member = ferry_replication::types::FerryNode {
        raft_addr: cluster.raft_addr(1),
        client_addr: cluster.client_addr(1),
    };
    let loaded = ferry_replication::export::restore::from_rows(
        &ferry_engine::fs::OsFs::shared(),
        &data_dir,
        1,
        member,
        (0..KEYS).map(|i| (format!("count/{i:010}").into_bytes(), b"v".to_vec())),
    )
    .await
    .unwrap();
    assert_eq!(loaded.rows, KEYS);
    cluster.spawn(1, false, &[]);
    let client = common::connect(cluster.endpoints()).await;
    // Counts take long (unoptimized, on a busy machine): one attempt each.
    let patient = Client::connect_with(
        cluster.endpoints(),
        ClientOptions {
            call_timeout: Duration::from_secs(600),
            attempt_timeout: Duration::from_secs(600),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();

    // Two counts at once: on the async runtime (two threads on the CI's
    // two cores) they would hold all of it; on blocking threads, writes
    // go on.
    let counts: Vec<_> = (0..2)
        .map(|_| {
            let client = patient.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let page = client
                    .range_request(pb::RangeRequest {
                        prefix: b"count/".to_vec(),
                        count_only: true,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                (page.count, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut writes = 0;
    while !counts.iter().all(|c| c.is_finished()) {
        let started = Instant::now();
        client.put("during", writes.to_string()).await.unwrap();
        slowest = slowest.max(started.elapsed());
        writes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut shortest_count = Duration::MAX;
    for count in counts {
        let (counted, took) = count.await.unwrap();
        assert_eq!(counted, KEYS);
        shortest_count = shortest_count.min(took);
    }
    // The election timeout of the test servers is 300-600 ms.
    assert!(
        slowest < Duration::from_millis(600),
        "a write took {slowest:?} during the counts"
    );
    assert!(
        shortest_count > Duration::from_millis(600) && writes >= 5,
        "the counts ({shortest_count:?}, {writes} writes meanwhile) were too quick to show anything"
    );
}

/// Leases go through the same gate: no credential, no lease; a put with a
/// lease is a put (checked on its key); revoking deletes the lease's keys,
/// so it needs write permission on each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_calls_are_authenticated_and_a_revoke_needs_write_on_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let (cluster, root) = secure_node(&pki, &[]).await;
    add_user(
        &root,
        "worker",
        "worker-pw-1",
        &[(READWRITE, b"jobs/", b"jobs0")],
    )
    .await;
    let worker = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("worker", "worker-pw-1"))),
    )
    .await;
    let anonymous =
        Client::connect_with(cluster.endpoints(), secure::options(pki.tls(), None)).await;
    let refused = match anonymous {
        Ok(anonymous) => anonymous
            .lease_grant(Duration::from_secs(60))
            .await
            .map(drop),
        Err(error) => Err(error),
    };
    assert!(
        matches!(refused, Err(Error::Unauthenticated(_))),
        "{refused:?}"
    );
    let lease = worker.lease_grant(Duration::from_secs(60)).await.unwrap();
    worker.put_with_lease("jobs/1", "w", lease).await.unwrap();
    assert!(matches!(
        worker.put_with_lease("admin/1", "w", lease).await,
        Err(Error::PermissionDenied(_))
    ));
    // Root attaches a key the worker may not write: now the worker cannot
    // revoke the lease, and nothing is deleted.
    root.put_with_lease("admin/2", "r", lease).await.unwrap();
    assert!(matches!(
        worker.lease_revoke(lease).await,
        Err(Error::PermissionDenied(_))
    ));
    // Nor may it learn that key's name from the lease.
    assert!(matches!(
        worker.lease_time_to_live(lease, true).await,
        Err(Error::PermissionDenied(_))
    ));
    let info = worker.lease_time_to_live(lease, false).await.unwrap();
    assert!(info.keys.is_empty());
    let info = root.lease_time_to_live(lease, true).await.unwrap();
    assert_eq!(info.keys, [b"admin/2".to_vec(), b"jobs/1".to_vec()]);
    assert!(root.get("jobs/1").await.unwrap().is_some());
    assert!(root.get("admin/2").await.unwrap().is_some());
    root.lease_revoke(lease).await.unwrap();
    assert!(root.get("jobs/1").await.unwrap().is_none());
    assert!(root.get("admin/2").await.unwrap().is_none());

    // A write-only user may write, but not see the values it replaces.
    add_user(
        &root,
        "scribe",
        "scribe-pw-1",
        &[(WRITE, b"jobs/", b"jobs0")],
    )
    .await;
    let scribe = secure::connect(
        cluster.endpoints(),
        secure::options(pki.tls(), Some(("scribe", "scribe-pw-1"))),
    )
    .await;
    root.put("jobs/2", "secret").await.unwrap();
    assert!(matches!(
        scribe.replace("jobs/2", "x").await,
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(
        scribe.remove("jobs/2").await,
        Err(Error::PermissionDenied(_))
    ));
    assert_eq!(root.get("jobs/2").await.unwrap().unwrap().value, b"secret");
    scribe.put("jobs/2", "x").await.unwrap();
    assert!(scribe.delete("jobs/2").await.unwrap());
}

/// One unary call of etcd's API (the server builds no etcd client stubs).
/// A plain gRPC client of the server at `addr`, ready for a call.
async fn etcd_grpc(addr: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let mut grpc = tonic::client::Grpc::new(common::channel(addr).await);
    grpc.ready().await.unwrap();
    grpc
}

async fn etcd_call<Req, Resp>(
    addr: &str,
    path: &'static str,
    request: Req,
    token: Option<&str>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = etcd_grpc(addr).await;
    let mut request = tonic::Request::new(request);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(request, path, tonic_prost::ProstCodec::default())
        .await
        .map(tonic::Response::into_inner)
}

async fn etcd_put(addr: &str, token: &str, key: &str) -> Result<(), tonic::Status> {
    use ferry_server::etcd::pb::etcdserverpb::{PutRequest, PutResponse};
    let request = PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    };
    etcd_call::<_, PutResponse>(addr, "/etcdserverpb.KV/Put", request, Some(token))
        .await
        .map(drop)
}

/// A member judges a write by the auth state it has applied, which can lag
/// the leader's. A write a lagging follower lets through after its user
/// lost the permission is refused when applied (it was checked under an
/// older auth revision), and the follower, once caught up, refuses it. A
/// lease revoke it lets through is refused when applied (judged there as
/// its user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_let_through_by_a_lagging_member_after_a_revoke_is_refused() {
    use ferry_replication::network::NetworkControl;
    use ferry_server::config::ServeConfig;
    use ferry_server::etcd::pb::etcdserverpb::{AuthenticateRequest, AuthenticateResponse};
    use ferry_server::etcd::pb::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse};
    use ferry_server::etcd::pb::etcdserverpb::{LeaseRevokeRequest, LeaseRevokeResponse};
    use ferry_server::etcd::pb::etcdserverpb::{PutRequest, PutResponse};
    use ferry_server::server::Server;

    let dir = tempfile::tempdir().unwrap();
    let network = NetworkControl::default();
    let addrs: Vec<(String, String)> = (0..3)
        .map(|_| (common::free_addr(), common::free_addr()))
        .collect();
    let mut servers = Vec::new();
    for id in 1..=3u64 {
        let (raft, client) = &addrs[id as usize - 1];
        let peers = if id == 1 {
            (2..=3u64)
                .map(|p| {
                    let (raft, client) = &addrs[p as usize - 1];
                    format!("{p}={raft}@{client}")
                })
                .collect()
        } else {
            Vec::new()
        };
        let config = ServeConfig {
            id,
            data_dir: dir.path().join(format!("node-{id}")),
            client_addr: client.clone(),
            raft_addr: raft.clone(),
            metrics_addr: "127.0.0.1:0".into(),
            init: id == 1,
            join: id != 1,
            peers,
            // A follower cut off from the leader for a second must not
            // campaign meanwhile.
            heartbeat_ms: 50,
            election_timeout_min_ms: 4_000,
            election_timeout_max_ms: 8_000,
            ..ServeConfig::default()
        };
        servers.push(
            Server::start_with_network(config, network.clone())
                .await
                .unwrap(),
        );
    }
    let endpoints: Vec<String> = addrs.iter().map(|(_, client)| client.clone()).collect();
    let setup = common::connect(endpoints.clone()).await;
    secure::enable_auth(&setup).await;
    let root = secure::connect(
        endpoints.clone(),
        ClientOptions {
            credentials: Some(ferry_client::Credentials {
                user: "root".into(),
                password: ROOT_PASSWORD.into(),
            }),
            ..common::options()
        },
    )
    .await;
    add_user(&root, "alice", "alice-pw-1", &[(READWRITE, b"a/", b"a0")]).await;

    let leader = servers
        .iter()
        .position(|s| s.node.is_leader())
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let (leader_id, follower_id) = (leader as u64 + 1, follower as u64 + 1);
    let at_follower = &endpoints[follower];
    let token = etcd_call::<_, AuthenticateResponse>(
        at_follower,
        "/etcdserverpb.Auth/Authenticate",
        AuthenticateRequest {
            name: "alice".into(),
            password: "alice-pw-1".into(),
        },
        None,
    )
    .await
    .unwrap()
    .token;
    etcd_put(at_follower, &token, "a/1").await.unwrap();
    // alice's lease, holding a key of hers.
    let lease = etcd_call::<_, LeaseGrantResponse>(
        at_follower,
        "/etcdserverpb.Lease/LeaseGrant",
        LeaseGrantRequest {
            ttl: 600,
            ..LeaseGrantRequest::default()
        },
        Some(&token),
    )
    .await
    .unwrap()
    .id;
    etcd_call::<_, PutResponse>(
        at_follower,
        "/etcdserverpb.KV/Put",
        PutRequest {
            key: b"a/leased".to_vec(),
            value: b"v".to_vec(),
            lease,
            ..PutRequest::default()
        },
        Some(&token),
    )
    .await
    .unwrap();
    // A transaction that touches no key still needs a user.
    let empty = etcd_call::<_, ferry_server::etcd::pb::etcdserverpb::TxnResponse>(
        at_follower,
        "/etcdserverpb.KV/Txn",
        ferry_server::etcd::pb::etcdserverpb::TxnRequest::default(),
        None,
    )
    .await;
    // etcd's words for a call without a user.
    let empty = empty.unwrap_err();
    assert_eq!(
        empty.message(),
        "etcdserver: user name is empty",
        "{empty:?}"
    );

    // What the leader sends the follower (not the answers to the
    // follower's own calls) arrives late; then alice loses her role, and
    // the follower still holds the auth state that allowed her.
    network.delay(leader_id, follower_id, Duration::from_millis(1_500));
    admin(&root)
        .await
        .user_revoke_role(pb::UserRoleRequest {
            user: "alice".into(),
            role: "alice".into(),
        })
        .await
        .unwrap();
    let follower_auth = servers[follower].node.auth();
    assert!(
        follower_auth.users["alice"].roles.contains("alice"),
        "the follower must not have applied the revoke yet"
    );
    // Her revoke of the lease (which would delete her key) passes the
    // follower's check, and is refused where it is applied.
    let refused = etcd_call::<_, LeaseRevokeResponse>(
        at_follower,
        "/etcdserverpb.Lease/LeaseRevoke",
        LeaseRevokeRequest { id: lease },
        Some(&token),
    )
    .await
    .expect_err("a lease revoke after the role revoke was accepted");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: permission denied");
    assert!(
        servers[follower].node.auth().users["alice"]
            .roles
            .contains("alice"),
        "the follower let the revoke through on its own older state"
    );
    // Later messages go at once again (those on their way still arrive
    // late): the refused write waits for the follower to catch up before
    // it checks again.
    let heal = {
        let network = network.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            network.heal();
        })
    };
    let refused = etcd_put(at_follower, &token, "a/2").await;
    heal.await.unwrap();
    let refused = refused.expect_err("a write after the revoke was accepted");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(root.get("a/2").await.unwrap().is_none());
    assert!(root.get("a/1").await.unwrap().is_some());
    assert!(root.get("a/leased").await.unwrap().is_some());
    assert!(servers[leader]
        .node
        .lease_status(lease as u64, 1)
        .await
        .is_ok());
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

/// `Authenticate` is open to anyone and each check costs an argon2id hash:
/// a flood of wrong passwords is refused past a bounded queue, an unknown
/// user is refused as a wrong password is, and the right password still
/// works once the flood has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_is_refused_past_a_bounded_queue() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let (_cluster, root) = secure_node(&pki, &[]).await;
    let channel = root.leader_channel().await.unwrap();
    let login = |name: &'static str, password: &'static str| {
        let mut auth = AuthClient::new(channel.clone());
        async move {
            auth.authenticate(pb::AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await
        }
    };
    let flood: Vec<_> = (0..600)
        .map(|i| tokio::spawn(login(if i % 2 == 0 { "root" } else { "nobody" }, "wrong")))
        .collect();
    let (mut wrong, mut busy) = (0, 0);
    for call in flood {
        let status = call.await.unwrap().unwrap_err();
        match status.code() {
            Code::Unauthenticated => {
                assert_eq!(status.message(), "wrong user name or password");
                wrong += 1;
            }
            Code::ResourceExhausted => busy += 1,
            other => panic!("{other:?}: {status:?}"),
        }
    }
    assert!(busy > 0, "600 logins at once were all queued");
    assert!(wrong > 0);
    let token = login("root", ROOT_PASSWORD).await.unwrap().into_inner();
    assert!(!token.token.is_empty());
}

/// Connections that never speak TLS must not keep real clients out: the
/// TLS port drops its oldest handshake for a new one when all its places
/// are taken, instead of leaving new connections unaccepted for the
/// handshake timeout (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_keep_clients_out_of_the_tls_port() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let (cluster, _root) = secure_node(&pki, &[]).await;
    let addr: std::net::SocketAddr = cluster.client_addr(1).parse().unwrap();
    // From six addresses, 60 each (a port holds at most 64 handshakes from
    // one address): 360 together, more than the port's 256 places.
    let mut silent = Vec::new();
    for source in 2..8u8 {
        for _ in 0..60 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(([127, 0, 0, source], 0).into()).unwrap();
            silent.push(socket.connect(addr).await.unwrap());
        }
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let written = async {
        let client = secure::connect(
            cluster.endpoints(),
            secure::options(pki.tls(), Some(("root", ROOT_PASSWORD))),
        )
        .await;
        client.put("k", "v").await
    };
    tokio::time::timeout(Duration::from_secs(8), written)
        .await
        .expect("a client waited behind silent connections")
        .unwrap();
    eprintln!("connected and wrote in {:?}", started.elapsed());
    drop(silent);
}

/// With auth on, one user holds at most `max_watch_streams_per_user`
/// watches: a user opening more waits for a place (its SDK retries), while
/// another user still gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_watch_place() {
    let dir = tempfile::tempdir().unwrap();
    let limits = ferry_server::config::Limits {
        max_watch_streams: 10,
        max_watch_streams_per_user: 2,
        ..Default::default()
    };
    let (server, setup) = common::single_node(dir.path(), limits).await;
    let metrics = server.metrics_addr.unwrap().to_string();
    let endpoints = vec![server.client_addr.to_string()];
    secure::enable_auth(&setup).await;
    let as_user = |user: &str, password: &str| ClientOptions {
        credentials: Some(ferry_client::Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..common::options()
    };
    let root = secure::connect(endpoints.clone(), as_user("root", ROOT_PASSWORD)).await;
    for user in ["alice", "bob"] {
        add_user(&root, user, "pw", &[(READ, b"w/", b"w0")]).await;
    }
    let alice = secure::connect(endpoints.clone(), as_user("alice", "pw")).await;
    let bob = secure::connect(endpoints, as_user("bob", "pw")).await;
    let open = || common::metric(&metrics, r#"ferry_open_streams{kind="watch"}"#);
    let until = |what: &'static str, wanted: f64| {
        let open = &open;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while open().await != wanted {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // From a revision, so that a watch opened late still sees what came after.
    let from = root.put("w/start", "v").await.unwrap() + 1;
    let mut alices: Vec<_> = (0..3).map(|_| alice.watch_prefix("w/", from)).collect();
    until("alice's first two watches open", 2.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open().await, 2.0, "alice's third watch got a place");
    let _bobs = bob.watch_prefix("w/", from);
    until("bob's watch opens beside alice's", 3.0).await;
    // Alice gives one back: her waiting watch takes it, and sees a write.
    alices.remove(0);
    let mut waiting = alices.pop().unwrap();
    root.put("w/after", "v").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(20), waiting.next())
        .await
        .expect("alice's waiting watch never opened");
    assert_eq!(seen.unwrap().unwrap().kv.unwrap().key, b"w/after");
    drop((alices, waiting, alice, bob, root, setup));
    server.shutdown().await.unwrap();
}

/// An etcd watch outlives the token its stream was opened with, as etcd's
/// does (etcd's clients renew a token only for new calls, so a watch ended
/// by its token's expiry would end silently); a new watch on that stream
/// is refused in the words etcd's clients match on to log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_watch_outlives_its_token_and_a_new_one_on_its_stream_is_refused_as_etcd_does() {
    use ferry_server::config::ServeConfig;
    use ferry_server::etcd::pb::etcdserverpb::watch_request::RequestUnion;
    use ferry_server::etcd::pb::etcdserverpb::{AuthenticateRequest, AuthenticateResponse};
    use ferry_server::etcd::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
    use ferry_server::server::Server;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServeConfig {
        data_dir: dir.path().join("node"),
        client_addr: "127.0.0.1:0".into(),
        raft_addr: "127.0.0.1:0".into(),
        metrics_addr: "127.0.0.1:0".into(),
        init: true,
        auth_token_ttl_secs: 2,
        ..ServeConfig::default()
    })
    .await
    .unwrap();
    let addr = server.client_addr.to_string();
    let setup = common::connect(vec![addr.clone()]).await;
    setup.put("ready", "1").await.unwrap();
    secure::enable_auth(&setup).await;
    let login = || {
        etcd_call::<_, AuthenticateResponse>(
            &addr,
            "/etcdserverpb.Auth/Authenticate",
            AuthenticateRequest {
                name: "root".into(),
                password: ROOT_PASSWORD.into(),
            },
            None,
        )
    };
    let create = || WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            ..WatchCreateRequest::default()
        })),
    };
    let first = login().await.unwrap().token;
    let mut grpc = etcd_grpc(&addr).await;
    // The stream's requests: a create now, another later.
    let (requests, receiver) = tokio::sync::mpsc::unbounded_channel::<WatchRequest>();
    requests.send(create()).unwrap();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|request| (request, receiver))
    });
    let mut request = tonic::Request::new(stream);
    request
        .metadata_mut()
        .insert("token", first.parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let mut answers = grpc
        .streaming::<_, WatchRequest, WatchResponse, _>(
            request,
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let created = next_answer(&mut answers).await;
    assert!(created.created && !created.canceled, "{created:?}");
    // The token expires; the watch goes on (it is checked again each second).
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let second = login().await.unwrap().token;
    etcd_put(&addr, &second, "w/1").await.unwrap();
    let event = next_answer(&mut answers).await;
    assert!(!event.canceled, "{event:?}");
    assert_eq!(event.events.len(), 1, "{event:?}");

    // A new watch on the stream, whose token has expired, is refused.
    requests.send(create()).unwrap();
    let answer = next_answer(&mut answers).await;
    assert!(answer.created && answer.canceled, "{answer:?}");
    assert_eq!(answer.watch_id, -1, "{answer:?}");
    assert_eq!(
        answer.cancel_reason,
        "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
    );
    drop((answers, requests, setup));
    server.shutdown().await.unwrap();
}

/// The next answer of an etcd watch stream, within 20 s.
async fn next_answer<T>(answers: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), answers.message())
        .await
        .expect("an answer within 20 s")
        .unwrap()
        .expect("the stream goes on")
}
