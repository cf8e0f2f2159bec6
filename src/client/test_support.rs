//! What the client's unit tests share: attempts and log entries, a synthetic run judged against
//! the owner's weights, and the pieces of a loopback HTTP peer.

use super::admin::{LogEntry, LogFetch, ServerStats};
use super::report::{build_report, Report, Restart, RunRecord, ServerAccount};
use super::send::{AttemptRecord, Sent};
use super::wire::{host_header, request_id, AttemptOutcome, Target};
use crate::chaos::Outcome;
use crate::cli::ClientOptions;
use crate::json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

pub(super) const OWNER: [f64; Outcome::COUNT] = [0.2, 0.2, 0.1, 0.5];

pub(super) fn attempt(
    request: u64,
    attempt: u32,
    outcome: AttemptOutcome,
    sent: bool,
) -> AttemptRecord {
    AttemptRecord {
        request,
        attempt,
        outcome,
        sent,
        latency: Duration::from_millis(u64::from(attempt) * 10 + request),
    }
}

pub(super) fn entry(id: u64, request_id: Option<&str>, outcome: &str) -> LogEntry {
    LogEntry {
        id,
        time: "2024-10-23T23:55:31.705Z".into(),
        client_ip: "127.0.0.1".into(),
        outcome: outcome.into(),
        status: outcome.parse().ok(),
        request_id: request_id.map(str::to_string),
        duration_ms: Some(0.05),
    }
}

pub(super) fn synthetic_report(options: &ClientOptions) -> Report {
    let attempts = synthetic_attempts();
    let entries = faithful_entries(&attempts);
    report_of(options, &attempts, entries)
}

/// 100 requests; request k's first attempt follows a fixed 20/20/10/50 cycle, and
/// timeouts are retried once into a 200.
pub(super) fn synthetic_attempts() -> Vec<AttemptRecord> {
    let mut attempts = Vec::new();
    let cycle = [
        Outcome::Timeout,
        Outcome::Timeout,
        Outcome::Forbidden,
        Outcome::Forbidden,
        Outcome::ServerError,
        Outcome::Balance,
        Outcome::Balance,
        Outcome::Balance,
        Outcome::Balance,
        Outcome::Balance,
    ];
    for request in 1..=100u64 {
        let first = cycle[(request % 10) as usize];
        attempts.push(attempt(request, 1, AttemptOutcome::Server(first), true));
        if first == Outcome::Timeout {
            attempts.push(attempt(
                request,
                2,
                AttemptOutcome::Server(Outcome::Balance),
                true,
            ));
        }
    }
    attempts
}

/// One entry per attempt of run `feed0123`, with the attempt's outcome.
pub(super) fn faithful_entries(attempts: &[AttemptRecord]) -> Vec<LogEntry> {
    attempts
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let id = request_id("feed0123", a.request, a.attempt);
            entry(index as u64 + 1, Some(&id), &a.outcome.category())
        })
        .collect()
}

/// `/stats` of a server with the owner's weights and seed 123.
pub(super) fn owner_stats() -> ServerStats {
    ServerStats {
        seed: Some(123),
        probabilities: OWNER,
        total: Some(0),
        uptime_seconds: Some(1.0),
        started: None,
    }
}

/// What sending made of these attempts, without an early stop.
fn sent_of(attempts: &[AttemptRecord]) -> Sent {
    Sent {
        attempts: attempts.to_vec(),
        stopped: None,
        retries_dropped: Vec::new(),
    }
}

/// The report of run `feed0123` of `options.count` requests against this account.
pub(super) fn report_from(options: &ClientOptions, sent: &Sent, account: &ServerAccount) -> Report {
    let run = RunRecord {
        run_id: "feed0123",
        target: "127.0.0.1:8080",
        sent,
        elapsed: Duration::from_secs(2),
    };
    build_report(options, &run, account)
}

/// The report of run `feed0123` against a server with the owner's weights that logged
/// `entries` and did not restart.
pub(super) fn report_of(
    options: &ClientOptions,
    attempts: &[AttemptRecord],
    entries: Vec<LogEntry>,
) -> Report {
    let account = ServerAccount {
        stats: owner_stats(),
        restart: Restart::No,
        log: Ok(LogFetch {
            entries,
            dropped: 0,
        }),
    };
    let sent = sent_of(attempts);
    // Every request of the attempts, and no more, as a run that was not stopped.
    let requests = attempts.iter().map(|a| a.request).max().unwrap_or(0);
    let options = ClientOptions {
        count: requests,
        ..options.clone()
    };
    report_from(&options, &sent, &account)
}

pub(super) fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

pub(super) fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// A loopback peer that answers its n-th connection with `replies[n]` (after reading a request
/// head when `after_head`), then holds the connection until the client closes it: what a server
/// does that answers in part, in another protocol or too much. A thread per connection, so a
/// held one never delays the next accept.
pub(super) fn answer_each(replies: Vec<Vec<u8>>, after_head: bool) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("a bound address").port();
    std::thread::spawn(move || {
        for reply in replies {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            std::thread::spawn(move || {
                if after_head && read_head(&mut stream, &mut Vec::new()).is_none() {
                    return;
                }
                if stream.write_all(&reply).is_ok() {
                    let _ = stream.read(&mut [0u8; 1]);
                }
            });
        }
    });
    loopback(port)
}

pub(super) fn loopback(port: u16) -> Target {
    Target {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        host_header: host_header("127.0.0.1", port),
    }
}

pub(super) fn number_in(value: &Value, path: &[&str]) -> Option<u64> {
    path.iter()
        .try_fold(value, |value, key| value.get(key))
        .and_then(Value::as_u64)
}
