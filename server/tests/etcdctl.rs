//! etcd's own command-line client, `etcdctl` (Debian's `etcd-client`),
//! against Ferry's etcd-compatible API: what it prints must be what it
//! prints against a real etcd 3.4, recorded in `etcdctl/etcd-3.4.out`.
//!
//! The script's language is described at the top of `etcdctl/script.txt`.
//! `record` (ignored) runs it against Debian's `etcd` and rewrites the
//! recording:
//!
//! ```text
//! cargo test -p ferry-server --test etcdctl -- --ignored record
//! ```
//!
//! The test installs `etcd-client` with apt when `etcdctl` is missing; if
//! it cannot, it fails.

mod common;

use common::ProcessCluster;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("etcdctl/script.txt");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/etcdctl/etcd-3.4.out")
}

/// A Debian program, installed from `package` if it is not there.
fn debian_program(program: &str, package: &str) -> PathBuf {
    let found = |p: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(p))
                .find(|path| path.is_file())
        })
    };
    // One install at a time: this binary's tests run in parallel, and a
    // second apt-get fails on the first one's dpkg lock.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = found(program) {
        return path;
    }
    let root = unsafe { libc::geteuid() } == 0;
    let mut install = if root {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "apt-get"]);
        sudo
    };
    let status = install
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        // The package lists may be missing on a fresh machine.
        let mut update = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        let _ = update.args(["update", "-q"]).status();
        let _ = Command::new(if root { "apt-get" } else { "sudo" })
            .args(if root {
                vec!["install", "-y", "-q", package]
            } else {
                vec!["-n", "apt-get", "install", "-y", "-q", package]
            })
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    found(program).unwrap_or_else(|| {
        panic!("`{program}` is missing and `apt-get install {package}` did not provide it")
    })
}

/// One script line, parsed.
struct Line {
    capture: Option<(String, regex_lite::Regex)>,
    lines: Option<usize>,
    numbers: bool,
    args: String,
    stdin: Option<String>,
}

fn parse(line: &str) -> Line {
    let mut rest = line.trim();
    let mut parsed = Line {
        capture: None,
        lines: None,
        numbers: false,
        args: String::new(),
        stdin: None,
    };
    if let Some(after) = rest.strip_prefix('$') {
        let (name, after) = after.split_once("=/").expect("$NAME=/REGEX/");
        let (regex, after) = after.split_once("/ ").expect("$NAME=/REGEX/ args");
        parsed.capture = Some((name.to_owned(), regex_lite::Regex::new(regex).unwrap()));
        rest = after;
    }
    if let Some(after) = rest.strip_prefix('@') {
        let (n, after) = after.split_once(' ').expect("@N args");
        parsed.lines = Some(n.parse().expect("@N"));
        rest = after;
    }
    if let Some(after) = rest.strip_prefix('~') {
        parsed.numbers = true;
        rest = after;
    }
    match rest.split_once("<<<") {
        Some((args, stdin)) => {
            parsed.args = args.trim().to_owned();
            parsed.stdin = Some(stdin.replace("\\n", "\n"));
        }
        None => parsed.args = rest.to_owned(),
    }
    parsed
}

/// Runs the script against `endpoint`; returns the transcript.
fn run_script(etcdctl: &Path, endpoint: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("TMP".into(), scratch.path().display().to_string());
    let mut transcript = String::new();
    for raw in SCRIPT.lines() {
        if raw.trim().is_empty() || raw.starts_with('#') {
            continue;
        }
        let line = parse(raw);
        let mut args = line.args.clone();
        for (name, value) in &vars {
            args = args.replace(&format!("{{{name}}}"), value);
        }
        let mut command = Command::new(etcdctl);
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--command-timeout=20s")
            .args(args.split_whitespace())
            .stdin(if line.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        if let Some(stdin) = &line.stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
        }
        let (stdout, stderr, code) = match line.lines {
            Some(n) => read_lines(child, n, raw),
            None => {
                let output = wait_bounded(child, raw);
                (
                    String::from_utf8_lossy(&output.stdout).into_owned(),
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                    output.status.code(),
                )
            }
        };
        // etcdctl's own error line; its client logs retries as JSON lines
        // with times, which differ from run to run.
        let error: String = stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .map(|l| format!("{l}\n"))
            .collect();
        if let Some((name, regex)) = &line.capture {
            assert_eq!(code, Some(0), "`{raw}` failed: {stdout}{stderr}");
            let value = regex
                .captures(&stdout)
                .and_then(|c| c.get(1))
                .unwrap_or_else(|| panic!("`{raw}`: no match in {stdout:?}"))
                .as_str()
                .to_owned();
            vars.insert(name.clone(), value);
            continue;
        }
        let mut output = format!("{stdout}{error}");
        if !matches!(code, Some(0) | None) {
            output.push_str(&format!("[exit {}]\n", code.unwrap()));
        }
        let output = normalize(&output, &vars, line.numbers);
        transcript.push_str(&format!("$ {}\n{output}", line.args));
    }
    transcript
}

/// Waits for a command that ends by itself, within a bound.
fn wait_bounded(mut child: Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`{what}` did not end in 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Reads `n` lines of a command that does not end by itself (or all it
/// prints if it ends first), then stops it.
fn read_lines(mut child: Child, n: usize, what: &str) -> (String, String, Option<i32>) {
    let stdout = child.stdout.take().unwrap();
    let (lines, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = false;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                closed = true;
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("`{what}` printed only {out:?} in 60 s");
            }
        }
    }
    // It closed its output: it is ending by itself; wait for its exit code
    // (on a busy machine the exit comes a while after the close).
    let mut ended = child.try_wait().unwrap();
    while closed && ended.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        ended = child.try_wait().unwrap();
    }
    if ended.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Killed by us: not an exit code of its own.
    (out, stderr, ended.and_then(|s| s.code()))
}

/// Puts captured values back as `{NAME}`, addresses as `{ADDR}`, 12- to 16-digit
/// hex ids (leases, etcd's members) as `{ID}`, and with `numbers` every
/// number as `N`.
fn normalize(output: &str, vars: &BTreeMap<String, String>, numbers: bool) -> String {
    let mut out = output.to_owned();
    let addr = regex_lite::Regex::new(r"(https?://)?(127\.0\.0\.1|localhost):\d+").unwrap();
    out = addr.replace_all(&out, "{ADDR}").into_owned();
    // Longest first, so that a value inside another does not split it.
    let mut by_length: Vec<_> = vars.iter().collect();
    by_length.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (name, value) in by_length {
        // `\b` does not match before a path's `/`.
        let whole = if value.starts_with('/') {
            regex_lite::Regex::new(&regex_lite::escape(value)).unwrap()
        } else {
            regex_lite::Regex::new(&format!(r"\b{}\b", regex_lite::escape(value))).unwrap()
        };
        out = whole.replace_all(&out, format!("{{{name}}}")).into_owned();
    }
    let id = regex_lite::Regex::new(r"\b[0-9a-f]{12,16}\b").unwrap();
    out = id.replace_all(&out, "{ID}").into_owned();
    if numbers {
        let number = regex_lite::Regex::new(r"\d+(\.\d+)*").unwrap();
        out = number.replace_all(&out, "N").into_owned();
    }
    out
}

/// The first line where `actual` and `expected` differ, with context.
fn first_difference(actual: &str, expected: &str) -> Option<String> {
    let a: Vec<&str> = actual.lines().collect();
    let e: Vec<&str> = expected.lines().collect();
    let at = (0..a.len().max(e.len())).find(|&i| a.get(i) != e.get(i))?;
    let from = at.saturating_sub(6);
    let show = |lines: &[&str]| {
        lines[from.min(lines.len())..(at + 4).min(lines.len())]
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    Some(format!(
        "line {}:\n  Ferry:\n{}  etcd:\n{}",
        at + 1,
        show(&a),
        show(&e)
    ))
}

#[test]
fn etcdctl_prints_what_it_prints_against_etcd() {
    let etcdctl = debian_program("etcdctl", "etcd-client");
    let cluster = one_member();
    let endpoint = cluster.client_addr(MEMBER);
    wait_ready(&etcdctl, &endpoint);
    let actual = run_script(&etcdctl, &endpoint);
    let expected = std::fs::read_to_string(fixture()).unwrap();
    if let Some(difference) = first_difference(&actual, &expected) {
        let out = std::env::temp_dir().join("ferry-etcdctl.out");
        std::fs::write(&out, &actual).unwrap();
        panic!(
            "etcdctl printed something else against Ferry (all of it: {}), {difference}\n\
             the member's log:\n{}",
            out.display(),
            cluster.log(MEMBER)
        );
    }
}

/// The member's id: etcdctl prints ids in hex, and `fe77` is found
/// nowhere else in the transcript. etcd's member has its name.
const MEMBER: u64 = 0xfe77;

fn one_member() -> ProcessCluster {
    let mut cluster = ProcessCluster {
        root: tempfile::tempdir().unwrap(),
        nodes: Vec::new(),
        extra_args: Vec::new(),
        env: Vec::new(),
    };
    cluster.new_node(MEMBER);
    cluster.spawn(MEMBER, true, &[]);
    cluster
}

/// Waits until the endpoint answers a linearizable read.
fn wait_ready(etcdctl: &Path, endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = Command::new(etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["--command-timeout=5s", "get", "ready-check"])
            .output()
            .unwrap();
        if output.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not ready in 60 s: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Rewrites `etcdctl/etcd-3.4.out` from a real etcd (Debian's
/// `etcd-server`), one member named as Ferry's first.
#[test]
#[ignore = "records the fixture from a real etcd"]
fn record() {
    let etcdctl = debian_program("etcdctl", "etcd-client");
    let etcd = debian_program("etcd", "etcd-server");
    let dir = tempfile::tempdir().unwrap();
    let client = common::free_addr();
    let peer = common::free_addr();
    let mut server = Command::new(etcd)
        .arg(format!("--name=ferry-{MEMBER}"))
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .arg(format!("--listen-client-urls=http://{client}"))
        .arg(format!("--advertise-client-urls=http://{client}"))
        .arg(format!("--listen-peer-urls=http://{peer}"))
        .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
        .arg(format!("--initial-cluster=ferry-{MEMBER}=http://{peer}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&etcdctl, &client);
    let transcript = run_script(&etcdctl, &client);
    let _ = server.kill();
    let _ = server.wait();
    std::fs::write(fixture(), transcript).unwrap();
}

/// `etcdctl snapshot save` from a Ferry member writes a file that `ferry
/// snapshot restore --from FILE` makes a new cluster of, holding the same
/// keys at the same revisions (etcd's HashKV agrees).
#[test]
fn a_snapshot_saved_by_etcdctl_restores_into_a_ferry_cluster() {
    let etcdctl = debian_program("etcdctl", "etcd-client");
    let cluster = one_member();
    let endpoint = cluster.client_addr(MEMBER);
    wait_ready(&etcdctl, &endpoint);
    let run = |endpoint: &str, args: &[&str]| {
        let output = Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .arg("--command-timeout=30s")
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    for i in 0..200 {
        run(
            &endpoint,
            &["put", &format!("snap/{i:03}"), &format!("value {i}")],
        );
    }
    run(&endpoint, &["del", "snap/007"]);
    let file = cluster.root.path().join("saved.db");
    let saved = run(&endpoint, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let hash = |endpoint: &str| {
        let out = run(endpoint, &["endpoint", "hashkv", "-w", "json"]);
        let at = out.find("\"hash\":").expect("a hash") + 7;
        out[at..].split([',', '}']).next().unwrap().to_owned()
    };
    let before = hash(&endpoint);
    let listed = run(&endpoint, &["get", "--prefix", "snap/", "--keys-only"]);

    // A damaged file is refused, and makes nothing.
    let mut damaged = std::fs::read(&file).unwrap();
    damaged[100] ^= 1;
    let broken = cluster.root.path().join("broken.db");
    std::fs::write(&broken, &damaged).unwrap();
    let refused_dir = cluster.root.path().join("refused");
    let (code, _, stderr) = common::ferry(&[
        "snapshot",
        "restore",
        "--from",
        broken.to_str().unwrap(),
        "--data-dir",
        refused_dir.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("SHA-256"), "{stderr}");
    assert!(!refused_dir.exists());

    // The restored cluster holds what was saved.
    let mut restored = ProcessCluster {
        root: tempfile::tempdir().unwrap(),
        nodes: Vec::new(),
        extra_args: Vec::new(),
        env: Vec::new(),
    };
    restored.new_node(1);
    let node = &restored.nodes[0];
    let (code, stdout, stderr) = common::ferry(&[
        "snapshot",
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        node.dir.to_str().unwrap(),
        "--raft-addr",
        &node.raft,
        "--client-addr",
        &node.client,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    restored.spawn(1, false, &[]);
    let restored_endpoint = restored.client_addr(1);
    wait_ready(&etcdctl, &restored_endpoint);
    assert_eq!(
        run(
            &restored_endpoint,
            &["get", "--prefix", "snap/", "--keys-only"]
        ),
        listed
    );
    assert_eq!(hash(&restored_endpoint), before);
}

/// `etcdctl watch`, given every member, follows a prefix across a SIGKILL
/// of the leader (etcd's client resumes on another member from the
/// revision after the last it printed); `etcdctl put`, given every member,
/// goes on writing through the survivors. Every acknowledged write is
/// printed by the watch (exactly once per revision is checked through
/// etcd's Rust client, whose output has revisions: `tests/etcd_client.rs`).
#[test]
fn etcdctl_watch_follows_across_a_sigkill_of_the_leader() {
    let etcdctl = debian_program("etcdctl", "etcd-client");
    let mut cluster = ProcessCluster::start(3);
    let endpoints = cluster.endpoints().join(",");
    for endpoint in cluster.endpoints() {
        wait_ready(&etcdctl, &endpoint);
    }
    let etcdctl_at = |args: &[&str]| {
        Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .unwrap()
    };
    // Each put is retried until acknowledged: a put cut by the kill may
    // have been applied, then it is printed twice (at two revisions); an
    // acknowledged one must be printed at least once.
    let put = |key: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = etcdctl_at(&["put", key, "v"]);
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "put {key}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    put("k/start");
    let mut watch = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["watch", "--prefix", "k/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The watch is open once it prints a change made after it started.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|l| l == "k/probe") {
        put("k/probe");
        while let Ok(line) = printed.recv_timeout(Duration::from_millis(500)) {
            seen.push(line);
        }
        assert!(Instant::now() < deadline, "the watch printed nothing");
    }
    let keys: Vec<String> = (0..60).map(|i| format!("k/{i:03}")).collect();
    for (i, key) in keys.iter().enumerate() {
        if i == 20 {
            let status = etcdctl_at(&["endpoint", "status", "-w", "json"]);
            let text = String::from_utf8_lossy(&status.stdout).into_owned();
            let at = text.find("\"leader\":").expect("a leader") + 9;
            let leader: u64 = text[at..]
                .split([',', '}'])
                .next()
                .unwrap()
                .parse()
                .unwrap();
            cluster.sigkill(leader);
        }
        put(key);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !keys.iter().all(|k| seen.contains(k)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match printed.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let missing: Vec<_> = keys.iter().filter(|k| !seen.contains(k)).collect();
                let _ = watch.kill();
                panic!("the watch never printed {missing:?}");
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
}
