//! Asking the server about the run: `/stats` before it (on the connection the first worker then
//! reuses) and after it, the restart the two reads may show, and this run's `/getlogs` entries,
//! page by page.
//!
//! Invariants: only a 200 from a server that names itself `unreliable/` is believed; what is
//! kept of the log is bounded by the run (entries, text per entry, pages), not by the server.

use super::render::visible;
use super::wire::{
    connect, describe_io_error, receive, strip_brackets, ReceiveFailure, ResponseAssembler, Target,
    TransportError,
};
use super::{format_duration, ClientError, ADMIN_TIMEOUT, READ_CHUNK, USER_AGENT};
use crate::chaos::Outcome;
use crate::json::{self, Value};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Bytes of an answer that is not HTTP quoted in the error.
const MAX_SHOWN_BYTES: usize = 32;
/// Largest `/stats` answer or `/getlogs` page read.
pub const MAX_ADMIN_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// JSON values a `/stats` answer may hold (it has about 40). Decoded JSON takes up to 16 times
/// its text, so the byte cap alone would let a wrong server cost 250 MB.
const MAX_STATS_VALUES: usize = 4096;
/// JSON values per `/getlogs` entry allowed for (an entry has 12, `log::write_entry_json`),
/// and for the page around them: a page of `limit` entries may hold `(limit + 1)` times this.
const MAX_VALUES_PER_LOG_ENTRY: usize = 64;
/// Text (time, client address, outcome, request id) kept per log entry the run may have (one per
/// attempt and [`EXTRA_RUN_ENTRIES`]), summed over the entries. An entry of the run holds about
/// 100 bytes (an id of at most 40, a 24-byte time, an address of at most 45) and the server
/// refuses ids over 200 bytes, so a server past this sends something else than this run's log.
///
/// [`EXTRA_RUN_ENTRIES`]: super::EXTRA_RUN_ENTRIES
pub const MAX_LOG_TEXT_PER_ENTRY: usize = 512;
/// How long `/stats` after a run that stopped early is tried, retries included (or the attempt
/// timeout when longer): long enough for a server being restarted to listen again, short
/// enough not to wait on one already known to be gone.
pub const STATS_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// The pause between two tries of `/stats` within [`STATS_RETRY_WINDOW`].
const STATS_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How much less the server's uptime may have grown between the two `/stats` reads than the
/// client's clock says passed, before the client calls it a restart: the two clocks are on
/// different machines and may run a little apart, and the server's may pause (a suspended VM).
pub const UPTIME_SLACK: Duration = Duration::from_secs(1);

/// `GET path` on a fresh connection within `timeout`, connecting included; the body of a 200
/// answer, decoded as JSON.
fn fetch_json(
    target: &Target,
    path: &str,
    timeout: Duration,
    max_values: usize,
) -> Result<Value, ClientError> {
    fetch_json_connecting_within(target, path, (timeout, timeout), max_values)
}

/// Like [`fetch_json`], but connecting may take `connect_timeout` of the `timeout` at most.
fn fetch_json_connecting_within(
    target: &Target,
    path: &str,
    (timeout, connect_timeout): (Duration, Duration),
    max_values: usize,
) -> Result<Value, ClientError> {
    let fail = |reason: String| ClientError::Server {
        request: format!("GET {path}"),
        reason,
    };
    // One deadline for both: a server slow to accept and then slow to answer must not get
    // the timeout twice over.
    let deadline = Instant::now() + timeout;
    let mut stream = connect(target.address, connect_timeout.min(timeout))
        .map_err(|e| fail(describe_io_error(&e)))?;
    let answer = ask_json(
        &mut stream,
        target,
        path,
        (deadline, timeout),
        (true, max_values),
    )
    .map_err(fail)?;
    Ok(answer.value)
}

/// A JSON answer, and whether its connection may carry another request.
struct JsonAnswer {
    value: Value,
    reusable: bool,
}

/// `GET path` on an open connection, asking the server to close it after the answer when
/// `close`; the body of a 200 answer from an unreliable server, decoded as JSON of at most
/// `max_values` values, or why not. `deadline` ends the exchange; `timeout` is what the caller
/// gave it, for the message.
fn ask_json(
    stream: &mut TcpStream,
    target: &Target,
    path: &str,
    (deadline, timeout): (Instant, Duration),
    (close, max_values): (bool, usize),
) -> Result<JsonAnswer, String> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let connection = if close { "Connection: close\r\n" } else { "" };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: {USER_AGENT}\r\n\
         {connection}\r\n",
        target.host_header
    );
    stream
        .set_write_timeout(Some(left().max(Duration::from_millis(1))))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| describe_io_error(&e))?;
    let mut assembler = ResponseAssembler::new(MAX_ADMIN_RESPONSE_BYTES, true);
    let mut chunk = vec![0; READ_CHUNK];
    let received = receive(stream, &mut assembler, left(), &mut chunk, &mut None);
    let response = match received {
        Ok(response) => response,
        Err(
            ReceiveFailure::Timeout | ReceiveFailure::Transport(TransportError::TimeoutMidResponse),
        ) => {
            return Err(format!(
                "no complete answer within {}",
                format_duration(timeout)
            ))
        }
        Err(ReceiveFailure::Transport(error)) => {
            let detail = error.detail().map(|d| format!(": {d}")).unwrap_or_default();
            let mut reason = format!("{}{detail}", error.name());
            // A wrong port often answers in another protocol (SSH's banner, TLS): its first
            // bytes tell which faster than any description.
            let head = assembler.unparsed_head();
            if matches!(error, TransportError::Malformed(_))
                && !head.is_empty()
                && !head.starts_with(b"HTTP/")
            {
                let shown = String::from_utf8_lossy(&head[..head.len().min(MAX_SHOWN_BYTES)]);
                let more = if head.len() > MAX_SHOWN_BYTES {
                    "..."
                } else {
                    ""
                };
                reason.push_str(&format!(
                    " (the answer began \"{}{more}\": is this an HTTP server?)",
                    visible(&shown)
                ));
            }
            return Err(reason);
        }
    };
    if !response.from_unreliable {
        return Err(
            "the answer has no 'Server: unreliable/…' header: is this an unreliable server?".into(),
        );
    }
    if response.status != 200 {
        return Err(format!("answered status {}", response.status));
    }
    let reusable = response.keep_alive && !response.trailing_bytes;
    let text = String::from_utf8(response.body).map_err(|error| {
        format!(
            "body is not UTF-8 (byte {} of the body)",
            error.utf8_error().valid_up_to()
        )
    })?;
    let value = json::decode_at_most(&text, max_values)
        .map_err(|error| format!("invalid JSON: {error}"))?;
    Ok(JsonAnswer { value, reusable })
}

/// `/stats` before the run, asked on the connection [`reach`] opened (so a server with a
/// connection limit of one still serves the run), which is handed back for the first worker
/// when the server keeps it open.
///
/// [`reach`]: super::wire::reach
pub(super) fn stats_before_run(
    target: &Target,
    mut stream: TcpStream,
) -> Result<(ServerStats, Option<TcpStream>), ClientError> {
    let fail = |reason: String| ClientError::Server {
        request: "GET /stats".into(),
        reason,
    };
    let deadline = (Instant::now() + ADMIN_TIMEOUT, ADMIN_TIMEOUT);
    let answer = ask_json(
        &mut stream,
        target,
        "/stats",
        deadline,
        (false, MAX_STATS_VALUES),
    )
    .map_err(fail)?;
    let stats = parse_server_stats(&answer.value).map_err(fail)?;
    Ok((stats, answer.reusable.then_some(stream)))
}

/// `/stats` on a fresh connection, after the run. After an early stop the server was just
/// found unreachable or not answering, so the whole read, retries included, gets
/// [`STATS_RETRY_WINDOW`] (or the attempt timeout when longer) instead of [`ADMIN_TIMEOUT`],
/// connecting the attempt timeout at most each time; and it is tried again while that lasts,
/// so that a server that was restarting is reached and its restart named.
pub(super) fn fetch_server_stats(
    target: &Target,
    after_stop: bool,
    attempt_timeout: Duration,
) -> Result<ServerStats, ClientError> {
    let read = |timeout: Duration, connect_timeout: Duration| {
        let value = fetch_json_connecting_within(
            target,
            "/stats",
            (timeout, connect_timeout),
            MAX_STATS_VALUES,
        )?;
        parse_server_stats(&value).map_err(|reason| ClientError::Server {
            request: "GET /stats".into(),
            reason,
        })
    };
    if !after_stop {
        return read(ADMIN_TIMEOUT, ADMIN_TIMEOUT);
    }
    let window = STATS_RETRY_WINDOW.max(attempt_timeout);
    let window_end = Instant::now() + window;
    loop {
        let left = window_end.saturating_duration_since(Instant::now());
        let result = read(left, attempt_timeout.min(left));
        // A last try gets a pause's worth of time at least, so its error is a real one.
        if result.is_ok()
            || window_end.saturating_duration_since(Instant::now()) < 2 * STATS_RETRY_PAUSE
        {
            return result.map_err(|error| match error {
                ClientError::Server { request, reason } => ClientError::Server {
                    request,
                    reason: format!("{reason} (tried for {})", format_duration(window)),
                },
                other => other,
            });
        }
        std::thread::sleep(STATS_RETRY_PAUSE);
    }
}

/// What `/stats` says about the fault plan.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStats {
    pub seed: Option<u64>,
    /// Indexed by [`Outcome::index`], summing to 1.
    pub probabilities: [f64; Outcome::COUNT],
    /// Requests the server has logged since it started.
    pub total: Option<u64>,
    /// Seconds since the server started.
    pub uptime_seconds: Option<f64>,
    /// When the server started (its clock, RFC 3339): a restart changes it.
    pub started: Option<String>,
}

/// Reads the seed and the outcome probabilities (or, failing those, the weights) from `/stats`.
/// The seed is exact as the decoder keeps integers (a seed is only useful exact); a server that
/// sends it as a string of digits is understood too.
pub fn parse_server_stats(value: &Value) -> Result<ServerStats, String> {
    let seed = value.get("seed").and_then(|seed| match seed {
        Value::String(digits) => digits.parse().ok(),
        number => number.as_u64(),
    });
    let table = value
        .get("probabilities")
        .or_else(|| value.get("weights"))
        .ok_or("no \"probabilities\" or \"weights\" in /stats")?;
    let mut probabilities = [0.0; Outcome::COUNT];
    for outcome in Outcome::ALL {
        let number = table
            .get(outcome.name())
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("no probability for outcome \"{}\"", outcome.name()))?;
        if !number.is_finite() || number < 0.0 {
            return Err(format!(
                "bad probability {number} for \"{}\"",
                outcome.name()
            ));
        }
        probabilities[outcome.index()] = number;
    }
    let sum: f64 = probabilities.iter().sum();
    // Each value finite does not make the sum finite (1e308 each): dividing by an infinite
    // sum would make every probability 0.
    if !sum.is_finite() {
        return Err("the probabilities do not sum to a finite number".into());
    }
    if sum <= 0.0 {
        return Err("all probabilities are zero".into());
    }
    for probability in &mut probabilities {
        *probability /= sum;
    }
    Ok(ServerStats {
        seed,
        probabilities,
        total: value.get("total").and_then(Value::as_u64),
        uptime_seconds: value
            .get("uptime_seconds")
            .and_then(Value::as_f64)
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0),
        // Only a timestamp is kept: the text goes into the verdict as it is.
        started: value
            .get("started")
            .and_then(Value::as_str)
            .filter(|text| is_timestamp(text))
            .map(str::to_string),
    })
}

/// Digits and the RFC 3339 punctuation, and short: nothing that needs escaping in a report.
fn is_timestamp(text: &str) -> bool {
    (1..=MAX_TIMESTAMP_LENGTH).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || b"-:.TZ+".contains(&byte))
}

/// Longer than any RFC 3339 timestamp (`2026-11-28T10:00:00.000000000+00:00` is 35 bytes).
const MAX_TIMESTAMP_LENGTH: usize = 40;

/// Whether the server restarted between two `/stats` reads: another start time, a new seed,
/// fewer requests logged, or an uptime that grew less than `between` (the client's time from the
/// end of the first read to the start of the second, which the server's clock saw pass too)
/// allows, with [`UPTIME_SLACK`]. The start time alone catches a restart with the same seed
/// within that slack; the others serve servers that do not report it. The verdict reason naming
/// the evidence, or `None`.
pub fn restart_evidence(
    before: &ServerStats,
    after: &ServerStats,
    between: Duration,
) -> Option<String> {
    let mut evidence = Vec::new();
    if let (Some(first), Some(second)) = (&before.started, &after.started) {
        if first != second {
            evidence.push(format!("started at {first}, then at {second}"));
        }
    }
    if let (Some(first), Some(second)) = (before.seed, after.seed) {
        if first != second {
            evidence.push(format!("seed {first}, then {second}"));
        }
    }
    if let (Some(first), Some(second)) = (before.total, after.total) {
        if second < first {
            evidence.push(format!("{first} requests logged, then {second}"));
        }
    }
    if let (Some(first), Some(second)) = (before.uptime_seconds, after.uptime_seconds) {
        let least = first + between.as_secs_f64() - UPTIME_SLACK.as_secs_f64();
        if second < least {
            evidence.push(format!(
                "uptime {first:.1}s, then {second:.1}s after {}",
                format_duration(between)
            ));
        }
    }
    if evidence.is_empty() {
        None
    } else {
        Some(format!(
            "the server restarted during the run ({})",
            evidence.join("; ")
        ))
    }
}

/// One `/getlogs` entry, as the client needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub id: u64,
    /// RFC 3339, as the server sent it.
    pub time: String,
    pub client_ip: String,
    /// `timeout`, `403`, `500` or `200`.
    pub outcome: String,
    pub status: Option<u16>,
    pub request_id: Option<String>,
    pub duration_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
struct LogPage {
    returned: u64,
    next_since: u64,
    dropped: u64,
    entries: Vec<LogEntry>,
}

fn parse_log_entry(value: &Value) -> Result<LogEntry, String> {
    let id = match value.get("id") {
        None => return Err("log entry without an id".into()),
        Some(id) => id.as_u64().ok_or_else(|| {
            format!(
                "log entry whose id is {}: an id is a whole number from 0 to 2^64-1 in plain \
                 digits",
                kind_of(id)
            )
        })?,
    };
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let client_ip = text("client_ip")
        .or_else(|| {
            text("client").map(|client| match client.rsplit_once(':') {
                Some((ip, _port)) => strip_brackets(ip).to_string(),
                None => client,
            })
        })
        .unwrap_or_default();
    Ok(LogEntry {
        id,
        time: text("time").unwrap_or_default(),
        client_ip,
        outcome: text("outcome").ok_or_else(|| format!("log entry {id} without an outcome"))?,
        status: value
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|status| u16::try_from(status).ok()),
        request_id: text("request_id"),
        duration_ms: value.get("duration_ms").and_then(Value::as_f64),
    })
}

/// What a server's value is, for a message that must not echo the server's text.
fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(value) => value.to_string(),
        Value::Integer(number) => format!("the number {number}"),
        // Plain digits would spell 1e300 out in full.
        Value::Number(number) if number.abs() < 1e15 => format!("the number {number}"),
        Value::Number(number) => format!("the number {number:e}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn parse_log_page(value: &Value) -> Result<LogPage, String> {
    let entries = value
        .get("entries")
        .and_then(Value::as_array)
        .ok_or("no \"entries\" array in /getlogs")?
        .iter()
        .map(parse_log_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let number = |key: &str| value.get(key).and_then(Value::as_u64);
    Ok(LogPage {
        returned: number("returned").unwrap_or(entries.len() as u64),
        next_since: number("next_since")
            .or_else(|| entries.last().map(|entry| entry.id))
            .unwrap_or(0),
        dropped: number("dropped").unwrap_or(0),
        entries,
    })
}

/// This run's entries and how many the server's ring dropped.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LogFetch {
    pub(super) entries: Vec<LogEntry>,
    pub(super) dropped: u64,
}

/// Pages through `/getlogs?request_id_prefix=prefix` with `since` while pages come back full.
///
/// `attempts` is how many attempts the run made. Each has one entry at most; `extra` more are
/// taken so that the report can show them as unknown or duplicated, and a server that returns
/// more than that for the run is refused (as is one whose entries hold more text than
/// [`MAX_LOG_TEXT_PER_ENTRY`] per entry allowed): what the client keeps is bounded by its own
/// run, not by what a server cares to send. When the entries fill the last page exactly, the
/// page after it is empty, so that page costs nothing.
pub(super) fn fetch_run_entries(
    target: &Target,
    prefix: &str,
    page_limit: u64,
    max_pages: u64,
    (attempts, extra): (u64, u64),
    timeout: Duration,
) -> Result<LogFetch, ClientError> {
    let max_entries = attempts.saturating_add(extra);
    let text_budget = usize::try_from(max_entries)
        .unwrap_or(usize::MAX)
        .saturating_mul(MAX_LOG_TEXT_PER_ENTRY);
    let mut text_kept = 0usize;
    let mut since = 0;
    let mut fetched = LogFetch {
        entries: Vec::new(),
        dropped: 0,
    };
    for _ in 0..max_pages {
        let path = format!("/getlogs?request_id_prefix={prefix}&since={since}&limit={page_limit}");
        let fail = |reason: String| ClientError::Server {
            request: format!("GET {path}"),
            reason,
        };
        let max_values = usize::try_from(page_limit.saturating_add(1))
            .unwrap_or(usize::MAX)
            .saturating_mul(MAX_VALUES_PER_LOG_ENTRY);
        let value = fetch_json(target, &path, timeout, max_values)?;
        let page = parse_log_page(&value).map_err(fail)?;
        let delivered = page.entries.len() as u64;
        let arrived = fetched.entries.len() as u64 + delivered;
        // Every entry returned counts, this run's or not: the server was asked for this run's
        // only, so a server that ignores the filter is bounded all the same.
        if arrived > max_entries {
            return Err(fail(format!(
                "the server returned {arrived} entries for this run's prefix, more than its \
                 {attempts} attempts (one entry each at most) and {extra} more: its log holds \
                 requests this client never sent, or its paging repeats entries"
            )));
        }
        text_kept = page
            .entries
            .iter()
            .map(entry_text_bytes)
            .fold(text_kept, usize::saturating_add);
        if text_kept > text_budget {
            return Err(fail(format!(
                "the server's entries for this run's prefix hold more than {text_budget} bytes of text \
                 ({MAX_LOG_TEXT_PER_ENTRY} per entry), far more than this run's log"
            )));
        }
        fetched.dropped = fetched.dropped.max(page.dropped);
        fetched
            .entries
            .extend(page.entries.into_iter().filter(|entry| {
                entry
                    .request_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(prefix))
            }));
        // Full only when the page says so and delivered it: a page claiming more than it holds
        // must not keep the paging going.
        if page.returned < page_limit || delivered < page_limit {
            return Ok(fetched);
        }
        if page.next_since <= since {
            return Err(fail(format!(
                "paging does not advance (next_since {})",
                page.next_since
            )));
        }
        since = page.next_since;
    }
    Err(ClientError::Server {
        request: "GET /getlogs".into(),
        reason: format!("more than {max_pages} pages of {page_limit} entries"),
    })
}

/// The text an entry keeps, in bytes.
fn entry_text_bytes(entry: &LogEntry) -> usize {
    let request_id = entry.request_id.as_ref().map_or(0, String::len);
    entry.time.len() + entry.client_ip.len() + entry.outcome.len() + request_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_support::{
        answer_each, loopback, owner_stats, query_value, read_head, OWNER,
    };
    use crate::client::MAX_LOG_PAGES;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_restart_shows_in_the_start_time_the_seed_the_requests_logged_or_the_uptime() {
        let before = owner_stats();
        let stats = |seed, total, uptime| ServerStats {
            seed: Some(seed),
            total: Some(total),
            uptime_seconds: Some(uptime),
            started: Some("2026-11-28T10:00:00.000Z".into()),
            ..owner_stats()
        };
        let before = ServerStats {
            total: Some(50),
            uptime_seconds: Some(100.0),
            started: Some("2026-11-28T10:00:00.000Z".into()),
            ..before
        };
        let minute = Duration::from_secs(60);
        let restarted =
            |evidence: &str| Some(format!("the server restarted during the run ({evidence})"));
        let cases = [
            // The same server a minute on, within the slack or well past it.
            (stats(123, 80, 160.0), None),
            (stats(123, 50, 159.5), None),
            (stats(123, 50, 1e6), None),
            (stats(124, 80, 160.0), restarted("seed 123, then 124")),
            (
                stats(123, 3, 160.0),
                restarted("50 requests logged, then 3"),
            ),
            (
                stats(123, 80, 20.0),
                restarted("uptime 100.0s, then 20.0s after 60s"),
            ),
            // A young server restarted with the same seed: the uptime grew, but too little.
            (
                stats(123, 80, 130.0),
                restarted("uptime 100.0s, then 130.0s after 60s"),
            ),
            (
                stats(9, 1, 2.0),
                restarted(
                    "seed 123, then 9; 50 requests logged, then 1; uptime 100.0s, then 2.0s \
                     after 60s",
                ),
            ),
        ];
        for (after, expected) in cases {
            assert_eq!(
                restart_evidence(&before, &after, minute),
                expected,
                "{after:?}"
            );
        }
        // Restarted with the same seed half a second after the first read, the log grown past
        // what it held: only the start time tells.
        let quick = ServerStats {
            started: Some("2026-11-28T10:01:40.500Z".into()),
            ..stats(123, 80, 159.5)
        };
        assert_eq!(
            restart_evidence(&before, &quick, minute),
            restarted("started at 2026-11-28T10:00:00.000Z, then at 2026-11-28T10:01:40.500Z")
        );
        // What a server does not say proves nothing.
        let silent = ServerStats {
            seed: None,
            total: None,
            uptime_seconds: None,
            started: None,
            ..owner_stats()
        };
        assert_eq!(restart_evidence(&before, &silent, minute), None);
        assert_eq!(restart_evidence(&silent, &stats(1, 0, 0.0), minute), None);
        // A start time that is no timestamp is not believed (it would reach the report raw).
        let odd = r#"{"started":"\u001b[2J","weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let parsed = parse_server_stats(&json::decode(odd).unwrap()).unwrap();
        assert_eq!(parsed.started, None);
        let text = r#"{"seed":7,"total":12,"uptime_seconds":3.25,"started":"2026-11-28T10:00:00.000Z","weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let parsed = parse_server_stats(&json::decode(text).unwrap()).unwrap();
        assert_eq!(
            (
                parsed.total,
                parsed.uptime_seconds,
                parsed.started.as_deref()
            ),
            (Some(12), Some(3.25), Some("2026-11-28T10:00:00.000Z"))
        );
    }

    #[test]
    fn server_answers_parse_into_stats_and_log_pages() {
        let stats = json::decode(
            r#"{"seed":123,"weights":{"timeout":20,"403":20,"500":10,"200":50},
                "probabilities":{"timeout":0.2,"403":0.2,"500":0.1,"200":0.5},"total":0}"#,
        )
        .unwrap();
        let parsed = parse_server_stats(&stats).unwrap();
        assert_eq!(parsed.seed, Some(123));
        assert_eq!(parsed.probabilities, OWNER);
        let big = r#"{"nested":{"seed":5},"seed" : 8824335353481052954,
            "probabilities":{"timeout":0.2,"403":0.2,"500":0.1,"200":0.5}}"#;
        let parsed = parse_server_stats(&json::decode(big).unwrap()).unwrap();
        assert_eq!(parsed.seed, Some(8_824_335_353_481_052_954));
        // As f64 both would be 2^53; the decoder keeps the digits apart.
        for seed in [1u64 << 53, (1 << 53) + 1] {
            let text =
                format!(r#"{{"seed":{seed},"weights":{{"timeout":1,"403":1,"500":1,"200":1}}}}"#);
            let parsed = parse_server_stats(&json::decode(&text).unwrap()).unwrap();
            assert_eq!(parsed.seed, Some(seed), "{text}");
        }
        // Only the top-level seed counts, whatever is nested before it.
        let nested = r#"{"nested":{"seed":9007199254740993},"seed":9007199254740992,
            "weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let parsed = parse_server_stats(&json::decode(nested).unwrap()).unwrap();
        assert_eq!(parsed.seed, Some(1 << 53));
        let quoted =
            r#"{"seed":"18446744073709551615","weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let parsed = parse_server_stats(&json::decode(quoted).unwrap()).unwrap();
        assert_eq!(parsed.seed, Some(u64::MAX));
        assert_eq!(parsed.probabilities, [0.25; Outcome::COUNT]);
        let weights_only =
            json::decode(r#"{"weights":{"timeout":1,"403":1,"500":0,"200":2}}"#).unwrap();
        assert_eq!(
            parse_server_stats(&weights_only).unwrap().probabilities,
            [0.25, 0.25, 0.0, 0.5]
        );
        assert!(parse_server_stats(&json::decode(r#"{"seed":1}"#).unwrap()).is_err());
        // Each value finite, the sum not: before, every probability became 0 and the run
        // passed against a table of zeros.
        let overflowing = json::decode(
            r#"{"probabilities":{"timeout":1e308,"403":1e308,"500":1e308,"200":1e308}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_server_stats(&overflowing),
            Err("the probabilities do not sum to a finite number".to_string())
        );

        let page = json::decode(
            r#"{"total":9,"dropped":2,"returned":2,"next_since":7,"entries":[
              {"id":6,"time":"2024-10-23T23:55:31.705Z","client":"[::1]:5555","method":"GET",
               "path":"/getbalance","outcome":"timeout","status":null,"request_id":"ab-1-1",
               "duration_ms":null},
              {"id":7,"time":"2024-10-23T23:55:31.706Z","client":"127.0.0.1:5555",
               "client_ip":"127.0.0.1","outcome":"200","status":200,"request_id":null,
               "duration_ms":0.05}]}"#,
        )
        .unwrap();
        let parsed = parse_log_page(&page).unwrap();
        assert_eq!(
            (parsed.returned, parsed.next_since, parsed.dropped),
            (2, 7, 2)
        );
        assert_eq!(parsed.entries[0].client_ip, "::1");
        assert_eq!(parsed.entries[0].status, None);
        assert_eq!(parsed.entries[0].request_id.as_deref(), Some("ab-1-1"));
        assert_eq!(parsed.entries[1].status, Some(200));
        assert_eq!(parsed.entries[1].request_id, None);
        let entry_error = |entry: &str| {
            let page = format!(r#"{{"entries":[{{"outcome":"200"{entry}}}]}}"#);
            parse_log_page(&json::decode(&page).unwrap()).unwrap_err()
        };
        assert_eq!(entry_error(""), "log entry without an id");
        // A wrong id says what it is instead, without echoing the server's text.
        let not_whole = "an id is a whole number from 0 to 2^64-1 in plain digits";
        let cases = [
            (r#","id":1e300"#, "the number 1e300"),
            (r#","id":1e17"#, "the number 1e17"),
            (r#","id":-1"#, "the number -1"),
            (r#","id":2.5"#, "the number 2.5"),
            (r#","id":"1""#, "a string"),
            (r#","id":null"#, "null"),
        ];
        for (entry, kind) in cases {
            assert_eq!(
                entry_error(entry),
                format!("log entry whose id is {kind}: {not_whole}")
            );
        }
    }

    /// A `/getlogs`-only server on loopback: `page(since, limit)` makes each answer's entries
    /// (as JSON text; `next_since` follows from them, and `returned` too unless `claim_full`,
    /// which says `limit` whatever it sends); returns the port and a count of the pages served.
    fn serve_log_pages_claiming(
        claim_full: bool,
        page: impl Fn(u64, u64) -> Vec<String> + Send + Sync + 'static,
    ) -> (u16, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&served);
        let page = Arc::new(page);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buffer = Vec::new();
                let Some(head) = read_head(&mut stream, &mut buffer) else {
                    continue;
                };
                let target = head.split(' ').nth(1).unwrap_or("/");
                let query = target.split_once('?').map_or("", |(_, query)| query);
                let number = |key| query_value(query, key).and_then(|v| v.parse().ok());
                let since = number("since").unwrap_or(0);
                let limit = number("limit").unwrap_or(100);
                let entries = page(since, limit);
                counter.fetch_add(1, Ordering::Relaxed);
                let returned = if claim_full {
                    limit
                } else {
                    entries.len() as u64
                };
                let body = format!(
                    r#"{{"total":0,"dropped":0,"entries":[{}],"returned":{returned},"next_since":{}}}"#,
                    entries.join(","),
                    since + limit
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nServer: unreliable/test\r\nConnection: close\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (port, served)
    }

    fn serve_log_pages(
        page: impl Fn(u64, u64) -> Vec<String> + Send + Sync + 'static,
    ) -> (u16, Arc<AtomicU64>) {
        serve_log_pages_claiming(false, page)
    }

    /// A log whose first page (of the asked `limit`) is `first` and which has nothing after it.
    fn serve_one_log_page(first: impl Fn(u64) -> Vec<String> + Send + Sync + 'static) -> u16 {
        let (port, _) =
            serve_log_pages(move |since, limit| if since == 0 { first(limit) } else { Vec::new() });
        port
    }

    /// Entry `id` of run `ab` with a request id of `id_bytes` bytes at least.
    fn page_entry(id: u64, id_bytes: usize) -> String {
        let request_id = format!("ab-{id}-1{}", "0".repeat(id_bytes.saturating_sub(6)));
        format!(
            r#"{{"id":{id},"time":"2024-10-23T23:55:31.705Z","client_ip":"127.0.0.1","outcome":"200","status":200,"request_id":"{request_id}"}}"#
        )
    }

    #[test]
    fn endless_full_log_pages_stop_once_they_hold_more_entries_than_attempts() {
        // Always a full page, `next_since` always advancing: before, the client kept every
        // page until MAX_LOG_PAGES (ten million entries).
        let (port, served) = serve_log_pages(|since, limit| {
            (since + 1..=since + limit)
                .map(|id| page_entry(id, 8))
                .collect()
        });
        let timeout = Duration::from_secs(2);
        let error = fetch_run_entries(&loopback(port), "ab-", 3, MAX_LOG_PAGES, (7, 0), timeout)
            .unwrap_err();
        // 3 + 3 entries may all be the run's; the third page makes 9, more than 7 attempts.
        assert_eq!(served.load(Ordering::Relaxed), 3);
        assert_eq!(error.exit_code(), 1);
        let message = error.to_string();
        assert!(
            message.starts_with("GET /getlogs?request_id_prefix=ab-&since=6&limit=3 failed: ")
                && message.contains("9 entries for this run's prefix, more than its 7 attempts (one entry each at most) and 0 more"),
            "{message}"
        );
    }

    #[test]
    fn as_many_entries_as_attempts_are_accepted_with_the_empty_page_that_ends_them() {
        // Attempts a multiple of the page size: the last full page must be followed by an
        // empty one to know the log ends there, and that is no excess.
        let (port, served) = serve_log_pages(|since, limit| {
            (since + 1..=(since + limit).min(6))
                .map(|id| page_entry(id, 8))
                .collect()
        });
        let timeout = Duration::from_secs(2);
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 3, MAX_LOG_PAGES, (6, 0), timeout).unwrap();
        assert_eq!(fetched.entries.len(), 6);
        assert_eq!(served.load(Ordering::Relaxed), 3);
        let error = fetch_run_entries(&loopback(port), "ab-", 3, MAX_LOG_PAGES, (5, 0), timeout)
            .unwrap_err();
        assert!(error
            .to_string()
            .contains("6 entries for this run's prefix, more than its 5 attempts"));
        // With room for extra entries they are fetched, for the report to list as unknown.
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 3, MAX_LOG_PAGES, (4, 2), timeout).unwrap();
        assert_eq!(fetched.entries.len(), 6);
        let error = fetch_run_entries(&loopback(port), "ab-", 3, MAX_LOG_PAGES, (4, 1), timeout)
            .unwrap_err();
        assert!(
            error.to_string().contains("more than its 4 attempts"),
            "{error}"
        );
    }

    #[test]
    fn entries_of_other_runs_count_toward_the_bound_but_are_not_kept() {
        // A server that ignores request_id_prefix: the other run's entry is not shown or
        // reconciled as this run's, yet it still counts, so such a server stays bounded.
        let port = serve_one_log_page(|_| {
            let other = page_entry(2, 8).replace("\"ab-", "\"zz-");
            vec![page_entry(1, 8), other, page_entry(3, 8)]
        });
        let timeout = Duration::from_secs(2);
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 1000, MAX_LOG_PAGES, (3, 0), timeout)
                .unwrap();
        let ids: Vec<u64> = fetched.entries.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, [1, 3]);
        let error = fetch_run_entries(&loopback(port), "ab-", 1000, MAX_LOG_PAGES, (2, 0), timeout)
            .unwrap_err();
        assert!(error.to_string().contains("returned 3 entries"), "{error}");
    }

    #[test]
    fn a_page_that_claims_to_be_full_without_its_entries_ends_the_paging() {
        // `returned` says a full page, the entries are not there, `next_since` advances:
        // before, such pages went on for MAX_LOG_PAGES requests.
        let (port, served) = serve_log_pages_claiming(true, |_, _| Vec::new());
        let timeout = Duration::from_secs(2);
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 3, MAX_LOG_PAGES, (6, 0), timeout).unwrap();
        assert!(fetched.entries.is_empty());
        assert_eq!(served.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn log_entries_past_the_text_budget_of_the_run_are_refused() {
        // Two entries for four attempts, but each with a 10 KB request id: more text than
        // MAX_LOG_TEXT_PER_ENTRY per attempt of the run.
        let port = serve_one_log_page(|_| vec![page_entry(1, 10_000), page_entry(2, 10_000)]);
        let timeout = Duration::from_secs(2);
        let error = fetch_run_entries(&loopback(port), "ab-", 1000, MAX_LOG_PAGES, (4, 0), timeout)
            .unwrap_err();
        let budget = 4 * MAX_LOG_TEXT_PER_ENTRY;
        assert!(
            error
                .to_string()
                .contains(&format!("more than {budget} bytes of text")),
            "{error}"
        );
        // Ids of up to the server's 200 bytes fit easily.
        let port = serve_one_log_page(|_| (1..=4).map(|id| page_entry(id, 200)).collect());
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 1000, MAX_LOG_PAGES, (4, 0), timeout)
                .unwrap();
        assert_eq!(fetched.entries.len(), 4);
    }

    #[test]
    fn a_log_page_with_more_values_than_its_entries_hold_is_refused_before_it_is_built() {
        let timeout = Duration::from_secs(2);
        // Two bytes of text per value: decoded whole, 16 times the text in memory.
        let padded = |id| {
            let entry = page_entry(id, 8);
            let zeros = "0,".repeat(5_000);
            format!(r#"{},"x":[{zeros}0]}}"#, &entry[..entry.len() - 1])
        };
        let port = serve_one_log_page(move |_| vec![padded(1)]);
        let error = fetch_run_entries(&loopback(port), "ab-", 10, MAX_LOG_PAGES, (1, 0), timeout)
            .unwrap_err();
        let limit = 11 * MAX_VALUES_PER_LOG_ENTRY;
        assert!(
            error
                .to_string()
                .contains(&format!("more than the {limit} values expected")),
            "{error}"
        );
        // A full page of ordinary entries is far inside the bound.
        let port = serve_one_log_page(|limit| (1..=limit).map(|id| page_entry(id, 200)).collect());
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 10, MAX_LOG_PAGES, (10, 0), timeout).unwrap();
        assert_eq!(fetched.entries.len(), 10);
    }

    #[test]
    fn a_stats_answer_with_more_values_than_stats_hold_is_refused() {
        let body = format!(r#"{{"seed":1,"x":[{}0]}}"#, "0,".repeat(MAX_STATS_VALUES));
        let reply = format!(
            "HTTP/1.1 200 OK\r\nServer: unreliable/test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let target = answer_each(vec![reply.into_bytes()], true);
        let error =
            fetch_json(&target, "/stats", Duration::from_secs(2), MAX_STATS_VALUES).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("more than the {MAX_STATS_VALUES} values expected")),
            "{error}"
        );
    }

    #[test]
    fn an_answer_in_another_protocol_is_quoted() {
        let banners = [
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
            b"\x15\x03\x03\x00\x02\x02\x46",
        ];
        let target = answer_each(banners.iter().map(|b| b.to_vec()).collect(), false);
        let reasons = [
            "malformed response: malformed status line (the answer began \"SSH-2.0-OpenSSH_9.6\\u{d}\\u{a}\": \
             is this an HTTP server?)",
            "malformed response: malformed status line (the answer began \"\\u{15}\\u{3}\\u{3}\\u{0}\\u{2}\\u{2}F\": \
             is this an HTTP server?)",
        ];
        for reason in reasons {
            let error = fetch_json(&target, "/stats", Duration::from_secs(2), MAX_STATS_VALUES)
                .unwrap_err();
            assert_eq!(error.to_string(), format!("GET /stats failed: {reason}"));
        }
    }

    #[test]
    fn a_server_that_never_answers_admin_requests_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target {
            address: listener.local_addr().unwrap(),
            host_header: "127.0.0.1".into(),
        };
        let started = Instant::now();
        let error = fetch_json(
            &target,
            "/stats",
            Duration::from_millis(100),
            MAX_STATS_VALUES,
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            error.to_string(),
            "GET /stats failed: no complete answer within 100ms"
        );
        drop(listener);
    }
}
