//! Locks, elections and the work queue with real processes: mutual
//! exclusion of `ferry lock` commands across a leader SIGKILL, a paused
//! holder's fenced write refused, a failover that does not expire a lease
//! early, a queue whose items are each completed once while workers die,
//! and an observer that sees each leader once, in order.

mod common;

use common::{connect, ProcessCluster};

use ferry_client::{Client, Leader};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::FERRY;

fn lock_process(endpoints: &str, name: &str, ttl: u64, script: &str) -> Child {
    use std::os::unix::process::CommandExt;
    Command::new(FERRY)
        .args([
            "lock",
            name,
            "--ttl",
            &ttl.to_string(),
            "--endpoints",
            endpoints,
        ])
        .args(["--", "sh", "-c", script])
        .env("FERRY_BIN", FERRY)
        .env("ENDPOINTS", endpoints)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_holders_never_overlap_across_a_leader_sigkill_and_tokens_grow() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let endpoints = cluster.endpoints().join(",");
    let log = cluster.root.path().join("intervals");
    let script = format!(
        r#"echo "S $FERRY_LOCK_TOKEN $(date +%s%N)" >> {log}; sleep 0.3; echo "E $FERRY_LOCK_TOKEN $(date +%s%N)" >> {log}"#,
        log = log.display()
    );
    let mut holders = Workers(
        (0..6)
            .map(|_| lock_process(&endpoints, "locks/l", 10, &script))
            .collect(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = client.status().await.unwrap().leader_id;
    cluster.sigkill(leader);
    for holder in &mut holders.0 {
        let code = tokio::task::block_in_place(|| wait_exit(holder, Duration::from_secs(120)));
        assert_eq!(code, 0, "a lock holder failed");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut intervals: BTreeMap<u64, (u128, u128)> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (token, at): (u64, u128) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
        let entry = intervals.entry(token).or_insert((0, 0));
        if fields[0] == "S" {
            entry.0 = at;
        } else {
            entry.1 = at;
        }
    }
    assert_eq!(intervals.len(), 6, "{text}");
    // In token order, each holder ends before the next starts.
    let ordered: Vec<(u128, u128)> = intervals.values().copied().collect();
    for pair in ordered.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping holders: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_holder_whose_lease_expired_cannot_write_with_its_token() {
    let cluster = ProcessCluster::start(1);
    let client = connect(cluster.endpoints()).await;
    let endpoints = cluster.endpoints().join(",");
    let dir = cluster.root.path();
    let (started, go, rc, err) = (
        dir.join("started"),
        dir.join("go"),
        dir.join("rc"),
        dir.join("err"),
    );
    let script = format!(
        r#"touch {started}; while [ ! -f {go} ]; do sleep 0.05; done; "$FERRY_BIN" kv put guarded x --fence "$FERRY_LOCK_KEY:$FERRY_LOCK_TOKEN" --endpoints "$ENDPOINTS" 2> {err}; echo $? > {rc}"#,
        started = started.display(),
        go = go.display(),
        rc = rc.display(),
        err = err.display()
    );
    // A 5 s TTL: long enough that a loaded machine's delayed renewals do
    // not lose the lock before the pause does.
    let mut holder = Workers(vec![lock_process(&endpoints, "locks/p", 5, &script)]);
    // Wait until it holds the lock and has started its command: a holder
    // paused between the two (a loaded machine) would never start it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let page = client.prefix("locks/p/", 10).await.unwrap();
        if let (Some(kv), true) = (page.kvs.first(), started.exists()) {
            break kv.create_revision;
        }
        assert!(Instant::now() < deadline, "the holder never got the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Pause it: its keep-alives stop (its command keeps running).
    // SAFETY: signalling our own child by the pid std holds for it.
    unsafe { libc::kill(holder.0[0].id() as i32, libc::SIGSTOP) };
    let ttl = Duration::from_secs(10);
    let lease = client.lease_grant(ttl).await.unwrap();
    let _alive = client.lease_keep_alive(lease, ttl);
    let guard = tokio::time::timeout(Duration::from_secs(60), client.lock("locks/p", lease))
        .await
        .expect("the lock passes once the paused holder's lease expires")
        .unwrap();
    assert!(guard.token() > first);
    std::fs::write(&go, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !rc.exists() {
        assert!(
            Instant::now() < deadline,
            "the paused holder's command never wrote: {:?}",
            std::fs::read_to_string(&err)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        std::fs::read_to_string(&rc).unwrap().trim(),
        "1",
        "the fenced write was not refused"
    );
    assert!(client.get("guarded").await.unwrap().is_none());
    // SAFETY: as above.
    unsafe { libc::kill(holder.0[0].id() as i32, libc::SIGCONT) };
    let code = tokio::task::block_in_place(|| wait_exit(&mut holder.0[0], Duration::from_secs(60)));
    assert_ne!(code, 0, "the holder must report that it lost the lock");
    client.unlock(&guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_sigkill_does_not_expire_a_lease_before_its_ttl() {
    let mut cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let ttl = Duration::from_secs(5);
    let lease = client.lease_grant(ttl).await.unwrap();
    client.put_with_lease("owned", "v", lease).await.unwrap();
    let renewed = Instant::now();
    client.lease_renew(lease).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = client.status().await.unwrap().leader_id;
    cluster.sigkill(leader);
    // Read a surviving member's own state, so that the moment the key goes
    // is seen within a poll, whatever the election takes.
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .map(|n| n.client.clone())
        .unwrap();
    let gone_after = loop {
        let (kvs, _) = common::stale_prefix_at(&client, &survivor, b"owned").await;
        if kvs.is_empty() {
            break renewed.elapsed();
        }
        assert!(
            renewed.elapsed() < Duration::from_secs(60),
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        gone_after >= ttl,
        "expired {gone_after:?} after the last keep-alive"
    );
    // The new leader's extension (2 s) and its election bound how late.
    assert!(
        gone_after <= ttl + Duration::from_secs(15),
        "expired only after {gone_after:?}"
    );
}

/// A worker: `ferry queue claim` in a loop, in a process group of its own
/// so that a SIGKILL takes the loop, the CLI and its command at once.
fn queue_worker(endpoints: &str, log: &std::path::Path) -> Child {
    use std::os::unix::process::CommandExt;
    let script = format!(
        r#"while :; do "$FERRY_BIN" queue claim queues/q --ttl 2 --endpoints "$ENDPOINTS" -- sh -c 'echo $FERRY_QUEUE_NUMBER >> {log}; sleep 0.1' || sleep 0.1; done"#,
        log = log.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .env("FERRY_BIN", FERRY)
        .env("ENDPOINTS", endpoints)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn kill_group(child: &mut Child) {
    // SAFETY: signalling the process group of our own child, which it leads.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

/// Worker process groups, killed when dropped (also when a test fails).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            kill_group(worker);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_queue_item_is_completed_once_while_workers_are_sigkilled() {
    use futures_util::StreamExt;
    let cluster = ProcessCluster::start(3);
    let client = connect(cluster.endpoints()).await;
    let endpoints = cluster.endpoints().join(",");
    const ITEMS: u64 = 60;
    for i in 0..ITEMS {
        assert_eq!(
            client
                .queue_push("queues/q", format!("item {i}"))
                .await
                .unwrap(),
            i + 1
        );
    }
    let pushed_at = client
        .get("queues/q/seq")
        .await
        .unwrap()
        .unwrap()
        .mod_revision;
    // Every completion deletes its item: the history shows each one.
    let mut deletions = client.watch_prefix("queues/q/item/", pushed_at + 1);
    let log = cluster.root.path().join("worked");
    let mut workers = Workers((0..4).map(|_| queue_worker(&endpoints, &log)).collect());
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut round = 0usize;
    while !client
        .queue_items("queues/q", 100)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "items left: {:?}",
            client.queue_items("queues/q", 100).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        // SIGKILL one worker (whatever it is doing) and start a new one.
        round += 1;
        let victim = round % workers.0.len();
        kill_group(&mut workers.0[victim]);
        workers.0[victim] = queue_worker(&endpoints, &log);
    }
    drop(workers);
    assert!(round >= 3, "only {round} workers were killed");
    let mut deleted = BTreeSet::new();
    while deleted.len() < ITEMS as usize {
        let event = tokio::time::timeout(Duration::from_secs(10), deletions.next())
            .await
            .expect("every item's completion is in the history")
            .unwrap()
            .unwrap();
        assert_eq!(
            event.kind,
            ferry_client::pb::event::Kind::Delete as i32,
            "{event:?}"
        );
        assert!(
            deleted.insert(event.kv.unwrap().key),
            "an item completed twice"
        );
    }
    let expected: BTreeSet<Vec<u8>> = (1..=ITEMS)
        .map(|n| format!("queues/q/item/{n:020}").into_bytes())
        .collect();
    assert_eq!(deleted, expected);
    // Each item's command ran at least once (a worker killed after the
    // command and before the completion makes it run again).
    let worked: BTreeSet<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(worked, (1..=ITEMS).collect::<BTreeSet<u64>>());
}

async fn candidate(client: &Client, value: &str) -> (u64, ferry_client::Leadership) {
    let lease = client.lease_grant(Duration::from_secs(30)).await.unwrap();
    let leading = client.campaign("elections/e", lease, value).await.unwrap();
    (lease, leading)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_observer_sees_each_leader_once_in_order() {
    let cluster = ProcessCluster::start(1);
    let client = connect(cluster.endpoints()).await;
    let mut observe = client.observe("elections/e");
    assert_eq!(observe.next().await.unwrap().unwrap(), None);
    let (_, a) = candidate(&client, "a").await;
    // b and c wait in line behind a.
    let (b_client, c_client) = (client.clone(), client.clone());
    let b = tokio::spawn(async move { candidate(&b_client, "b").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = tokio::spawn(async move { candidate(&c_client, "c").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.proclaim(&a, "a2").await.unwrap();
    client.resign(&a).await.unwrap();
    let (b_lease, _b) = b.await.unwrap();
    client.lease_revoke(b_lease).await.unwrap();
    let (_, c) = c.await.unwrap();
    client.resign(&c).await.unwrap();
    let mut seen: Vec<Option<String>> = Vec::new();
    while seen.len() < 5 {
        let leader: Option<Leader> = tokio::time::timeout(Duration::from_secs(10), observe.next())
            .await
            .expect("a leader change")
            .unwrap()
            .unwrap();
        seen.push(leader.map(|l| String::from_utf8(l.value).unwrap()));
    }
    let expected: Vec<Option<String>> = vec![
        Some("a".into()),
        Some("a2".into()),
        Some("b".into()),
        Some("c".into()),
        None,
    ];
    assert_eq!(seen, expected);
    assert!(client
        .election_leader("elections/e")
        .await
        .unwrap()
        .is_none());
}
