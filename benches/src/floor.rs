//! The replication floor: the least a one-client replicated put can take
//! on this machine, measured in the same run as the systems.
//!
//! Three members as threads with blocking I/O, nothing else: the client
//! sends a put to the leader over loopback TCP; the leader sends it to
//! both followers, appends it to its own log file with `fdatasync`, and
//! answers once a follower has done the same and acknowledged it. That is
//! the critical path a 3-member quorum commit cannot avoid: two client
//! messages, one round trip to a follower, and an fsync on each side, in
//! parallel. No consensus state, no batching, no apply, no framing beyond
//! fixed-size messages. Each log is zero-filled ahead of its records (as
//! Ferry's Raft log and WAL are), on the disk the clusters use.
//!
//! The gap between this row and a system's `put x1` is that system's
//! software path; this row itself is the machine's (its loopback wake-ups
//! and the members' fsyncs on a shared disk).

use crate::report::Row;
use hdrhistogram::Histogram;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// A put's bytes on the wire and in each log: the cluster suite's value
/// plus a key and a sequence number.
const MESSAGE: usize = 256 + 16 + 8;
const ACK: usize = 8;

/// Runs `puts` one-client replicated puts in `dir`; the row is system
/// `floor`, workload `replicated put`.
pub fn replicated_put(dir: &Path, puts: u64) -> Row {
    let log_bytes = (puts + 1) * MESSAGE as u64;
    let logs: Vec<File> = (0..3)
        .map(|member| reserved_log(&dir.join(format!("floor-{member}.log")), log_bytes))
        .collect();
    let mut logs = logs.into_iter();
    let leader_log = logs.next().expect("three logs");

    let client_side = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client_address = client_side.local_addr().expect("address");
    let mut followers = Vec::new();
    let mut threads = Vec::new();
    for log in logs {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        threads.push(std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            follower(stream, log);
        }));
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        followers.push(stream);
    }
    threads.push(std::thread::spawn(move || {
        let (stream, _) = client_side.accept().expect("accept");
        leader(stream, followers, leader_log);
    }));

    let mut client = TcpStream::connect(client_address).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let mut message = [0x5a_u8; MESSAGE];
    let mut ack = [0u8; ACK];
    let started = Instant::now();
    for sequence in 1..=puts {
        message[..8].copy_from_slice(&sequence.to_le_bytes());
        let sent = Instant::now();
        client.write_all(&message).expect("send");
        client.read_exact(&mut ack).expect("answer");
        assert_eq!(u64::from_le_bytes(ack), sequence, "answers come in order");
        histogram
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let seconds = started.elapsed().as_secs_f64();
    // Closing the client's connection ends the leader, whose end closes
    // the followers' connections and ends them.
    drop(client);
    for thread in threads {
        thread.join().expect("a member panicked");
    }
    crate::cluster::one_client_row(
        Row::new("floor", "replicated put"),
        "floor replicated put x1",
        &histogram,
        puts,
        seconds,
    )
}

/// A log file of `bytes` zeros, synced, so that an append's `fdatasync`
/// finds the file's size unchanged.
fn reserved_log(path: &Path, bytes: u64) -> File {
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("create log");
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        let n = zeros.len().min((bytes - at) as usize);
        file.write_all_at(&zeros[..n], at).expect("reserve");
        at += n as u64;
    }
    file.sync_all().expect("sync");
    file
}

/// Appends `message` at record `sequence` and waits for it to be on disk.
fn append(log: &File, sequence: u64, message: &[u8]) {
    log.write_all_at(message, sequence * MESSAGE as u64)
        .expect("append");
    log.sync_data().expect("fdatasync");
}

fn follower(mut leader: TcpStream, log: File) {
    leader.set_nodelay(true).expect("nodelay");
    let mut message = [0u8; MESSAGE];
    while leader.read_exact(&mut message).is_ok() {
        let sequence = u64::from_le_bytes(message[..8].try_into().expect("8 bytes"));
        append(&log, sequence, &message);
        // The leader stops once the client is done, without waiting for
        // the slower follower's last acknowledgement.
        if leader.write_all(&message[..ACK]).is_err() {
            break;
        }
    }
}

fn leader(mut client: TcpStream, mut followers: Vec<TcpStream>, log: File) {
    client.set_nodelay(true).expect("nodelay");
    let mut message = [0u8; MESSAGE];
    // The highest sequence each follower has acknowledged.
    let mut acknowledged = vec![0u64; followers.len()];
    while client.read_exact(&mut message).is_ok() {
        let sequence = u64::from_le_bytes(message[..8].try_into().expect("8 bytes"));
        // Followers first, so that their appends run while the leader's
        // own does.
        for follower in &mut followers {
            follower.write_all(&message).expect("replicate");
        }
        append(&log, sequence, &message);
        while acknowledged.iter().all(|&acked| acked < sequence) {
            for index in readable(&followers) {
                let mut ack = [0u8; ACK];
                followers[index].read_exact(&mut ack).expect("ack");
                acknowledged[index] = u64::from_le_bytes(ack);
            }
        }
        client.write_all(&message[..ACK]).expect("answer");
    }
}

/// The followers with an acknowledgement to read, waiting for one.
fn readable(followers: &[TcpStream]) -> Vec<usize> {
    let mut fds: Vec<libc::pollfd> = followers
        .iter()
        .map(|stream| libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of
        // `fds.len()` pollfd structs for the duration of the call, and
        // each fd stays open (its stream is borrowed) until it returns.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready > 0 {
            break;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::Interrupted,
            "poll: {error}"
        );
    }
    fds.iter()
        .enumerate()
        .filter(|(_, fd)| fd.revents != 0)
        .map(|(index, _)| index)
        .collect()
}
