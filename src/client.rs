//! `unreliable client`: sends requests to `/getbalance` over raw TCP with read timeouts and
//! retries, then fetches this run's server log entries, reconciles every attempt with its entry,
//! and judges the observed outcome mix against the server's weights.
//!
//! Invariants: every attempt is classified exactly once (attempts = sum of outcomes); every
//! attempt carries `X-Request-Id: <run>-<request>-<attempt>`; nothing is dropped silently.
//!
//! Decisions worth knowing:
//! - An attempt's deadline covers reading the complete response (head and body) and starts once
//!   the request is written; connecting has its own timeout of the same length.
//! - Transport errors (refused, reset, closed, malformed, other I/O) are their own categories.
//!   They are retried like a timeout and use up the same retry budget whenever retries are on
//!   (`--retry-on none` retries nothing), but they are not draws from the server's weights, so
//!   they stay out of the distribution tables and the chi-square.
//! - `/stats` is read before the run (on the first connection, which the first worker then
//!   reuses) and after it: the weights come from the first read, so a server lost mid-run
//!   still leaves something to judge the attempts by, and the two reads together tell a
//!   restart ([`restart_evidence`]). Failing before the run ends it; failing after it (that
//!   `/stats` or the log) costs only the reconciliation: the report is still written, says
//!   why it was not done, and fails.
//! - `/stats` and each `/getlogs` page have their own fixed [`ADMIN_TIMEOUT`], whatever
//!   `--timeout` is: that one is sized for a `/getbalance` answer, not for a log page of up to
//!   [`MAX_ADMIN_RESPONSE_BYTES`].
//! - Once [`unreachable_streak`] attempts in a row got no answer over [`MIN_STREAK_SPAN`]
//!   ([`NoAnswerStreak`]) and either all failed to connect or `/health` does not answer
//!   either, the workers take no more requests and drop their pending retries: a server that
//!   is gone or frozen would otherwise cost count × attempts × `--timeout`. A timeout alone
//!   proves nothing (a server may hang every request on purpose), hence the probe. Requests
//!   never started count as never sent, not as requests with an outcome; one whose retry was
//!   dropped has no final outcome either, and counts as `retry dropped` among the requests
//!   that are no draws.
//! - An attempt's latency is its own exchange (connect, write, read); backoffs and the other
//!   requests a worker serves meanwhile are in no latency, only in the run's wall time.
//!
//! [`MAX_ADMIN_RESPONSE_BYTES`]: admin::MAX_ADMIN_RESPONSE_BYTES
//! [`unreachable_streak`]: send::unreachable_streak
//! [`NoAnswerStreak`]: send::NoAnswerStreak
//! [`MIN_STREAK_SPAN`]: send::MIN_STREAK_SPAN

mod admin;
mod reconcile;
mod render;
mod report;
mod send;
#[cfg(test)]
mod test_support;
mod wire;

// `cli`'s help names these, and its tests check it against them.
#[cfg(test)]
pub use send::{MIN_STREAK_SPAN, MIN_UNREACHABLE_STREAK, UNREACHABLE_STREAK_PER_WORKER};

use crate::cli::ClientOptions;
use crate::json::ObjectWriter;
use admin::{fetch_run_entries, fetch_server_stats, restart_evidence, stats_before_run};
use render::{write_json_report, write_text_report};
use report::{build_report, Restart, RunRecord, ServerAccount};
use send::send_all;
use std::io::{self, Write};
use std::time::{Duration, Instant};
use wire::{fresh_run_id, reach};

/// Largest `/getbalance` response read (head and body); a bigger one counts as malformed.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long `/stats` and each `/getlogs` page may take, connecting included (one deadline).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries asked for per `/getlogs` page.
pub const LOG_PAGE_LIMIT: u64 = 1000;
/// Most `/getlogs` pages fetched (ten million entries), a backstop: paging already ends once the
/// entries pass the run's bound (see [`fetch_run_entries`]).
pub const MAX_LOG_PAGES: u64 = 10_000;
/// Entries for the run beyond one per attempt that are still fetched, so the report can list
/// them (ids the client never sent, entries logged twice) instead of stopping at the first; past
/// this many the server's log is not worth reading and the fetch fails.
pub const EXTRA_RUN_ENTRIES: u64 = 1000;
/// Bytes asked for per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("unreliable-client/", env!("CARGO_PKG_VERSION"));

/// Why a run could not be judged.
#[derive(Debug)]
pub enum ClientError {
    /// The host name did not resolve to any address.
    Resolve { host: String, reason: String },
    /// No address of the server accepted a connection before the run started; the hint says
    /// what to check, when the kind of failure suggests something.
    Unreachable {
        address: String,
        reason: String,
        hint: Option<&'static str>,
    },
    /// `/stats` or `/getlogs` failed. Before the run that ends it; after it, [`run`] reports
    /// the run with its reconciliation not done instead.
    Server { request: String, reason: String },
    /// The report could not be written.
    Output(io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Resolve { host, reason } => {
                write!(f, "cannot resolve host '{host}': {reason}")
            }
            ClientError::Unreachable {
                address,
                reason,
                hint,
            } => {
                write!(f, "cannot reach {address}: {reason}")?;
                match hint {
                    Some(hint) => write!(f, "\nhint: {hint}"),
                    None => Ok(()),
                }
            }
            ClientError::Server { request, reason } => write!(f, "{request} failed: {reason}"),
            ClientError::Output(error) => write!(f, "cannot write the report: {error}"),
        }
    }
}

impl ClientError {
    /// 3 when the server could not be reached at all, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Resolve { .. } | ClientError::Unreachable { .. } => 3,
            ClientError::Server { .. } | ClientError::Output(_) => 1,
        }
    }
}

/// How a finished run came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reconciled, judged on at least one draw, and within tolerance: exit 0.
    Pass,
    /// A mismatch, no draw to judge, or an interval outside the tolerance: exit 1.
    Fail,
}

/// Runs the client and writes its report to `out`.
pub fn run(options: &ClientOptions, out: &mut dyn Write) -> Result<Verdict, ClientError> {
    run_with(options, out, LOG_PAGE_LIMIT)
}

fn run_with(
    options: &ClientOptions,
    out: &mut dyn Write,
    page_limit: u64,
) -> Result<Verdict, ClientError> {
    let (target, first_connection) = reach(&options.host, options.port, options.timeout)?;
    // Read before the run too, so that a server lost or restarted meanwhile still leaves the
    // weights to judge the attempts by, and a restart shows as a changed start time, seed or
    // uptime.
    let (before, first_connection) = stats_before_run(&target, first_connection)?;
    let run_id = fresh_run_id();
    let started = Instant::now();
    let sent = send_all(options, &target, &run_id, first_connection);
    // Also the time between the two /stats reads, as far as the server's uptime can tell.
    let elapsed = started.elapsed();
    // From here on a failure costs the reconciliation, not the report: the attempts are what
    // the user ran for, and a server gone mid-run is exactly when they are needed.
    let not_done = |error: ClientError| match error {
        ClientError::Server { request, reason } => {
            format!("{request} after the run failed: {reason}")
        }
        other => other.to_string(),
    };
    let (restart, log) = match fetch_server_stats(&target, sent.stopped.is_some(), options.timeout)
    {
        Ok(after) => {
            let restart = match restart_evidence(&before, &after, elapsed) {
                Some(reason) => Restart::Yes(reason),
                None => Restart::No,
            };
            let log = fetch_run_entries(
                &target,
                &format!("{run_id}-"),
                page_limit,
                MAX_LOG_PAGES,
                (sent.attempts.len() as u64, EXTRA_RUN_ENTRIES),
                ADMIN_TIMEOUT,
            )
            .map_err(not_done);
            (restart, log)
        }
        // The log is not asked for: a server that cannot answer /stats will not page its log,
        // and each try could cost another ADMIN_TIMEOUT.
        Err(error) => (Restart::Unknown, Err(not_done(error))),
    };
    let target_text = target.address.to_string();
    let run = RunRecord {
        run_id: &run_id,
        target: &target_text,
        sent: &sent,
        elapsed,
    };
    let account = ServerAccount {
        stats: before,
        restart,
        log,
    };
    let report = build_report(options, &run, &account);
    let mut text = String::new();
    if options.json {
        write_json_report(&report, options, &mut text);
    } else {
        // Writing into a String cannot fail.
        let _ = write_text_report(&report, options, &mut text);
    }
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A reader that went away (`| head -3`) is no failure of the run: the verdict stands.
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(ClientError::Output(error)),
        _ => Ok(report.verdict),
    }
}

/// The `--json` document of a run that ended before its report (unreachable, `/stats` before
/// the run failed): `{"version":…,"verdict":"fail","error":…,"hint":…,"exit_status":3}`, so
/// that a pipeline reading stdout always gets one JSON document. The error also goes to
/// stderr, as without `--json`.
pub fn json_failure(error: &ClientError) -> String {
    let text = error.to_string();
    // Display puts the hint on a line of its own; JSON gives it a member.
    let (reason, hint) = match text.split_once("\nhint: ") {
        Some((reason, hint)) => (reason, Some(hint)),
        None => (text.as_str(), None),
    };
    let mut out = String::new();
    let mut document = ObjectWriter::new(&mut out);
    document
        .string("version", env!("CARGO_PKG_VERSION"))
        .string("verdict", "fail")
        .string("error", reason)
        .optional_string("hint", hint)
        .u64("exit_status", u64::try_from(error.exit_code()).unwrap_or(1));
    document.finish();
    out.push('\n');
    out
}

/// `250ms`, `1.5s`.
fn format_duration(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis < 1000.0 {
        format!("{millis:.0}ms")
    } else {
        let seconds = format!("{:.3}", duration.as_secs_f64());
        let trimmed = seconds.trim_end_matches('0').trim_end_matches('.');
        format!("{trimmed}s")
    }
}

/// `12345` as `12,345`.
fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::Outcome;
    use crate::cli::ShowLogs;
    use crate::client::render::{format_log_entry, log_style_time};
    use crate::client::report::{round_to_two_digits, RETRY_DROPPED};
    use crate::client::send::unreachable_streak;
    use crate::client::test_support::{entry, number_in, query_value, read_head};
    use crate::client::wire::{host_header, Target};
    use crate::json::{self, Value};
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn small_formatters() {
        assert_eq!(round_to_two_digits(6576), 6600);
        assert_eq!(round_to_two_digits(9604), 9600);
        assert_eq!(round_to_two_digits(97), 97);
        assert_eq!(round_to_two_digits(u64::MAX / 2), 9_200_000_000_000_000_000);
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(9604), "9,604");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
        assert_eq!(
            log_style_time("2024-10-23T23:55:31.705Z"),
            "2024-10-23 23:55:31,705"
        );
        assert_eq!(log_style_time("yesterday"), "yesterday");
        assert_eq!(
            format_log_entry(&entry(1, Some("ab-1-1"), "200")),
            "2024-10-23 23:55:31,705 - 127.0.0.1 - 200 OK  [ab-1-1]"
        );
        assert_eq!(
            format_log_entry(&entry(2, None, "timeout")),
            "2024-10-23 23:55:31,705 - 127.0.0.1 - Timeout occurred  [-]"
        );
    }

    /// A tiny server that answers `/getbalance` from a script of outcomes (cycled), hangs on
    /// `timeout`, logs like the real one (except ids listed in `unlogged`), and serves
    /// `/stats` and chunked `/getlogs`.
    struct FakeServer {
        port: u16,
        state: Arc<FakeState>,
    }

    #[derive(Clone)]
    struct FakeEntry {
        id: u64,
        outcome: &'static str,
        request_id: Option<String>,
    }

    /// How a fake server behaves besides its script.
    #[derive(Default)]
    struct FakeConfig {
        script: Vec<&'static str>,
        unlogged: Vec<u64>,
        /// Requests logged twice, the second time under this id with "-x" appended too (an
        /// entry the client never sent).
        logged_twice: Vec<u64>,
        /// `/stats` bodies answered in turn, the last one repeated ([`FAKE_STATS`] if none).
        stats: Vec<String>,
        /// The server dies after this many `/getbalance` answers: it closes every connection
        /// after its answer, stops listening before the last answer goes out (so every later
        /// connect is refused), and answers nothing more.
        dies_after: Option<u64>,
        /// `/getlogs` answers 500.
        broken_logs: bool,
        /// After dying (`dies_after`), the server listens again on the same port after this
        /// long, as a restarted server would, and answers everything again.
        restart_gap: Option<Duration>,
        /// After this many `/getbalance` requests the server freezes like a stopped process:
        /// the kernel still accepts connections, but nothing is ever answered (`/health` and
        /// `/stats` included) or logged.
        freezes_after: Option<u64>,
    }

    const FAKE_STATS: &str = r#"{"seed":99,"weights":{"timeout":1,"403":1,"500":1,"200":1},"probabilities":{"timeout":0.25,"403":0.25,"500":0.25,"200":0.25}}"#;

    struct FakeState {
        config: FakeConfig,
        address: SocketAddr,
        next_id: Mutex<u64>,
        stats_served: Mutex<usize>,
        entries: Mutex<Vec<FakeEntry>>,
        /// Set when the server is to stop listening; the accept loop then drops its listener
        /// and says so through `closed`.
        dying: AtomicBool,
        closed: (Mutex<bool>, std::sync::Condvar),
        /// `GET /health` requests answered.
        health_answered: AtomicU64,
        frozen: AtomicBool,
    }

    fn start_fake(script: Vec<&'static str>, unlogged: Vec<u64>) -> FakeServer {
        start_fake_with(FakeConfig {
            script,
            unlogged,
            ..FakeConfig::default()
        })
    }

    fn start_fake_logging_twice(
        script: Vec<&'static str>,
        unlogged: Vec<u64>,
        logged_twice: Vec<u64>,
    ) -> FakeServer {
        start_fake_with(FakeConfig {
            script,
            unlogged,
            logged_twice,
            ..FakeConfig::default()
        })
    }

    fn start_fake_with(config: FakeConfig) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            config,
            address,
            next_id: Mutex::new(0),
            stats_served: Mutex::new(0),
            entries: Mutex::new(Vec::new()),
            dying: AtomicBool::new(false),
            closed: (Mutex::new(false), std::sync::Condvar::new()),
            health_answered: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            let state = accepting;
            let mut listener = listener;
            loop {
                for stream in listener.incoming() {
                    // The connection that woke the loop up to die, or one that came just before.
                    if state.dying.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { return };
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || serve_fake(stream, &state));
                }
                drop(listener);
                {
                    let (closed, signal) = &state.closed;
                    *closed.lock().unwrap() = true;
                    signal.notify_all();
                }
                let Some(gap) = state.config.restart_gap else {
                    return;
                };
                std::thread::sleep(gap);
                // std sets SO_REUSEADDR, so the port is free again despite TIME_WAIT.
                listener = TcpListener::bind(state.address).unwrap();
                state.dying.store(false, Ordering::SeqCst);
            }
        });
        FakeServer {
            port: address.port(),
            state,
        }
    }

    /// Stops the fake's listener and returns once it is closed.
    fn stop_listening(state: &FakeState) {
        state.dying.store(true, Ordering::SeqCst);
        // The accept loop sleeps in accept: a connection wakes it.
        let _ = TcpStream::connect(state.address);
        let (closed, signal) = &state.closed;
        let mut is_closed = closed.lock().unwrap();
        while !*is_closed {
            is_closed = signal.wait(is_closed).unwrap();
        }
    }

    fn serve_fake(mut stream: TcpStream, state: &FakeState) {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buffer = Vec::new();
        while let Some(head) = read_head(&mut stream, &mut buffer) {
            let target = head.split(' ').nth(1).unwrap_or("/").to_string();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let request_id = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("x-request-id")
                    .then(|| value.trim().to_string())
            });
            if state.frozen.load(Ordering::SeqCst) {
                // Hang: read until the client gives up and closes.
                let mut sink = [0u8; 256];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            let reply = match path {
                "/getbalance" => {
                    let id = {
                        let mut next = state.next_id.lock().unwrap();
                        *next += 1;
                        *next
                    };
                    let config = &state.config;
                    if config.freezes_after.is_some_and(|last| id > last) {
                        state.frozen.store(true, Ordering::SeqCst);
                        continue;
                    }
                    match config.dies_after {
                        // Dead already: a connection accepted just before gets no answer.
                        Some(last) if id > last && config.restart_gap.is_none() => return,
                        Some(last) if id == last => stop_listening(state),
                        _ => {}
                    }
                    let outcome = config.script[(id as usize - 1) % config.script.len()];
                    if !config.unlogged.contains(&id) {
                        let mut entries = state.entries.lock().unwrap();
                        let twice = config.logged_twice.contains(&id);
                        entries.push(FakeEntry {
                            id,
                            outcome,
                            request_id: request_id.clone(),
                        });
                        if twice {
                            for suffix in ["", "-x"] {
                                entries.push(FakeEntry {
                                    id: 1_000_000 + id * 10 + suffix.len() as u64,
                                    outcome,
                                    request_id: request_id
                                        .as_ref()
                                        .map(|id| format!("{id}{suffix}")),
                                });
                            }
                        }
                    }
                    if outcome == "timeout" {
                        // Hang: read until the client gives up and closes.
                        let mut sink = [0u8; 256];
                        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                        return;
                    }
                    if config.dies_after.is_some() {
                        let reply = format!(
                            "HTTP/1.1 {outcome} Fake\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
                        );
                        let _ = stream.write_all(reply.as_bytes());
                        return;
                    }
                    format!("HTTP/1.1 {outcome} Fake\r\nContent-Length: 5\r\n\r\nhello")
                }
                "/stats" => {
                    let body = {
                        let mut served = state.stats_served.lock().unwrap();
                        *served += 1;
                        let bodies = &state.config.stats;
                        match bodies.get(*served - 1).or(bodies.last()) {
                            Some(body) => body.clone(),
                            None => FAKE_STATS.to_string(),
                        }
                    };
                    format!(
                        "HTTP/1.1 200 OK\r\nServer: unreliable/test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                "/health" => {
                    state.health_answered.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_string()
                }
                "/getlogs" if state.config.broken_logs => {
                    "HTTP/1.1 500 Broken\r\nServer: unreliable/test\r\nContent-Length: 0\r\n\r\n"
                        .to_string()
                }
                "/getlogs" => fake_logs(state, query),
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
            };
            if stream.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn fake_logs(state: &FakeState, query: &str) -> String {
        let prefix = query_value(query, "request_id_prefix").unwrap_or("");
        let since: u64 = query_value(query, "since")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limit: usize = query_value(query, "limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let all = state.entries.lock().unwrap().clone();
        let mut selected: Vec<FakeEntry> = all
            .into_iter()
            .filter(|e| e.id > since)
            .filter(|e| {
                e.request_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(prefix))
            })
            .collect();
        selected.sort_by_key(|e| e.id);
        selected.truncate(limit);
        let items: Vec<String> = selected
            .iter()
            .map(|e| {
                let status = if e.outcome == "timeout" { "null" } else { e.outcome };
                let request_id = e
                    .request_id
                    .as_ref()
                    .map_or("null".to_string(), |id| format!("\"{id}\""));
                format!(
                    r#"{{"id":{},"time":"2024-10-23T23:55:31.705Z","client":"127.0.0.1:5555","client_ip":"127.0.0.1","method":"GET","path":"/getbalance","outcome":"{}","status":{status},"request_id":{request_id},"duration_ms":0.05}}"#,
                    e.id, e.outcome
                )
            })
            .collect();
        let next = selected.last().map_or(since, |e| e.id);
        let body = format!(
            r#"{{"total":{},"dropped":0,"returned":{},"next_since":{next},"entries":[{}]}}"#,
            items.len(),
            items.len(),
            items.join(",")
        );
        let (first, second) = body.split_at(body.len() / 2);
        format!(
            "HTTP/1.1 200 OK\r\nServer: unreliable/test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        )
    }

    fn fake_options(port: u16, count: u64) -> ClientOptions {
        ClientOptions {
            host: "127.0.0.1".into(),
            port,
            count,
            concurrency: 2,
            timeout: Duration::from_millis(200),
            retries: 2,
            retry_on: vec![Outcome::Timeout],
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            interval: Duration::ZERO,
            show_logs: ShowLogs::Last(3),
            json: false,
            quiet: true,
            tolerance: None,
        }
    }

    #[test]
    fn a_run_against_the_fake_server_reconciles_and_passes() {
        let fake = start_fake(vec!["200", "403", "timeout", "500"], vec![]);
        let started = Instant::now();
        let mut out = Vec::new();
        let verdict = run(&fake_options(fake.port, 8), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(verdict, Verdict::Pass, "{text}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(text.contains("server seed 99"), "{text}");
        assert!(
            text.contains("Timeout occurred") || text.contains(" - 200 OK"),
            "{text}"
        );
        assert!(!text.contains("missing on the server"), "{text}");
        assert!(text.contains("verdict: PASS"), "{text}");
    }

    #[test]
    fn a_server_whose_mix_is_far_from_its_weights_fails_without_a_tolerance() {
        // Every answer a 200 where the weights say a quarter: the log agrees with the client,
        // so only the fit can tell.
        let fake = start_fake(vec!["200"], vec![]);
        let options = ClientOptions {
            json: true,
            ..fake_options(fake.port, 40)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        let p_value = ["attempts", "chi_square", "p_value"]
            .iter()
            .try_fold(&value, |value, key| value.get(key))
            .and_then(Value::as_f64)
            .unwrap();
        assert!(p_value < 1e-20, "{p_value}");
        assert_eq!(
            reasons_of(&value),
            [format!(
                "the outcomes cannot pass for the server's weights: goodness-of-fit p-value \
                 {p_value:.1e}, under 1e-9 (a correct server: about one run in a million at most)"
            )]
        );
    }

    #[test]
    fn json_run_counts_timeouts_and_retries_them_to_the_limit() {
        let fake = start_fake(vec!["timeout"], vec![]);
        let options = ClientOptions {
            json: true,
            count: 2,
            ..fake_options(fake.port, 2)
        };
        let started = Instant::now();
        let mut out = Vec::new();
        let verdict = run(&options, &mut out).unwrap();
        // 2 requests x 3 attempts of 200 ms on 2 workers: well under two seconds.
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = String::from_utf8(out).unwrap();
        let value = json::decode(&text).unwrap();
        assert_eq!(verdict, Verdict::Pass, "{text}");
        let attempts = value.get("attempts").unwrap();
        assert_eq!(attempts.get("total").and_then(Value::as_u64), Some(6));
        let timeouts = attempts.get("counts").and_then(|c| c.get("timeout"));
        assert_eq!(timeouts.and_then(Value::as_u64), Some(6));
        let final_timeouts = value
            .get("requests")
            .and_then(|r| r.get("counts"))
            .and_then(|c| c.get("timeout"))
            .and_then(Value::as_u64);
        assert_eq!(final_timeouts, Some(2));
        let matched = value.get("reconciliation").and_then(|r| r.get("matched"));
        assert_eq!(matched.and_then(Value::as_u64), Some(6));
    }

    #[test]
    fn an_entry_the_server_lost_fails_the_run() {
        let fake = start_fake(vec!["200"], vec![2]);
        let options = ClientOptions {
            concurrency: 1,
            ..fake_options(fake.port, 3)
        };
        let mut out = Vec::new();
        let verdict = run(&options, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(verdict, Verdict::Fail, "{text}");
        assert!(text.contains("missing on the server: 1 ("), "{text}");
    }

    #[test]
    fn log_paging_follows_next_since_and_stops_at_the_page_limit() {
        let fake = start_fake(vec!["200", "403"], vec![]);
        let options = ClientOptions {
            concurrency: 1,
            json: true,
            ..fake_options(fake.port, 5)
        };
        let mut out = Vec::new();
        // Pages of 2 entries: 2 + 2 + 1.
        assert_eq!(run_with(&options, &mut out, 2).unwrap(), Verdict::Pass);
        let value = json::decode(&String::from_utf8(out).unwrap()).unwrap();
        let run_id = value
            .get("run_id")
            .and_then(Value::as_str)
            .unwrap()
            .to_string();
        let server_entries = value
            .get("reconciliation")
            .and_then(|r| r.get("server_entries"));
        assert_eq!(server_entries.and_then(Value::as_u64), Some(5));

        let target = Target {
            address: SocketAddr::from(([127, 0, 0, 1], fake.port)),
            host_header: host_header("127.0.0.1", fake.port),
        };
        let prefix = format!("{run_id}-");
        let timeout = Duration::from_secs(2);
        let error = fetch_run_entries(&target, &prefix, 2, 2, (5, 0), timeout).unwrap_err();
        assert!(error.to_string().contains("more than 2 pages"), "{error}");
        assert_eq!(error.exit_code(), 1);
        let fetched = fetch_run_entries(&target, &prefix, 2, 3, (5, 0), timeout).unwrap();
        assert_eq!(fetched.entries.len(), 5);
    }

    #[test]
    fn an_entry_logged_twice_and_one_never_sent_are_listed_and_fail_the_run() {
        // Every attempt has its entry, and the server logs one request again and once more
        // under an id the client never sent: more entries than attempts, which the report
        // must list (not refuse as an oversized log).
        let fake = start_fake_logging_twice(vec!["200"], vec![], vec![2]);
        let options = ClientOptions {
            concurrency: 1,
            ..fake_options(fake.port, 4)
        };
        let mut out = Vec::new();
        assert_eq!(run(&options, &mut out).unwrap(), Verdict::Fail);
        let text = String::from_utf8(out).unwrap();
        for expected in ["logged more than once: 1 (", "unknown to the client: 1 ("] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
    }

    /// The report of a run against `fake`, as text or decoded JSON.
    fn run_report(options: &ClientOptions) -> (Verdict, String) {
        let mut out = Vec::new();
        let verdict = run(options, &mut out).unwrap();
        (verdict, String::from_utf8(out).unwrap())
    }

    fn reasons_of(value: &Value) -> Vec<String> {
        let reasons = value
            .get("verdict_reasons")
            .and_then(Value::as_array)
            .unwrap();
        reasons
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_server_lost_mid_run_still_gets_the_full_report_and_fails() {
        // Three answers, then the server is gone: the last three requests are refused, and so
        // is `/stats` after the run. Before, that `/stats` ended the run with one error line.
        let dying = || {
            start_fake_with(FakeConfig {
                script: vec!["200", "403", "500"],
                dies_after: Some(3),
                ..FakeConfig::default()
            })
        };
        let options = |port, json| ClientOptions {
            concurrency: 1,
            retry_on: Vec::new(),
            json,
            ..fake_options(port, 6)
        };
        let reason =
            "reconciliation not done (GET /stats after the run failed: connection refused)";

        let (verdict, text) = run_report(&options(dying().port, false));
        assert_eq!(verdict, Verdict::Fail, "{text}");
        for expected in [
            "server seed 99, weights timeout 25.0%",
            "Per attempt (each attempt is one draw): 6 attempts, 3 draws\n",
            "\n  connection refused                  3  (not a draw from the weights)\n",
            "\nReconciliation: 6 attempts, not done (GET /stats after the run failed: connection \
             refused)\n",
            &format!("\nverdict: FAIL ({reason})\n"),
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
        assert!(!text.contains("stopped early"), "{text}");

        let (verdict, text) = run_report(&options(dying().port, true));
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        assert_eq!(reasons_of(&value), [reason]);
        assert_eq!(number_in(&value, &["attempts", "total"]), Some(6));
        assert_eq!(number_in(&value, &["attempts", "draws"]), Some(3));
        assert_eq!(
            number_in(&value, &["attempts", "other", "connection refused"]),
            Some(3)
        );
        assert_eq!(number_in(&value, &["requests", "never_sent"]), Some(0));
        assert_eq!(number_in(&value, &["server", "seed"]), Some(99));
        assert_eq!(value.get("stopped_early"), Some(&Value::Null));
        let server = value.get("server").unwrap();
        assert_eq!(server.get("restarted"), Some(&Value::Null));
        let reconciliation = value.get("reconciliation").unwrap();
        assert_eq!(reconciliation.get("done"), Some(&Value::Bool(false)));
        assert_eq!(reconciliation.get("clean"), Some(&Value::Bool(false)));
        assert_eq!(
            reconciliation
                .get("not_done_because")
                .and_then(Value::as_str),
            Some("GET /stats after the run failed: connection refused")
        );
    }

    #[test]
    fn a_server_gone_for_good_stops_the_run_early() {
        // Before, the client tried every one of the 10,000 requests three times and then gave
        // up without a report. One worker, so that the order of the attempts is fixed: three
        // answers, then refusals only (with more workers, one refused while another's answer
        // is still on its way starts the count again).
        let count = 10_000;
        let dying = || {
            start_fake_with(FakeConfig {
                script: vec!["200"],
                dies_after: Some(3),
                ..FakeConfig::default()
            })
        };
        let bound = unreachable_streak(1);
        let options = |port, json| ClientOptions {
            concurrency: 1,
            json,
            ..fake_options(port, count)
        };
        let (verdict, text) = run_report(&options(dying().port, true));
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        let stopped = value.get("stopped_early").unwrap();
        // At least the bound: the streak must also span MIN_STREAK_SPAN, and a worker pauses
        // CONNECT_FAILURE_PAUSE after each refusal, so how many more it takes depends on
        // the machine's timing; every one of them is counted.
        let in_a_row = number_in(stopped, &["failures_in_a_row"]).unwrap();
        assert!(in_a_row >= bound, "{in_a_row} in a row");
        assert_eq!(
            stopped.get("failure").and_then(Value::as_str),
            Some("connection refused")
        );
        assert_eq!(
            stopped.get("cause").and_then(Value::as_str),
            Some("unreachable")
        );
        assert_eq!(stopped.get("health_check"), Some(&Value::Null));
        assert_eq!(
            number_in(&value, &["attempts", "total"]),
            Some(3 + in_a_row)
        );
        assert_eq!(
            number_in(&value, &["attempts", "other", "connection refused"]),
            Some(in_a_row)
        );
        // Requests never started are not requests with an outcome; the two add up to --count.
        let requests = number_in(&value, &["requests", "total"]).unwrap();
        let never_sent = number_in(&value, &["requests", "never_sent"]).unwrap();
        assert_eq!(requests + never_sent, count);
        assert!((3..=3 + bound).contains(&requests), "{requests} requests");
        assert_eq!(number_in(stopped, &["requests_not_sent"]), Some(never_sent));
        // Every request started ended answered, refused, or with its retry dropped.
        let refused = number_in(&value, &["requests", "other", "connection refused"]);
        let dropped = number_in(&value, &["requests", "other", RETRY_DROPPED]);
        assert_eq!(
            dropped.unwrap_or(0),
            number_in(stopped, &["retries_dropped"]).unwrap()
        );
        assert_eq!(3 + refused.unwrap_or(0) + dropped.unwrap_or(0), requests);
        let unreachable = format!(
            "the server became unreachable: {in_a_row} connection attempts in a row failed \
             (connection refused); {} requests not sent",
            group_thousands(never_sent)
        );
        let reasons = reasons_of(&value);
        assert!(reasons[0].starts_with(&unreachable), "{reasons:?}");
        assert_eq!(
            reasons[1],
            "reconciliation not done (GET /stats after the run failed: connection refused \
             (tried for 2s))"
        );
        assert_eq!(reasons.len(), 2, "{reasons:?}");

        let (verdict, text) = run_report(&options(dying().port, false));
        assert_eq!(verdict, Verdict::Fail, "{text}");
        for expected in [
            "\n  stopped early: the server became unreachable: ",
            " connection attempts in a row failed (connection refused); 9,9",
            " more never sent\n",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
    }

    #[test]
    fn an_outcome_of_weight_zero_that_was_seen_fails_the_verdict() {
        // The server says only 200 can happen, and answers a mix: before, the run passed.
        let fake = start_fake_with(FakeConfig {
            script: vec!["200", "403", "500", "200"],
            stats: vec![
                r#"{"seed":7,"probabilities":{"timeout":0,"403":0,"500":0,"200":1}}"#.into(),
            ],
            ..FakeConfig::default()
        });
        let options = ClientOptions {
            concurrency: 1,
            json: true,
            ..fake_options(fake.port, 8)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        assert_eq!(
            reasons_of(&value),
            [
                "403 was the outcome of 2 attempts but its weight is 0",
                "500 was the outcome of 2 attempts but its weight is 0"
            ]
        );
        let attempts = value.get("attempts").unwrap();
        assert_eq!(attempts.get("consistent"), Some(&Value::Bool(false)));
        // The test is over the one outcome of non-zero weight: nothing to test, no infinity.
        let fit = attempts.get("chi_square").unwrap();
        assert_eq!(fit.get("statistic").and_then(Value::as_f64), Some(0.0));
        assert_eq!(number_in(fit, &["degrees_of_freedom"]), Some(0));
        let (_, text) = run_report(&ClientOptions {
            json: false,
            ..options
        });
        assert!(
            text.contains("\n  the mix is impossible under the configured weights"),
            "{text}"
        );
    }

    #[test]
    fn a_frozen_server_stops_the_run_once_health_does_not_answer_either() {
        // The kernel completes handshakes for a stopped process, so every attempt is a read
        // timeout; before, the run went on for count x --timeout (hours with defaults).
        let frozen = start_fake_with(FakeConfig {
            script: vec!["200", "403"],
            freezes_after: Some(4),
            ..FakeConfig::default()
        });
        let options = ClientOptions {
            json: true,
            ..fake_options(frozen.port, 100_000)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        let stopped = value.get("stopped_early").unwrap();
        assert_eq!(
            stopped.get("cause").and_then(Value::as_str),
            Some("stopped answering"),
            "{text}"
        );
        let health = stopped.get("health_check").and_then(Value::as_str).unwrap();
        assert_eq!(health, "no answer within 3s");
        let in_a_row = number_in(stopped, &["failures_in_a_row"]).unwrap();
        assert!(in_a_row >= unreachable_streak(2), "{in_a_row}");
        let never_sent = number_in(&value, &["requests", "never_sent"]).unwrap();
        assert!(never_sent > 90_000, "{never_sent}");
        let reasons = reasons_of(&value);
        assert!(
            reasons[0].starts_with(&format!(
                "the server stopped answering: {in_a_row} attempts in a row got no answer \
                 (last: timeout), nor did GET /health (no answer within 3s); "
            )),
            "{reasons:?}"
        );
        assert_eq!(frozen.state.health_answered.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_healthy_server_that_only_hangs_is_probed_and_never_stopped() {
        // `--weights timeout=1`: every attempt times out, as for a frozen server, but /health
        // answers, so the run goes to its end and passes.
        let hanging = start_fake_with(FakeConfig {
            script: vec!["timeout"],
            stats: vec![
                r#"{"seed":5,"probabilities":{"timeout":1,"403":0,"500":0,"200":0}}"#.into(),
            ],
            ..FakeConfig::default()
        });
        let options = ClientOptions {
            concurrency: 4,
            retries: 0,
            json: true,
            ..fake_options(hanging.port, 40)
        };
        let (verdict, text) = run_report(&options);
        let value = json::decode(&text).unwrap();
        assert_eq!(reasons_of(&value), Vec::<String>::new(), "{text}");
        assert_eq!(verdict, Verdict::Pass, "{text}");
        assert_eq!(value.get("stopped_early"), Some(&Value::Null));
        assert_eq!(
            number_in(&value, &["attempts", "counts", "timeout"]),
            Some(40)
        );
        assert!(hanging.state.health_answered.load(Ordering::SeqCst) >= 1);
    }

    fn restarting_fake(gap: Duration) -> FakeServer {
        let before = r#"{"seed":99,"total":0,"uptime_seconds":0.1,"weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let after = r#"{"seed":100,"total":3,"uptime_seconds":0.1,"weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        start_fake_with(FakeConfig {
            script: vec!["200", "403"],
            stats: vec![before.into(), after.into()],
            dies_after: Some(4),
            restart_gap: Some(gap),
            ..FakeConfig::default()
        })
    }

    #[test]
    fn a_quick_restart_is_named_as_a_restart_not_as_unreachable() {
        // A gap of 150 ms: before, ten refusals within a millisecond stopped the run as
        // "unreachable", and /stats, asked at once, was refused too.
        let fake = restarting_fake(Duration::from_millis(150));
        let options = ClientOptions {
            concurrency: 1,
            json: true,
            ..fake_options(fake.port, 30)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        assert_eq!(value.get("stopped_early"), Some(&Value::Null), "{text}");
        let server = value.get("server").unwrap();
        assert_eq!(server.get("restarted"), Some(&Value::Bool(true)), "{text}");
        assert_eq!(number_in(&value, &["requests", "never_sent"]), Some(0));
        let reasons = reasons_of(&value);
        assert!(
            reasons.iter().any(|reason| reason
                .starts_with("the server restarted during the run (seed 99, then 100")),
            "{reasons:?}"
        );
    }

    #[test]
    fn after_an_early_stop_stats_is_retried_briefly_and_names_a_restart() {
        // Down for 2 s: the run stops early after a second of refusals, and /stats after the
        // run, tried again within STATS_RETRY_WINDOW, reaches the restarted server.
        let fake = restarting_fake(Duration::from_secs(2));
        let options = ClientOptions {
            concurrency: 1,
            json: true,
            ..fake_options(fake.port, 10_000)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        let stopped = value.get("stopped_early").unwrap();
        assert_eq!(
            stopped.get("cause").and_then(Value::as_str),
            Some("unreachable"),
            "{text}"
        );
        let server = value.get("server").unwrap();
        assert_eq!(server.get("restarted"), Some(&Value::Bool(true)), "{text}");
    }

    #[test]
    fn a_restart_during_the_run_is_named_and_fails_the_run() {
        let before = r#"{"seed":99,"total":40,"uptime_seconds":50.0,"weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let after = r#"{"seed":100,"total":4,"uptime_seconds":0.5,"weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let restarting = start_fake_with(FakeConfig {
            script: vec!["200", "403"],
            stats: vec![before.into(), after.into()],
            ..FakeConfig::default()
        });
        let options = ClientOptions {
            concurrency: 1,
            ..fake_options(restarting.port, 4)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let evidence = "the server restarted during the run (seed 99, then 100; 40 requests \
                        logged, then 4; uptime 50.0s, then 0.5s after ";
        for expected in [
            "server seed 99,".to_string(),
            format!("\n  note: {evidence}"),
            format!("\nverdict: FAIL ({evidence}"),
        ] {
            assert!(text.contains(&expected), "no {expected:?} in\n{text}");
        }

        // The same server both times: no restart.
        let steady = start_fake(vec!["200"], vec![]);
        let options = ClientOptions {
            json: true,
            ..fake_options(steady.port, 2)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Pass, "{text}");
        let value = json::decode(&text).unwrap();
        let server = value.get("server").unwrap();
        assert_eq!(server.get("restarted"), Some(&Value::Bool(false)));
        let reconciliation = value.get("reconciliation").unwrap();
        assert_eq!(reconciliation.get("done"), Some(&Value::Bool(true)));
        assert_eq!(reconciliation.get("not_done_because"), Some(&Value::Null));
    }

    #[test]
    fn a_log_that_cannot_be_read_leaves_the_run_unreconciled_but_reported() {
        let fake = start_fake_with(FakeConfig {
            script: vec!["200"],
            broken_logs: true,
            ..FakeConfig::default()
        });
        let options = ClientOptions {
            json: true,
            ..fake_options(fake.port, 3)
        };
        let (verdict, text) = run_report(&options);
        assert_eq!(verdict, Verdict::Fail, "{text}");
        let value = json::decode(&text).unwrap();
        let reasons = reasons_of(&value);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("reconciliation not done (GET /getlogs?request_id_prefix=")
                && reasons[0].ends_with(" after the run failed: answered status 500)"),
            "{reasons:?}"
        );
        assert_eq!(number_in(&value, &["attempts", "counts", "200"]), Some(3));
        let server = value.get("server").unwrap();
        assert_eq!(server.get("restarted"), Some(&Value::Bool(false)));
    }

    #[test]
    fn an_unreachable_server_is_exit_status_3() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut out = Vec::new();
        let error = run(&fake_options(port, 1), &mut out).unwrap_err();
        assert_eq!(error.exit_code(), 3);
        assert_eq!(
            error.to_string(),
            format!(
                "cannot reach 127.0.0.1:{port}: connection refused\nhint: is a server running on \
                 that port, and listening on this address? (a server on another machine needs \
                 'serve --host 0.0.0.0')"
            )
        );
        assert!(out.is_empty());
        let unresolvable = ClientOptions {
            host: "no-such-host.invalid".into(),
            ..fake_options(port, 1)
        };
        let error = run(&unresolvable, &mut out).unwrap_err();
        assert_eq!(error.exit_code(), 3);
        assert!(error
            .to_string()
            .starts_with("cannot resolve host 'no-such-host.invalid'"));
    }
}
