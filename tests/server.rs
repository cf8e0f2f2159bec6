//! The server over real TCP: outcomes, determinism, the log, limits and HTTP/1.1 behaviour.

mod common;
#[path = "../src/json.rs"]
#[allow(dead_code)]
mod json;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

fn decode(reply: &Reply) -> json::Value {
    json::decode(&reply.text()).unwrap_or_else(|error| panic!("{error}: {}", reply.text()))
}

fn number(value: &json::Value, key: &str) -> u64 {
    value
        .get(key)
        .and_then(json::Value::as_u64)
        .unwrap_or_else(|| panic!("no number '{key}' in {value:?}"))
}

/// Sends `/getbalance` with a request id and returns the status, or `None` for a hang (the
/// server closed the connection without answering after a short `--hang`).
fn balance_status(server: &Server, request_id: &str) -> Option<u16> {
    get(server, "/getbalance", &[("X-Request-Id", request_id)]).map(|reply| reply.status)
}

fn all_log_entries(server: &Server, query: &str) -> Vec<json::Value> {
    let reply = get(server, &format!("/getlogs?{query}"), &[]).expect("getlogs answered");
    assert_eq!(reply.status, 200, "{}", reply.text());
    decode(&reply)
        .get("entries")
        .and_then(json::Value::as_array)
        .expect("entries")
        .to_vec()
}

#[test]
fn every_outcome_is_seen_and_logged_with_its_request_id() {
    let server = Server::start("outcomes", &["--seed", "7", "--hang", "20ms"]);
    let mut seen: HashMap<Option<u16>, u32> = HashMap::new();
    for index in 1..=60 {
        let status = balance_status(&server, &format!("t-{index}"));
        *seen.entry(status).or_default() += 1;
    }
    for outcome in [None, Some(403), Some(500), Some(200)] {
        assert!(
            seen.contains_key(&outcome),
            "{outcome:?} never seen: {seen:?}"
        );
    }
    let entries = all_log_entries(&server, "request_id_prefix=t-");
    assert_eq!(entries.len(), 60);
    for (index, entry) in entries.iter().enumerate() {
        assert_eq!(number(entry, "id"), index as u64 + 1);
        assert_eq!(
            entry.get("request_id").and_then(json::Value::as_str),
            Some(format!("t-{}", index + 1).as_str())
        );
        let outcome = entry.get("outcome").and_then(json::Value::as_str).unwrap();
        let status = entry.get("status").and_then(json::Value::as_u64);
        match outcome {
            "timeout" => assert!(status.is_none()),
            name => assert_eq!(status.map(|code| code.to_string()).as_deref(), Some(name)),
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_outcomes() {
    let run = || {
        let server = Server::start("determinism", &["--seed", "99", "--hang", "10ms"]);
        (1..=40)
            .map(|index| balance_status(&server, &format!("d-{index}")))
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first, run());
    let other = Server::start("determinism-other", &["--seed", "100", "--hang", "10ms"]);
    let different: Vec<_> = (1..=40)
        .map(|index| balance_status(&other, &format!("d-{index}")))
        .collect();
    assert_ne!(
        first, different,
        "seeds 99 and 100 gave the same 40 outcomes"
    );
}

#[test]
fn twenty_thousand_requests_match_the_weights() {
    let server = Server::start(
        "chi-square",
        &["--seed", "2024", "--hang", "0ms", "--no-log-file"],
    );
    let address = server.address;
    let threads: Vec<_> = (0..8)
        .map(|worker| {
            std::thread::spawn(move || {
                let mut counts: HashMap<Option<u16>, u64> = HashMap::new();
                let mut stream = None;
                for _ in 0..2500 {
                    let connection = stream.get_or_insert_with(|| {
                        let stream = std::net::TcpStream::connect(address).expect("connect");
                        stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                        Client::new(stream)
                    });
                    connection
                        .write_all(b"GET /getbalance HTTP/1.1\r\nHost: t\r\n\r\n")
                        .expect("send");
                    let reply = connection.read_reply(false);
                    if reply.is_none() {
                        stream = None;
                    }
                    *counts.entry(reply.map(|reply| reply.status)).or_default() += 1;
                }
                let _ = worker;
                counts
            })
        })
        .collect();
    let mut counts: HashMap<Option<u16>, u64> = HashMap::new();
    for thread in threads {
        for (outcome, count) in thread.join().unwrap() {
            *counts.entry(outcome).or_default() += count;
        }
    }
    let observed = [
        counts.get(&None).copied().unwrap_or(0),
        counts.get(&Some(403)).copied().unwrap_or(0),
        counts.get(&Some(500)).copied().unwrap_or(0),
        counts.get(&Some(200)).copied().unwrap_or(0),
    ];
    assert_eq!(observed.iter().sum::<u64>(), 20_000, "{counts:?}");
    // Pearson's statistic by hand, against the 0.1% critical value for 3 degrees of freedom
    // (scipy.stats.chi2.isf(0.001, 3) = 16.266236196238129). The seed is fixed, so this is
    // deterministic, not flaky.
    let expected = [0.2, 0.2, 0.1, 0.5].map(|p| p * 20_000.0);
    let statistic: f64 = observed
        .iter()
        .zip(expected)
        .map(|(&seen, wanted)| (seen as f64 - wanted).powi(2) / wanted)
        .sum();
    assert!(
        statistic < 16.266,
        "chi-square {statistic} for {observed:?}"
    );

    // The server's own test agrees with what the client saw.
    let stats = decode(&get(&server, "/stats", &[]).unwrap());
    assert_eq!(number(&stats, "total"), 20_000);
    let counted = stats.get("counts").unwrap();
    for (name, seen) in ["timeout", "403", "500", "200"].iter().zip(observed) {
        assert_eq!(number(counted, name), seen, "{name}");
    }
    let server_statistic = stats
        .get("chi_square")
        .and_then(|test| test.get("statistic"))
        .and_then(json::Value::as_f64)
        .unwrap();
    assert!((server_statistic - statistic).abs() < 1e-6);
    let p_value = stats
        .get("chi_square")
        .and_then(|test| test.get("p_value"))
        .and_then(json::Value::as_f64)
        .unwrap();
    assert!(p_value > 0.001 && p_value <= 1.0);
}

#[test]
fn the_log_file_has_one_line_per_request_after_sigterm() {
    let server = Server::start("log-file", &["--seed", "5", "--hang", "10ms"]);
    for index in 0..150 {
        balance_status(&server, &format!("f-{index}"));
    }
    let log_path = server.path("unreliable.log");
    let (status, stderr, _directory) = server.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    let text = std::fs::read_to_string(&log_path).expect("log file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 150, "{text}");
    for line in lines {
        let parts: Vec<&str> = line.split(" - ").collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[1], "127.0.0.1");
        assert!(
            [
                "200 OK",
                "403 Forbidden",
                "500 Internal Server Error",
                "Timeout occurred"
            ]
            .contains(&parts[2]),
            "{line}"
        );
        // 2024-10-23 23:55:31,705
        assert_eq!(parts[0].len(), 23, "{line}");
        assert_eq!(&parts[0][19..20], ",");
    }
}

#[test]
fn a_log_file_that_cannot_be_written_is_reported_with_the_entries_missing_from_it() {
    // /dev/full fails every write as a full disk does.
    let server = Server::start(
        "log-full",
        &["--weights", "200=1", "--log-file", "/dev/full"],
    );
    for index in 0..7 {
        assert_eq!(balance_status(&server, &format!("full-{index}")), Some(200));
    }
    // The entries are still in memory, and served.
    assert_eq!(all_log_entries(&server, "limit=100").len(), 7);
    let (status, stderr, _directory) = server.terminate();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: cannot write log file '/dev/full': No space left on device (os error 28); \
             entries 1 to 7 (7 of them) are not in it"
        ),
        "{stderr}"
    );
}

fn log_ids(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .expect("log file")
        .lines()
        .map(|line| {
            json::decode(line)
                .unwrap_or_else(|error| panic!("{line:?}: {error:?}"))
                .get("id")
                .and_then(json::Value::as_u64)
                .expect("id")
        })
        .collect()
}

fn make_fifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success());
}

#[test]
fn sighup_stops_the_server_cleanly_with_every_entry_in_the_file() {
    let server = Server::start("log-hup", &["--weights", "200=1", "--log-format", "json"]);
    for index in 0..40 {
        balance_status(&server, &format!("hup-{index}"));
    }
    let log_path = server.path("unreliable.log");
    let (status, stderr, _directory) = server.stop_with("HUP");
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        stderr.contains("stopped by signal 1 after 40 logged requests"),
        "{stderr}"
    );
    assert_eq!(log_ids(&log_path), (1..=40).collect::<Vec<u64>>());
}

#[test]
fn a_log_file_at_the_file_size_limit_is_a_reported_error_not_a_silent_death() {
    if !have_tool("prlimit") {
        return;
    }
    let server = Server::start_under(
        "log-fsize",
        "prlimit --fsize=3000 --pid $$ &&",
        &["--weights", "200=1", "--log-format", "json"],
    );
    for index in 0..60 {
        assert_eq!(balance_status(&server, &format!("big-{index}")), Some(200));
    }
    let log_path = server.path("unreliable.log");
    let (status, stderr, _directory) = server.terminate();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let text = std::fs::read_to_string(&log_path).expect("log file");
    assert!(text.len() <= 3000 && text.ends_with('\n'), "{text:?}");
    let written = log_ids(&log_path);
    assert_eq!(written, (1..=written.len() as u64).collect::<Vec<u64>>());
    let named = format!(
        "File too large (os error 27); entries {} to 60 ({} of them) are not in it",
        written.len() + 1,
        60 - written.len()
    );
    assert!(stderr.contains(&named), "{stderr}");
}

#[test]
fn a_fifo_log_file_whose_reader_opens_it_after_the_server_starts_gets_every_entry() {
    let directory = scratch_directory("log-fifo-late-reader");
    let fifo = directory.join("log.fifo");
    make_fifo(&fifo);
    // The reader opens after the server's first try: `cat log.fifo & unreliable serve ...`.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::read_to_string(&fifo).expect("read the FIFO")
        })
    };
    let log_file = fifo.to_str().unwrap().to_string();
    let server = Server::start(
        "log-fifo-late-reader-server",
        &["--weights", "200=1", "--log-file", &log_file],
    );
    for index in 0..5 {
        assert_eq!(balance_status(&server, &format!("late-{index}")), Some(200));
    }
    let (status, stderr, _directory) = server.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    let text = reader.join().expect("reader thread");
    assert_eq!(text.lines().count(), 5, "{text:?}");
    assert!(
        text.lines().all(|line| line.ends_with(" - 200 OK")),
        "{text:?}"
    );
}

#[test]
fn a_fifo_log_file_that_nothing_reads_is_refused_after_a_short_wait() {
    let directory = scratch_directory("log-fifo-alone");
    let fifo = directory.join("log.fifo");
    make_fifo(&fifo);
    let mut command = std::process::Command::new(binary());
    command
        .args(["serve", "--port", "0", "--log-file"])
        .arg(&fifo);
    let finished = run_until(command, STEP_TIMEOUT, "opening a FIFO without a reader");
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished
            .stderr
            .contains("it is a FIFO and nothing opened it for reading within 1 s"),
        "{finished:?}"
    );
}

#[test]
fn a_second_server_on_the_same_log_file_is_refused_until_the_first_stops() {
    let first = Server::start(
        "log-shared",
        &["--weights", "200=1", "--log-format", "json"],
    );
    balance_status(&first, "first-1");
    let log_path = first.path("unreliable.log");
    let second = |what: &str| {
        let mut command = std::process::Command::new(binary());
        command
            .args(["serve", "--port", "0", "--log-format", "json", "--log-file"])
            .arg(&log_path);
        run_until(command, STEP_TIMEOUT, what)
    };
    let refused = second("a second server on a log file in use");
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("is being written by another process"),
        "{refused:?}"
    );
    balance_status(&first, "first-2");
    let (status, stderr, _directory) = first.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(log_ids(&log_path), vec![1, 2]);

    // The lock ends with the process that held it: the next run may append.
    let log_file = log_path.to_str().expect("a UTF-8 scratch path").to_string();
    let next = Server::start(
        "log-shared-next",
        &[
            "--weights",
            "200=1",
            "--log-format",
            "json",
            "--log-file",
            &log_file,
        ],
    );
    balance_status(&next, "next-1");
    let (status, stderr, _directory) = next.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(log_ids(&log_path), vec![1, 2, 1]);
}

/// A server with 1,500 entries of about 350 bytes logged to a FIFO whose reader never reads: the
/// pipe is full, and the server's writes can never finish. The reader and the FIFO's directory
/// come with it, to be kept.
fn server_whose_log_reader_never_reads(name: &str) -> (Server, std::fs::File, Scratch) {
    use std::os::unix::fs::OpenOptionsExt;
    let directory = scratch_directory(&format!("{name}-fifo"));
    let fifo = directory.join("log.fifo");
    make_fifo(&fifo);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o4000)
        .open(&fifo)
        .expect("open the FIFO for reading");
    let log_file = fifo.to_str().unwrap().to_string();
    let server = Server::start(
        name,
        &[
            "--weights",
            "200=1",
            "--log-format",
            "json",
            "--log-file",
            &log_file,
        ],
    );
    let mut client = server.connect();
    let request = format!(
        "GET /getbalance HTTP/1.1\r\nHost: x\r\nX-Request-Id: {}\r\n\r\n",
        "s".repeat(150)
    );
    for _ in 0..1500 {
        client.write_all(request.as_bytes()).unwrap();
        assert_eq!(
            client.read_reply(false).map(|reply| reply.status),
            Some(200)
        );
    }
    (server, reader, directory)
}

#[test]
fn a_stop_gives_up_on_a_log_reader_that_never_reads_and_names_what_is_missing() {
    let (server, _reader, _fifo) = server_whose_log_reader_never_reads("log-fifo-stuck");
    let started = std::time::Instant::now();
    let (status, stderr, _directory) = server.terminate();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not keeping up (entries wait in memory)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no write went through for 5 s; entries ") && stderr.contains(" to 1500 ("),
        "{stderr}"
    );
    // The patience, not forever (a bound for a broken stop, not a timing assertion).
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[test]
fn a_second_signal_ends_the_wait_for_a_log_reader_and_names_what_is_missing() {
    let (mut server, _reader, _fifo) =
        server_whose_log_reader_never_reads("log-fifo-second-signal");
    // Stderr line by line, to send the second signal once the server says it waits.
    let pipe = server.child.stderr.take().expect("server stderr");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let pid = server.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let mut stderr = String::new();
    while !stderr.contains("a second signal stops without them") {
        let line = lines
            .recv_timeout(Duration::from_secs(4))
            .unwrap_or_else(|_| panic!("no notice of the wait in: {stderr}"));
        stderr.push_str(&line);
        stderr.push('\n');
    }
    assert!(stderr.contains("writing the last "), "{stderr}");
    let (status, _, _directory) = server.stop_with("INT");
    stderr.extend(lines.iter().map(|line| line + "\n"));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a second signal stopped the writing; entries ")
            && stderr.contains(" to 1500 ("),
        "{stderr}"
    );
    assert!(!stderr.contains("no write went through"), "{stderr}");
}

#[test]
fn a_log_file_left_ending_mid_line_gets_a_line_break_before_new_entries() {
    let directory = scratch_directory("log-mid-line");
    let log_path = directory.join("requests.jsonl");
    std::fs::write(&log_path, "{\"id\":7,\"outcome\":\"2").unwrap();
    let log_file = log_path.to_str().unwrap().to_string();
    let server = Server::start(
        "log-mid-line-server",
        &[
            "--weights",
            "200=1",
            "--log-format",
            "json",
            "--log-file",
            &log_file,
        ],
    );
    for index in 0..3 {
        balance_status(&server, &format!("m-{index}"));
    }
    let (status, stderr, _server_directory) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("ended mid-line"), "{stderr}");
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "{\"id\":7,\"outcome\":\"2");
    for (line, id) in lines[1..].iter().zip(1..) {
        let entry = json::decode(line).unwrap();
        assert_eq!(entry.get("id").and_then(json::Value::as_u64), Some(id));
    }
}

#[test]
fn a_rotated_log_file_is_followed_by_a_new_one_at_its_path() {
    let server = Server::start(
        "log-rotate",
        &["--weights", "200=1", "--log-format", "json"],
    );
    let log_path = server.path("unreliable.log");
    let rotated = server.path("unreliable.log.1");
    for index in 0..5 {
        balance_status(&server, &format!("r-{index}"));
    }
    // The first entries are in the file before it is moved (the writer runs every 10 ms).
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    while log_ids(&log_path).len() < 5 {
        assert!(std::time::Instant::now() < deadline, "entries not written");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::rename(&log_path, &rotated).unwrap();
    while !log_path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no new file after rotation"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for index in 5..9 {
        balance_status(&server, &format!("r-{index}"));
    }
    let (status, stderr, _directory) = server.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("was moved or removed; new entries go to a new file"),
        "{stderr}"
    );
    assert_eq!(log_ids(&rotated), vec![1, 2, 3, 4, 5]);
    assert_eq!(log_ids(&log_path), vec![6, 7, 8, 9]);
}

#[test]
fn a_log_capacity_that_does_not_fit_in_memory_is_a_clear_error() {
    if !have_tool("prlimit") {
        return;
    }
    let mut command = std::process::Command::new("prlimit");
    command.arg("--as=1000000000").arg(binary()).args([
        "serve",
        "--port",
        "0",
        "--no-log-file",
        "--log-capacity",
        "100000000",
    ]);
    let finished = run_until(command, STEP_TIMEOUT, "reserving the log ring");
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished.stderr.contains("for --log-capacity 100000000")
            && finished
                .stderr
                .contains("(choose a smaller --log-capacity)"),
        "{finished:?}"
    );
}

#[test]
fn json_log_format_writes_one_object_per_line_and_appends_across_restarts() {
    let directory = scratch_directory("json-log");
    let log_path = directory.join("requests.jsonl");
    let log_argument = log_path.to_str().unwrap().to_string();
    for round in 0..2 {
        let server = Server::start(
            "json-log-run",
            &[
                "--seed",
                "3",
                "--hang",
                "10ms",
                "--log-format",
                "json",
                "--log-file",
                &log_argument,
            ],
        );
        for index in 0..20 {
            balance_status(&server, &format!("r{round}-{index}\"\\\\"));
        }
        let (status, stderr, _directory) = server.terminate();
        assert!(status.success(), "{stderr}");
    }
    let text = std::fs::read_to_string(&log_path).expect("log file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 40);
    for line in &lines {
        let entry = json::decode(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(entry.get("outcome").and_then(json::Value::as_str).is_some());
    }
}

#[test]
fn getlogs_pages_with_since_and_limit_and_filters() {
    let server = Server::start(
        "paging",
        &["--seed", "11", "--hang", "10ms", "--no-log-file"],
    );
    for index in 0..30 {
        balance_status(&server, &format!("p-{index}"));
    }
    let first = decode(&get(&server, "/getlogs?limit=10", &[]).unwrap());
    assert_eq!(number(&first, "total"), 30);
    assert_eq!(number(&first, "returned"), 10);
    assert_eq!(number(&first, "next_since"), 10);
    let second = decode(&get(&server, "/getlogs?since=10&limit=100", &[]).unwrap());
    assert_eq!(number(&second, "returned"), 20);
    assert_eq!(number(&second, "next_since"), 30);
    let forbidden = all_log_entries(&server, "outcome=403");
    assert!(!forbidden.is_empty());
    assert!(forbidden
        .iter()
        .all(|entry| entry.get("status").and_then(json::Value::as_u64) == Some(403)));
    assert_eq!(all_log_entries(&server, "client=127.0.0.1").len(), 30);
    assert_eq!(all_log_entries(&server, "client=10.1.2.3").len(), 0);
    let bad = get(&server, "/getlogs?limit=ten", &[]).unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("limit"), "{}", bad.text());
}

#[test]
fn log_capacity_drops_the_oldest_entries_and_counts_them() {
    let server = Server::start(
        "capacity",
        &[
            "--seed",
            "1",
            "--hang",
            "10ms",
            "--log-capacity",
            "5",
            "--no-log-file",
        ],
    );
    for index in 0..12 {
        balance_status(&server, &format!("c-{index}"));
    }
    let logs = decode(&get(&server, "/getlogs", &[]).unwrap());
    assert_eq!(number(&logs, "total"), 12);
    assert_eq!(number(&logs, "dropped"), 7);
    let ids: Vec<u64> = logs
        .get("entries")
        .and_then(json::Value::as_array)
        .unwrap()
        .iter()
        .map(|entry| number(entry, "id"))
        .collect();
    assert_eq!(ids, vec![8, 9, 10, 11, 12]);
}

#[test]
fn endpoints_and_methods() {
    let server = Server::start("endpoints", &["--no-log-file"]);
    let health = get(&server, "/health", &[]).unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    for header in ["date", "server", "content-length", "content-type"] {
        assert!(
            health.header(header).is_some(),
            "no {header}: {}",
            health.head
        );
    }
    assert_eq!(get(&server, "/", &[]).unwrap().status, 200);
    assert_eq!(get(&server, "/nothing-here", &[]).unwrap().status, 404);
    // What a cache in front of the server must not keep: a fault, a health that has changed, the
    // log and the counts a client reconciles against.
    for (path, headers) in [
        ("/getbalance", &[("X-Unreliable-Outcome", "403")][..]),
        ("/health", &[]),
        ("/stats", &[]),
        ("/getlogs", &[]),
    ] {
        let reply = get(&server, path, headers).unwrap();
        assert_eq!(reply.status, if path == "/getbalance" { 403 } else { 200 });
        assert_eq!(
            reply.header("cache-control").as_deref(),
            Some("no-store"),
            "{path}: {}",
            reply.head
        );
    }
    // /getbalance's form follows Accept, and says so (RFC 9110 §12.5.5).
    for accept in ["application/json", "text/html"] {
        let reply = get(
            &server,
            "/getbalance",
            &[("Accept", accept), ("X-Unreliable-Outcome", "200")],
        )
        .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("vary").as_deref(),
            Some("Accept"),
            "{}",
            reply.head
        );
    }
    let post = exchange(
        &server,
        b"POST /getbalance HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD, OPTIONS"));
    let options = exchange(&server, b"OPTIONS /getlogs HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(options.status, 204);
    assert_eq!(
        options.header("allow").as_deref(),
        Some("GET, HEAD, OPTIONS")
    );
    // No content: no Content-Length (RFC 9110 §8.6) and nothing to give a type.
    assert_eq!(options.header("content-length"), None);
    assert_eq!(options.header("content-type"), None);
    let connect = exchange(
        &server,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .unwrap();
    assert_eq!(connect.status, 501);
    let brew = exchange(&server, b"BREW /getbalance HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(brew.status, 501);
    let head = exchange(&server, b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length").as_deref(), Some("3"));
    let stats = decode(&get(&server, "/stats", &[]).unwrap());
    assert!(stats.get("seed").is_some() && stats.get("uptime_seconds").is_some());
    // The start time, RFC 3339 in UTC to the millisecond: what tells a restart apart.
    let started = stats
        .get("started")
        .and_then(|value| value.as_str())
        .unwrap();
    assert_eq!(started.len(), "2026-11-28T10:00:00.000Z".len(), "{started}");
    assert!(
        started.starts_with("20") && started.ends_with('Z'),
        "{started}"
    );
    let again = decode(&get(&server, "/stats", &[]).unwrap());
    assert_eq!(
        again.get("started").and_then(|value| value.as_str()),
        Some(started)
    );
}

#[test]
fn balance_is_html_by_default_and_json_on_request() {
    let server = Server::start("balance", &["--weights", "200=1", "--no-log-file"]);
    let html = get(&server, "/getbalance", &[]).unwrap();
    assert_eq!(html.status, 200);
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(html.text().contains("<html"));
    // HEAD: the same head with the length of the page it would send, and no body, so the
    // pipelined request after it is read at the right byte.
    let mut client = server.connect();
    client
        .write_all(
            b"HEAD /getbalance HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let head = client.read_reply(true).unwrap();
    assert_eq!(head.status, 200);
    let length: usize = head.header("content-length").unwrap().parse().unwrap();
    assert!(length > 500, "{}", head.head);
    let after = client.read_reply(false).unwrap();
    assert_eq!((after.status, after.text().as_str()), (200, "ok\n"));
    let json_reply = get(&server, "/getbalance", &[("Accept", "application/json")]).unwrap();
    assert_eq!(
        json_reply.header("content-type").as_deref(),
        Some("application/json")
    );
    let balance = decode(&json_reply);
    for key in [
        "account_id",
        "holder",
        "balance",
        "currency",
        "as_of",
        "transactions",
    ] {
        assert!(
            balance.get(key).is_some(),
            "no {key} in {}",
            json_reply.text()
        );
    }
}

/// The status the server answers to `raw` on a fresh connection, and whether it then closed.
fn status_and_close(server: &Server, raw: &[u8]) -> (u16, bool) {
    let mut stream = server.connect();
    stream.write_all(raw).expect("send");
    let reply = stream.read_reply(false).expect("a response");
    let closed = reply
        .header("connection")
        .is_some_and(|value| value.eq_ignore_ascii_case("close"));
    (reply.status, closed)
}

#[test]
fn malformed_and_oversized_requests_get_the_right_status_and_a_close() {
    let server = Server::start("malformed", &["--no-log-file"]);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    let many_fields = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..101)
            .map(|index| format!("X-{index}: v\r\n"))
            .collect::<String>()
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"HELLO\r\n\r\n".to_vec(), 400),
        ("no host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("bare lf", b"GET / HTTP/1.1\nHost: t\n\n".to_vec(), 400),
        ("long target", long_target.into_bytes(), 414),
        ("many fields", many_fields.into_bytes(), 431),
        ("big header", big_header.into_bytes(), 431),
        (
            "cl and te",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "conflicting lengths",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "body too large",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n".to_vec(),
            413,
        ),
        (
            "gzip coding",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        ("http/2", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(), 505),
    ];
    for (name, raw, expected) in cases {
        let (status, closed) = status_and_close(&server, &raw);
        assert_eq!(status, expected, "{name}");
        assert!(closed, "{name}: connection not closed");
    }
    // RFC 9110 §15.6.6: a 505 says which versions the server does speak.
    let version = exchange(&server, b"GET / HTTP/2.0\r\nHost: t\r\n\r\n").unwrap();
    assert!(
        version.text().contains("HTTP/1.1 or HTTP/1.0"),
        "{}",
        version.text()
    );
}

#[test]
fn keep_alive_close_http10_and_pipelining() {
    let server = Server::start("keepalive", &["--weights", "403=1", "--no-log-file"]);
    // Three pipelined requests in one write: three responses in order on one connection.
    let mut stream = server.connect();
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /getbalance HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| stream.read_reply(false).expect("pipelined reply").status)
        .collect();
    assert_eq!(statuses, vec![200, 403, 404]);
    // Still open afterwards.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let last = stream.read_reply(false).unwrap();
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    assert!(
        stream.read_reply(false).is_none(),
        "open after Connection: close"
    );

    // HTTP/1.0 closes by default and answers in HTTP/1.1 syntax.
    let mut old = server.connect();
    old.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
    let reply = old.read_reply(false).unwrap();
    assert_eq!(reply.status, 200);
    assert!(old.read_reply(false).is_none(), "HTTP/1.0 left open");

    // HTTP/1.0 with keep-alive stays open.
    let mut kept = server.connect();
    for _ in 0..2 {
        kept.write_all(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let reply = kept.read_reply(false).unwrap();
        assert_eq!(reply.status, 200);
        // HTTP/1.0 closes by default, so a persistent answer must say it is one.
        assert_eq!(reply.header("connection").as_deref(), Some("keep-alive"));
    }
}

/// `Sun, 29 Nov 2026 05:30:01 GMT` from an RFC 3339 time such as `2026-11-29T05:30:01.123Z`,
/// leaving the weekday out (it follows from the date).
fn http_date_without_weekday(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month: usize = rfc3339[5..7].parse().expect("month");
    format!(
        "{} {} {} {} GMT",
        &rfc3339[8..10],
        MONTHS[month - 1],
        &rfc3339[0..4],
        &rfc3339[11..19]
    )
}

#[test]
fn a_request_is_timed_from_its_first_byte_and_logged_at_the_time_of_its_date_header() {
    let server = Server::start("timed", &["--weights", "200=1", "--no-log-file"]);
    let mut client = server.connect();
    client
        .write_all(b"GET /getbalance HTTP/1.1\r\nHost: t\r\nX-Request-Id: first\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_reply(false).expect("first reply").status, 200);
    // Idle between requests (not part of the next one's time), then a head in two parts with a
    // pause between them (part of it).
    std::thread::sleep(Duration::from_millis(1000));
    client
        .write_all(b"GET /getbalance HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.write_all(b"X-Request-Id: second\r\n\r\n").unwrap();
    let reply = client.read_reply(false).expect("second reply");
    assert_eq!(reply.status, 200);
    let entries = all_log_entries(&server, "request_id_prefix=second");
    let [entry] = entries.as_slice() else {
        panic!("one entry expected: {entries:?}");
    };
    let duration_ms = entry
        .get("duration_ms")
        .and_then(json::Value::as_f64)
        .expect("duration_ms");
    // About 300 ms: less by however much later the server woke to the first part than to the
    // second (a 299.986 ms was seen), and at least 1,300 if timed from the previous answer.
    assert!(
        (200.0..1200.0).contains(&duration_ms),
        "timed from the first byte, not from the previous answer: {duration_ms} ms"
    );
    // One clock reading serves both, so they never straddle a second.
    let time = entry
        .get("time")
        .and_then(json::Value::as_str)
        .expect("time");
    let date = reply.header("date").expect("Date header");
    assert_eq!(
        date.get(5..),
        Some(http_date_without_weekday(time).as_str()),
        "{date} vs {time}"
    );
}

#[test]
fn chunked_request_bodies_are_read_and_discarded() {
    let server = Server::start("chunked", &["--no-log-file"]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"GET /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    assert_eq!(stream.read_reply(false).unwrap().status, 200);
    assert_eq!(stream.read_reply(false).unwrap().status, 200);
}

fn thread_count(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("Threads line")
}

#[test]
fn hung_connections_cost_no_threads_and_do_not_block_others() {
    let server = Server::start(
        "hangs",
        &[
            "--weights",
            "timeout=1",
            "--hang",
            "30s",
            "--threads",
            "8",
            "--pollers",
            "3",
            "--no-log-file",
        ],
    );
    let threads_before = thread_count(server.child.id());
    // main (waiting for a signal), the acceptor, the workers and the pollers; nothing per
    // connection.
    assert_eq!(threads_before, 1 + 1 + 8 + 3);
    let mut hung = Vec::new();
    for _ in 0..200 {
        let mut stream = server.connect();
        stream
            .write_all(b"GET /getbalance HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        hung.push(stream);
    }
    // Wait until the server has logged all 200 (each is parked after being logged).
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let stats = decode(&get(&server, "/stats", &[]).unwrap());
        if number(&stats, "total") == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hung requests not logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Other clients are still answered, one after another, while the 200 hang.
    for _ in 0..100 {
        assert_eq!(get(&server, "/health", &[]).unwrap().status, 200);
    }
    assert_eq!(thread_count(server.child.id()), threads_before);
    // None of the hung connections got a response.
    for stream in &mut hung {
        stream
            .stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = std::io::Read::read(&mut stream.stream, &mut byte);
        assert!(read.is_err(), "a hung request was answered: {read:?}");
    }
}

#[test]
fn a_hang_ends_after_the_hang_duration_without_a_response() {
    let server = Server::start(
        "hang-ends",
        &["--weights", "timeout=1", "--hang", "200ms", "--no-log-file"],
    );
    let mut stream = server.connect();
    stream
        .write_all(b"GET /getbalance HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    assert!(stream.read_reply(false).is_none());
    // Closed by the server (EOF), well before the 10 s read timeout of the test's socket.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn too_many_connections_get_503() {
    let server = Server::start(
        "limit",
        &[
            "--max-connections",
            "3",
            "--weights",
            "timeout=1",
            "--no-log-file",
        ],
    );
    let held: Vec<_> = (0..3)
        .map(|_| {
            let mut stream = server.connect();
            stream
                .write_all(b"GET /getbalance HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = server.connect();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = extra.read_reply(false).expect("a 503");
    assert_eq!(reply.status, 503);
    drop(held);
}

#[test]
fn curl_gets_correct_answers() {
    if !have_tool("curl") {
        return;
    }
    let server = Server::start("curl", &["--weights", "200=1", "--no-log-file"]);
    let url = format!("http://{}/getbalance", server.address);
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &url,
            &url,
        ])
        .output()
        .expect("curl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(text.starts_with("200 "), "{text}");
    let logs = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http1.0",
            &format!("http://{}/getlogs", server.address),
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&logs.stdout).into_owned();
    let value = json::decode(&body).unwrap_or_else(|error| panic!("{error}: {body}"));
    assert_eq!(number(&value, "total"), 2);
}

#[test]
fn python_http_client_gets_correct_answers() {
    if !have_tool("python3") {
        return;
    }
    let server = Server::start(
        "python",
        &["--weights", "403=1,500=1", "--seed", "4", "--no-log-file"],
    );
    let script = format!(
        r#"
import http.client, json
connection = http.client.HTTPConnection("127.0.0.1", {port}, timeout=10)
statuses = []
for index in range(20):
    connection.request("GET", "/getbalance", headers={{"X-Request-Id": "py-%d" % index}})
    response = connection.getresponse()
    response.read()
    statuses.append(response.status)
connection.request("GET", "/getlogs?request_id_prefix=py-")
logs = json.loads(connection.getresponse().read())
assert [entry["status"] for entry in logs["entries"]] == statuses, (statuses, logs)
assert set(statuses) == {{403, 500}}, statuses
print("ok", len(statuses))
"#,
        port = server.address.port()
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok 20");
}

#[test]
fn a_request_can_force_its_outcome_and_is_kept_out_of_the_test() {
    let server = Server::start(
        "forced",
        &["--weights", "200=1", "--hang", "50ms", "--no-log-file"],
    );
    let forced = get(&server, "/getbalance", &[("X-Unreliable-Outcome", "500")]).unwrap();
    assert_eq!(forced.status, 500);
    assert!(get(
        &server,
        "/getbalance",
        &[("X-Unreliable-Outcome", "timeout")]
    )
    .is_none());
    assert_eq!(get(&server, "/getbalance", &[]).unwrap().status, 200);
    let bad = get(&server, "/getbalance", &[("X-Unreliable-Outcome", "418")]).unwrap();
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("x-unreliable-outcome"),
        "{}",
        bad.text()
    );
    // A second id or forced outcome is refused, not dropped: neither line wins, nothing is logged.
    for repeated in [
        [
            ("X-Unreliable-Outcome", "403"),
            ("x-unreliable-outcome", "200"),
        ],
        [("X-Request-Id", "a"), ("X-REQUEST-ID", "b")],
    ] {
        let refused = get(&server, "/getbalance", &repeated).unwrap();
        assert_eq!(refused.status, 400, "{repeated:?}");
        assert!(
            refused.text().contains("may each be sent once"),
            "{}",
            refused.text()
        );
    }

    let stats = decode(&get(&server, "/stats", &[]).unwrap());
    assert_eq!(number(&stats, "total"), 3);
    assert_eq!(number(&stats, "drawn"), 1);
    assert_eq!(number(stats.get("counts").unwrap(), "200"), 1);
    assert_eq!(number(stats.get("counts").unwrap(), "500"), 0);
    assert_eq!(number(stats.get("forced_counts").unwrap(), "500"), 1);
    assert_eq!(number(stats.get("forced_counts").unwrap(), "timeout"), 1);
    let entries = all_log_entries(&server, "");
    let forced_flags: Vec<Option<bool>> = entries
        .iter()
        .map(|entry| match entry.get("forced") {
            Some(json::Value::Bool(flag)) => Some(*flag),
            _ => None,
        })
        .collect();
    assert_eq!(forced_flags, vec![Some(true), Some(true), Some(false)]);
}

/// A pipe whose reader is already gone: every write to it fails with a broken pipe.
fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer.into()
}

/// Starts the binary with its stdout closed that way, and stderr piped.
fn spawn_with_stdout_closed(args: &[&str]) -> std::process::Child {
    std::process::Command::new(binary())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary")
}

/// GET /health on `address` with `Connection: close`; the whole answer.
fn health_at(address: std::net::SocketAddr) -> Option<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&address, STEP_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(STEP_TIMEOUT)).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).ok()?;
    Some(answer)
}

fn wait_with_deadline(mut child: std::process::Child, what: &str) -> (Option<i32>, String) {
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() >= give_up {
            let _ = child.kill();
            panic!("{what}: still running with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status.code(), stderr)
}

#[test]
fn a_closed_stdout_is_handled_without_a_panic() {
    // Help and version, as `unreliable --help | head -0` gives them: a reader that left early is
    // no error for such tools.
    for args in [&["--help"][..], &["help", "serve"], &["--version"]] {
        let (code, stderr) = wait_with_deadline(spawn_with_stdout_closed(args), "help");
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // The demo's reader left before its first line: it stops quietly, as help does.
    let (code, stderr) = wait_with_deadline(
        spawn_with_stdout_closed(&["demo", "--count", "2", "--show-logs", "none"]),
        "demo",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A server keeps serving, with its address on stderr instead.
    let mut child = spawn_with_stdout_closed(&[
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-log-file",
    ]);
    // Kept open to the end: this part is about stdout only.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first_line)
        .expect("the server's first stderr line");
    let address = first_line
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse::<std::net::SocketAddr>().ok());
    let alive = child.try_wait().expect("wait").is_none();
    let health = address.and_then(health_at);
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
    assert!(alive, "the server exited: {first_line}");
    assert!(
        first_line.contains("warning: cannot write to stdout"),
        "{first_line}"
    );
    let health = health.unwrap_or_else(|| panic!("no answer at {address:?}: {first_line}"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

#[test]
fn a_closed_stderr_is_handled_without_a_panic() {
    // A usage error keeps its exit status when its message cannot be written.
    let usage = std::process::Command::new(binary())
        .args(["serve", "--bogus"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(closed_pipe())
        .status()
        .expect("run the binary");
    assert_eq!(usage.code(), Some(2));
    // A server keeps serving after its stderr lines fail (it writes one right after the
    // listening line).
    let mut child = std::process::Command::new(binary())
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-log-file",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(closed_pipe())
        .spawn()
        .expect("start the server");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("the listening line");
    let address = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|address| address.parse::<std::net::SocketAddr>().ok());
    std::thread::sleep(Duration::from_millis(300));
    let alive = child.try_wait().expect("wait").is_none();
    let health = address.and_then(health_at);
    let _ = child.kill();
    let _ = child.wait();
    assert!(alive, "the server exited: {line}");
    let health = health.unwrap_or_else(|| panic!("no answer at {address:?}"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}
