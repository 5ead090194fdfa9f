//! The status page in a real headless Chromium (see `common::browser`),
//! against clusters of `ferry serve` processes: the members as the DOM
//! shows them agree with `/status.json`, a snapshot transfer's progress
//! moves, a SIGKILLed leader's successor shows within 2 s with the
//! failover's measured RTO, and with auth on the page asks for a login.
//! Screenshots go to `target/status-page/`.

mod common;

use common::browser::Browser;
use common::{ferry, http_get, ProcessCluster};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `/status.json` of the member whose HTTP port is `addr`.
fn status_json(runtime: &tokio::runtime::Runtime, addr: &str) -> Value {
    let response = runtime.block_on(http_get(addr, "/status.json"));
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The leader as member `via` knows it, once one is known.
fn leader(runtime: &tokio::runtime::Runtime, cluster: &ProcessCluster, via: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(id) =
            status_json(runtime, &cluster.metrics_addr(via))["node"]["leader_id"].as_u64()
        {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The member rows as drawn, and the report they were drawn from.
const MEMBERS: &str = r##"
    const report = window.ferryLastReport;
    if (!report) return null;
    const cell = (tr, c) => tr.querySelector("." + c).dataset.value;
    const rows = [...document.querySelectorAll("#members tbody tr")].map((tr) => ({
        id: Number(tr.dataset.memberId),
        role: tr.dataset.role,
        marked: tr.classList.contains("leader"),
        matched: cell(tr, "matched"),
        applied: cell(tr, "applied"),
        lag_entries: cell(tr, "lag-entries"),
        lag_ms: cell(tr, "lag-ms"),
        health: tr.querySelector(".health").textContent,
    }));
    return { rows, report, leader: document.getElementById("leader").textContent };
"##;

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[test]
fn the_page_shows_members_a_moving_transfer_and_a_failover_with_its_rto() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Small snapshots and a short kept log, so that a new member gets a
    // snapshot; a rate limit, so that its transfer lasts a few seconds.
    let mut cluster = ProcessCluster::start_with(3, |root| {
        [
            "--backup-dir",
            &root.join("backup").display().to_string(),
            "--backup-interval-ms",
            "300",
            "--snapshot-after-entries",
            "100",
            "--keep-after-snapshot",
            "10",
            "--snapshot-max-bytes-per-sec",
            "1500000",
        ]
        .map(String::from)
        .to_vec()
    });
    let client = runtime.block_on(common::connect(cluster.endpoints()));
    runtime.block_on(async {
        use rand::RngCore;
        let mut value = vec![0u8; 16 << 10];
        for i in 0..400 {
            // Incompressible, so that the snapshot is as large as its data.
            rand::rng().fill_bytes(&mut value);
            client
                .put(format!("task/{i:04}"), value.clone())
                .await
                .unwrap();
        }
        // Enough entries after them that the log behind a snapshot is
        // purged (the log store purges 1024 entries at a time): a new
        // member must then start from a snapshot.
        for round in 0..24 {
            let puts = (0..50).map(|i| client.put(format!("tick/{round}/{i}"), "1"));
            for result in futures_util::future::join_all(puts).await {
                result.unwrap();
            }
        }
    });
    let leader_id = leader(&runtime, &cluster, 1);
    let browser = Browser::start();

    // The leader's page: three member rows, the leader marked, and the
    // figures of the document the page drew.
    browser.open(&format!("http://{}/", cluster.metrics_addr(leader_id)));
    let drawn = browser.wait_for(
        "three member rows",
        Duration::from_secs(30),
        &format!(
            "const d = (() => {{ {MEMBERS} }})(); \
             return d && d.rows.length === 3 && d.report.members.every((m) => m.lag_ms !== null) ? d : null;"
        ),
    );
    let independent = status_json(&runtime, &cluster.metrics_addr(leader_id));
    let rows = drawn["rows"].as_array().unwrap();
    let report = &drawn["report"];
    assert_eq!(report["node"]["id"], leader_id);
    assert_eq!(drawn["leader"].as_str().unwrap(), leader_id.to_string());
    let marked: Vec<u64> = rows
        .iter()
        .filter(|r| r["marked"] == true)
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        marked,
        [leader_id],
        "exactly the leader is marked: {rows:?}"
    );
    for (row, member) in rows.iter().zip(report["members"].as_array().unwrap()) {
        assert_eq!(row["id"], member["id"]);
        assert_eq!(row["role"], member["role"]);
        for (cell, field) in [
            ("matched", "matched_index"),
            ("applied", "applied_index"),
            ("lag_entries", "lag_entries"),
            ("lag_ms", "lag_ms"),
        ] {
            assert_eq!(
                row[cell].as_str().unwrap(),
                text(&member[field]),
                "member {} {field}",
                member["id"]
            );
        }
        assert_eq!(row["health"], "ok", "{row}");
        // And the page's document is the server's: the same members and
        // roles as a /status.json read after it, which has moved on at most.
        let later = independent["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == member["id"])
            .unwrap();
        assert_eq!(later["role"], member["role"]);
        assert!(later["matched_index"].as_u64() >= member["matched_index"].as_u64());
        assert!(member["lag_ms"].as_u64().unwrap() < 5_000, "{member}");
    }
    // The backup chain the leader ships, as drawn and as reported.
    let chain = browser.wait_for(
        "the backup chain",
        Duration::from_secs(30),
        "const r = window.ferryLastReport; \
         return r && r.backup_chain && r.backup_chain.restorable_last && !document.getElementById('chain').hidden \
           ? { chain: r.backup_chain, text: document.getElementById('chain').textContent } : null;",
    );
    let (first, last) = (
        chain["chain"]["restorable_first"].as_u64().unwrap(),
        chain["chain"]["restorable_last"].as_u64().unwrap(),
    );
    assert!(
        chain["text"]
            .as_str()
            .unwrap()
            .contains(&format!("every index from {first} to {last}")),
        "{chain}"
    );
    assert!(chain["chain"]["checkpoint_count"].as_u64().unwrap() >= 1);
    let shot = browser.screenshot("cluster.png");
    eprintln!("screenshot: {}", shot.display());

    // A follower's page shows its own view and links to the leader's.
    let follower = (1..=3).find(|id| *id != leader_id).unwrap();
    browser.open(&format!("http://{}/", cluster.metrics_addr(follower)));
    let link = browser.wait_for(
        "the link to the leader's page",
        Duration::from_secs(30),
        "const a = document.getElementById('leader-link'); \
         return window.ferryLastReport && !document.getElementById('follower-note').hidden && !a.hidden ? a.href : null;",
    );
    assert_eq!(
        link.as_str().unwrap(),
        format!("http://{}/", cluster.metrics_addr(leader_id))
    );

    // A new member gets a snapshot (once the log behind the newest one is
    // purged); on the leader's page its progress moves.
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_json(&runtime, &cluster.metrics_addr(leader_id))["node"]["first_log_index"]
        .as_u64()
        .unwrap()
        < 1000
    {
        assert!(Instant::now() < deadline, "the log was never purged");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.new_node(4);
    cluster.spawn(4, false, &[]);
    browser.open(&format!("http://{}/", cluster.metrics_addr(leader_id)));
    let (code, out, err) = ferry(&[
        "cluster",
        "add",
        "--id",
        "4",
        "--raft-addr",
        &cluster.raft_addr(4),
        "--client-addr",
        &cluster.client_addr(4),
        "--endpoints",
        &cluster.endpoints().join(","),
        "--wait=false",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    const TRANSFER: &str = "function transfer() { \
        const t = document.querySelector('.transfer[data-peer=\"4\"]'); \
        if (!t) return null; const bar = t.querySelector('progress'); \
        return { done: Number(t.dataset.done), total: Number(t.dataset.total), value: bar.value, text: t.textContent }; }";
    let first = browser.wait_for(
        "the transfer to member 4",
        Duration::from_secs(60),
        &format!("{TRANSFER}; return transfer();"),
    );
    let (done, total) = (
        first["done"].as_u64().unwrap(),
        first["total"].as_u64().unwrap(),
    );
    assert!(total > 4 << 20, "the snapshot holds the data: {first}");
    assert!(done < total, "seen while it runs: {first}");
    assert_eq!(
        first["value"].as_f64(),
        first["done"].as_f64(),
        "the bar shows the bytes"
    );
    let moved = browser.wait_for(
        &format!("the transfer's progress to move from {first}"),
        Duration::from_secs(60),
        &format!("{TRANSFER}; const t = transfer(); return t && t.done > {done} ? t : null;"),
    );
    assert!(moved["done"].as_u64().unwrap() > done, "{moved}");
    browser.screenshot("transfer.png");
    browser.wait_for(
        "member 4 to catch up",
        Duration::from_secs(120),
        "const r = window.ferryLastReport; return r && r.transfers.length === 0 && \
         r.members.some((m) => m.id === 4 && m.matched_index > 1600);",
    );

    // A follower's page after a SIGKILL of the leader: the new leader within
    // 2 s, then the failover with its measured RTO.
    let watcher = (1..=3).find(|id| *id != leader_id).unwrap();
    browser.open(&format!("http://{}/", cluster.metrics_addr(watcher)));
    browser.wait_for(
        "the follower's page",
        Duration::from_secs(30),
        &format!("return document.getElementById('leader').textContent === '{leader_id}';"),
    );
    let killed = Instant::now();
    cluster.sigkill(leader_id);
    let shown = browser.wait_for(
        "a new leader on the page",
        Duration::from_secs(30),
        &format!(
            "const l = document.getElementById('leader').textContent; \
             return l !== '{leader_id}' && l !== 'none' && l !== '–' ? l : null;"
        ),
    );
    let took = killed.elapsed();
    let new_leader: u64 = shown.as_str().unwrap().parse().unwrap();
    assert_ne!(new_leader, leader_id);
    assert!(
        took < Duration::from_secs(2),
        "the new leader showed after {took:?}"
    );
    let failover = browser.wait_for(
        "the failover with its RTO",
        Duration::from_secs(30),
        &format!(
            "const tr = document.querySelector('#failovers tbody tr[data-from=\"{leader_id}\"]'); \
             if (!tr) return null; const rto = tr.querySelector('.rto').dataset.value; \
             return rto ? {{ to: tr.dataset.to, rto: Number(rto), text: tr.textContent }} : null;"
        ),
    );
    assert_eq!(
        failover["to"].as_str().unwrap(),
        new_leader.to_string(),
        "{failover}"
    );
    let rto = failover["rto"].as_u64().unwrap();
    // At least the election timeout's minimum (300 ms here) less a
    // heartbeat, and no more than the time we waited.
    assert!(
        (200..killed.elapsed().as_millis() as u64).contains(&rto),
        "rto {rto} ms: {failover}"
    );
    eprintln!("the new leader showed {took:?} after the kill; the page's RTO: {rto} ms");
    browser.screenshot("failover.png");
}

#[test]
fn with_auth_on_the_page_wants_a_login_of_root_or_a_status_user() {
    use common::secure::{enable_auth, ROOT_PASSWORD};
    use ferry_client::pb;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = runtime.block_on(common::single_node(
        dir.path(),
        ferry_server::config::Limits::default(),
    ));
    runtime.block_on(async {
        let mut auth = pb::auth_client::AuthClient::new(client.leader_channel().await.unwrap());
        for name in ["watcher", "bob"] {
            auth.user_add(pb::UserAddRequest {
                name: name.into(),
                password: format!("{name}-password"),
                no_password: false,
            })
            .await
            .unwrap();
        }
        auth.role_add(pb::RoleRequest {
            name: "status".into(),
        })
        .await
        .unwrap();
        auth.user_grant_role(pb::UserRoleRequest {
            user: "watcher".into(),
            role: "status".into(),
        })
        .await
        .unwrap();
        enable_auth(&client).await;
    });
    let addr = server.metrics_addr.unwrap().to_string();

    // Without a token: 401, and nothing of the cluster in the answer.
    let refused = runtime.block_on(http_get(&addr, "/status.json"));
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(!refused.contains("members"), "{refused}");

    let browser = Browser::start();
    browser.open(&format!("http://{addr}/"));
    browser.wait_for(
        "the login form",
        Duration::from_secs(30),
        "return !document.getElementById('login').hidden && document.getElementById('content').hidden;",
    );
    let log_in = |user: &str, password: &str| {
        browser.eval(&format!(
            "document.getElementById('login-user').value = {user:?}; \
             document.getElementById('login-password').value = {password:?}; \
             document.getElementById('login-error').textContent = ''; \
             document.getElementById('login').requestSubmit(); return true;"
        ));
    };
    const ERROR: &str =
        "const e = document.getElementById('login-error').textContent; return e ? e : null;";
    log_in("root", "wrong");
    let wrong = browser.wait_for("a refused password", Duration::from_secs(30), ERROR);
    assert!(
        wrong
            .as_str()
            .unwrap()
            .contains("wrong user name or password"),
        "{wrong}"
    );
    log_in("bob", "bob-password");
    let forbidden = browser.wait_for(
        "a user without the status role",
        Duration::from_secs(30),
        ERROR,
    );
    assert!(
        forbidden.as_str().unwrap().contains("status"),
        "{forbidden}"
    );
    browser.screenshot("login.png");
    for (user, password) in [("watcher", "watcher-password"), ("root", ROOT_PASSWORD)] {
        browser.eval("sessionStorage.clear(); return true;");
        browser.open(&format!("http://{addr}/"));
        browser.wait_for(
            "the login form",
            Duration::from_secs(30),
            "return !document.getElementById('login').hidden;",
        );
        log_in(user, password);
        let rows = browser.wait_for(
            "the page after logging in",
            Duration::from_secs(30),
            "return !document.getElementById('content').hidden ? document.querySelectorAll('#members tbody tr').length : null;",
        );
        assert_eq!(rows, 1, "{user} sees the one member");
    }
    drop(browser);
    runtime.block_on(server.shutdown()).unwrap();
}

/// A GET over TLS trusting only `ca`; the whole response (empty if the
/// port does not answer yet).
async fn https_get(ca: &std::path::Path, addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{pki_types::ServerName, ClientConfig};
    let roots = ferry_replication::tls::load_roots(ca).unwrap();
    let config = ClientConfig::builder_with_provider(ferry_replication::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let host = addr.rsplit_once(':').unwrap().0.to_owned();
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from(host).unwrap(), tcp)
        .await
        .expect("a TLS handshake with the node's certificate");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

#[test]
fn with_a_certificate_the_port_speaks_https_and_names_itself_so() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = common::secure::Pki::create(dir.path());
    let cluster = ProcessCluster::start_with(1, |_| pki.serve_flags());
    let addr = cluster.metrics_addr(1);
    let ca = std::path::PathBuf::from(pki.ca());
    let deadline = Instant::now() + Duration::from_secs(30);
    let report: Value = loop {
        if let Ok(response) = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                https_get(&ca, &addr, "/status.json"),
            )
            .await
        }) {
            if let Some((_, body)) = response.split_once("\r\n\r\n") {
                let report: Value = serde_json::from_str(body).unwrap_or_default();
                if report["node"]["leader_id"].as_u64().is_some() {
                    break report;
                }
            }
        }
        assert!(Instant::now() < deadline, "no status over HTTPS in 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["version"], 1);
    // Version 1's fields, as its `## Format` lists them: a field is only
    // ever added within a version.
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "version",
        "generated_ms",
        "node",
        "members",
        "rpo",
        "failovers",
        "transfers",
        "backup_chain",
        "engine",
        "traffic",
        "alarms",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    for key in [
        "id",
        "role",
        "term",
        "leader_id",
        "leader_status_url",
        "commit_index",
        "applied_index",
        "first_log_index",
        "last_log_index",
        "leader_contact_ms",
    ] {
        assert!(report["node"].get(key).is_some(), "node.{key}");
    }
    for key in [
        "id",
        "role",
        "kind",
        "raft_addr",
        "client_addr",
        "status_url",
        "matched_index",
        "applied_index",
        "lag_entries",
        "lag_ms",
        "last_contact_ms",
        "health",
    ] {
        assert!(report["members"][0].get(key).is_some(), "members[].{key}");
    }
    assert_eq!(
        report["members"][0]["status_url"].as_str().unwrap(),
        format!("https://{addr}")
    );
    let page = runtime.block_on(https_get(&ca, &addr, "/"));
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<title>Ferry status</title>"));
    // Plain HTTP gets nothing: the handshake fails and the connection ends.
    let plain = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), http_get(&addr, "/status.json")).await
    });
    assert!(
        plain.as_ref().is_ok_and(|r| !r.contains("members")),
        "{plain:?}"
    );
}
