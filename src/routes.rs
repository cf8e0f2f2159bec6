//! What each endpoint answers: `/getbalance` (the faults), `/getlogs`, `/stats`, `/health`, `/`.
//!
//! Invariants: every `/getbalance` request that reaches its draw is logged exactly once, before
//! its answer is written; a handler either appends a complete response to the caller's buffer or
//! asks for a hang; bad query values get a 400 naming the parameter.

use crate::chaos::{Chaos, Outcome};
use crate::clock;
use crate::http::{self, Method, RequestHead, Response};
use crate::json::ObjectWriter;
use crate::log::{self, Filter, NewEntry, RequestLog};
use crate::stats;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest `X-Request-Id` logged; longer ones get 400, so the log never truncates an id.
pub const MAX_REQUEST_ID: usize = 200;
/// `/getlogs` output is sent in chunks of about this many bytes, so a large log streams instead of
/// being built as one string.
pub const STREAM_CHUNK: usize = 32 * 1024;
/// Most entries taken from the log per page while a `/getlogs` piece is formatted, so a piece
/// (held in memory while a slow reader takes it) stays near [`STREAM_CHUNK`]: an entry's JSON is
/// usually 300 to 600 bytes (a long request target can make one a few KiB).
const PIECE_ENTRIES: u64 = 64;

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const ALLOW: (&str, &str) = ("Allow", "GET, HEAD, OPTIONS");
/// A fault answer cached by a proxy would stop being a fault.
const NO_STORE: (&str, &str) = ("Cache-Control", "no-store");
/// `/getbalance` answers JSON or HTML by `Accept`; a cache that ignored `no-store` must still
/// not hand one client the other's form (RFC 9110 §12.5.5).
const VARY_ACCEPT: (&str, &str) = ("Vary", "Accept");
const RETRY_AFTER: (&str, &str) = ("Retry-After", "1");
/// Why `/getbalance` and `/health` answer 503 while the log file cannot be written.
const LOG_STALLED_BODY: &[u8] =
    b"the log file cannot be written, so no outcome is drawn (see the server's stderr)\n";
/// `/health` while writes to the log file fail (entries wait in memory) or go to a file its
/// path no longer names.
const LOG_FAILING_BODY: &[u8] =
    b"the log file cannot be written as configured (see the server's stderr)\n";

/// Everything the handlers share.
#[derive(Debug)]
pub struct App {
    pub chaos: Chaos,
    pub log: Arc<RequestLog>,
    pub started: Instant,
    /// The wall-clock time of the start, for `/stats`: a client that reads it before and after a
    /// run sees a restart in it, whatever the seed and however soon.
    pub started_unix_millis: u64,
    /// The longest a hung request is held.
    pub hang: Duration,
}

/// What the connection does after the handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Send what was written and read the next request.
    KeepOpen,
    /// Send what was written and close.
    Close,
    /// Send nothing more; hold the connection until the client leaves or `App::hang` passes.
    Hang,
}

/// One request, as the server hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'r, 'b> {
    pub request: &'r RequestHead<'b>,
    pub peer: SocketAddr,
    /// When the request's first byte arrived.
    pub started: Instant,
    /// When it is answered (wall clock): its log entry's time, and the second of `date`.
    pub unix_millis: u64,
    /// The `Date` value for this second.
    pub date: &'r [u8; 29],
}

impl Exchange<'_, '_> {
    fn disposition(&self) -> Disposition {
        if self.request.keep_alive {
            Disposition::KeepOpen
        } else {
            Disposition::Close
        }
    }

    /// Appends a complete response and says what the connection does next.
    fn reply(
        &self,
        out: &mut Vec<u8>,
        status: u16,
        content_type: &str,
        extra_headers: &[(&str, &str)],
        body: &[u8],
    ) -> Disposition {
        let response = Response {
            status,
            content_type,
            extra_headers,
            body,
            keep_alive: self.request.keep_alive,
            request_minor_version: self.request.minor_version,
            head_only: self.request.method == Method::Head,
        };
        http::write_response(out, &response, self.date);
        self.disposition()
    }

    /// Like [`Exchange::reply`], for a body that `write_body` appends straight to `out` (no
    /// buffer of its own, so nothing is allocated once `out` has grown to size).
    fn reply_with(
        &self,
        out: &mut Vec<u8>,
        status: u16,
        content_type: &str,
        extra_headers: &[(&str, &str)],
        write_body: impl FnOnce(&mut Vec<u8>),
    ) -> Disposition {
        let body_start = out.len();
        write_body(out);
        let response = Response {
            status,
            content_type,
            extra_headers,
            body: b"",
            keep_alive: self.request.keep_alive,
            request_minor_version: self.request.minor_version,
            head_only: self.request.method == Method::Head,
        };
        http::write_response_around_body(out, body_start, &response, self.date);
        self.disposition()
    }
}

/// Whether [`respond`] answers `request` quickly: such a request can be answered by a thread
/// that must not be held up. `/getlogs` formats an answer of any size and `/stats` may run a
/// Monte Carlo test, so they need a worker.
pub fn answers_at_once(request: &RequestHead<'_>) -> bool {
    !matches!(request.path, "/getlogs" | "/stats")
}

/// What [`respond`] decided.
#[derive(Debug)]
pub struct Answered {
    pub disposition: Disposition,
    /// The rest of a long answer (`/getlogs`), to be appended piece by piece after what is in
    /// the caller's buffer has been sent.
    pub rest: Option<LogStream>,
}

/// Handles one request: appends the response (or, for a long one, its first piece) to `out`.
pub fn respond(app: &App, exchange: &Exchange<'_, '_>, out: &mut Vec<u8>) -> Answered {
    let complete = |disposition| Answered {
        disposition,
        rest: None,
    };
    let request = exchange.request;
    let known = matches!(
        request.path,
        "/" | "/getbalance" | "/getlogs" | "/stats" | "/health"
    );
    match request.method {
        Method::Get | Method::Head => {}
        Method::Options if known || request.path == "*" => {
            // No content, so no Content-Type either.
            return complete(exchange.reply(out, 204, "", &[ALLOW], b""));
        }
        // This is not a proxy: CONNECT is as unknown here as a made-up method.
        Method::Other | Method::Connect => {
            let body = format!("method '{}' is not implemented\n", request.method_text);
            return complete(exchange.reply(out, 501, TEXT, &[], body.as_bytes()));
        }
        _ if known => {
            let body = format!(
                "method '{}' is not allowed on {}; use GET or HEAD\n",
                request.method_text, request.path
            );
            return complete(exchange.reply(out, 405, TEXT, &[ALLOW], body.as_bytes()));
        }
        _ => {}
    }
    match request.path {
        "/getbalance" => complete(get_balance(app, exchange, out)),
        "/getlogs" => {
            let (disposition, rest) = get_logs(app, exchange, out);
            Answered { disposition, rest }
        }
        "/stats" => complete(get_stats(app, exchange, out)),
        // A probe answered from a cache would report a health the server no longer has.
        "/health" if app.log.file_stalled() => {
            complete(exchange.reply(out, 503, TEXT, &[NO_STORE, RETRY_AFTER], LOG_STALLED_BODY))
        }
        "/health" if app.log.file_failing() => {
            complete(exchange.reply(out, 503, TEXT, &[NO_STORE, RETRY_AFTER], LOG_FAILING_BODY))
        }
        "/health" => complete(exchange.reply(out, 200, TEXT, &[NO_STORE], b"ok\n")),
        "/" => complete(exchange.reply(out, 200, HTML, &[], INDEX_PAGE.as_bytes())),
        path => {
            let mut body = String::from("not found: ");
            body.push_str(path);
            body.push_str("\nendpoints: /getbalance /getlogs /stats /health /\n");
            complete(exchange.reply(out, 404, TEXT, &[], body.as_bytes()))
        }
    }
}

fn bad_request(exchange: &Exchange<'_, '_>, out: &mut Vec<u8>, reason: &str) -> Disposition {
    let mut body = String::with_capacity(reason.len() + 1);
    // A reason may quote the client's decoded text: control and bidi-override characters are
    // escaped, so a request cannot put terminal escapes in front of whoever reads the answer.
    for character in reason.chars() {
        if character.is_control()
            || matches!(character, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            body.extend(character.escape_unicode());
        } else {
            body.push(character);
        }
    }
    body.push('\n');
    exchange.reply(out, 400, TEXT, &[], body.as_bytes())
}

fn get_balance(app: &App, exchange: &Exchange<'_, '_>, out: &mut Vec<u8>) -> Disposition {
    let request = exchange.request;
    // Each names one thing: two ids or two forced outcomes are refused rather than one of them
    // silently dropped from the log.
    let (Ok(request_id), Ok(forced_name)) = (
        request.single_header("x-request-id"),
        request.single_header("x-unreliable-outcome"),
    ) else {
        return bad_request(
            exchange,
            out,
            "x-request-id and x-unreliable-outcome may each be sent once",
        );
    };
    if request_id.is_some_and(|id| id.len() > MAX_REQUEST_ID) {
        let reason = format!("x-request-id is longer than {MAX_REQUEST_ID} bytes");
        return bad_request(exchange, out, &reason);
    }
    // Logged exactly or not at all: two different ids must never read the same in the log.
    if request_id.is_some_and(|id| std::str::from_utf8(id).is_err()) {
        return bad_request(exchange, out, "x-request-id must be UTF-8 text");
    }
    let forced = match forced_name {
        None => None,
        Some(name) => match std::str::from_utf8(name).ok().and_then(Outcome::from_name) {
            Some(outcome) => Some(outcome),
            None => {
                return bad_request(
                    exchange,
                    out,
                    "x-unreliable-outcome must be one of timeout, 403, 500, 200",
                )
            }
        },
    };
    if !app.log.takes_entries() {
        // An outcome that could not be logged would break the log's promise; the client is
        // told to come back rather than given an unproven fault.
        return exchange.reply(out, 503, TEXT, &[RETRY_AFTER], LOG_STALLED_BODY);
    }
    let unix_millis = exchange.unix_millis;
    let new_entry = NewEntry {
        unix_millis,
        client: exchange.peer,
        method: request.method_text,
        target: request.target,
        request_id,
        duration_micros: u64::try_from(exchange.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        forced: forced.is_some(),
    };
    let entry = app.log.record(&new_entry, |k| app.chaos.decide(k, forced));
    let wants_json = prefers_json(request.header("accept"));
    let mut entry_id_text = [0u8; 20];
    let entry_id = decimal(entry.id, &mut entry_id_text);
    let headers = [NO_STORE, VARY_ACCEPT, ("X-Unreliable-Entry", entry_id)];
    let status = entry.outcome.status().unwrap_or(500);
    match entry.outcome {
        Outcome::Timeout => Disposition::Hang,
        Outcome::Balance => {
            // Plain data on the stack, written straight into `out`: the hot path allocates
            // nothing.
            let balance = app.chaos.balance(entry.id, unix_millis);
            if wants_json {
                exchange.reply_with(out, status, JSON, &headers, |body| balance.write_json(body))
            } else {
                exchange.reply_with(out, status, HTML, &headers, |body| balance.write_html(body))
            }
        }
        Outcome::Forbidden | Outcome::ServerError => {
            let reason = http::reason_phrase(status);
            if wants_json {
                let mut text = String::new();
                let mut object = ObjectWriter::new(&mut text);
                object.u64("status", u64::from(status));
                object.string("error", reason);
                object.u64("entry", entry.id);
                object.finish();
                exchange.reply(out, status, JSON, &headers, text.as_bytes())
            } else {
                exchange.reply_with(out, status, TEXT, &headers, |body| {
                    body.extend_from_slice(reason.as_bytes());
                    body.push(b'\n');
                })
            }
        }
    }
}

/// Writes `value` in decimal into `buffer` and returns the digits.
fn decimal(mut value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[start..]).unwrap_or("0")
}

/// Whether `Accept` ranks `application/json` above `text/html` (RFC 9110 §12.5.1: the most
/// specific matching range gives a type its weight). Ties and no header mean HTML.
fn prefers_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let [json, html] = qualities(accept, [(b"application", b"json"), (b"text", b"html")]);
    json > html
}

/// The weight `accept` gives each `(type, subtype)`, in one pass over the list: that of the
/// most specific range that matches it (the first of equals), 0 when none does. Bytes, not
/// text: curl, ab and Python's clients send `*/*` on every request.
fn qualities<const N: usize>(accept: &[u8], media: [(&[u8], &[u8]); N]) -> [f64; N] {
    // (specificity, quality) of the best range so far, per media type.
    let mut best: [Option<(u8, f64)>; N] = [None; N];
    for range in accept.split(|&byte| byte == b',') {
        let (media_range, parameters) = match range.iter().position(|&byte| byte == b';') {
            Some(semicolon) => (&range[..semicolon], &range[semicolon + 1..]),
            None => (range, &[][..]),
        };
        let media_range = http::trim_whitespace(media_range);
        let Some(slash) = media_range.iter().position(|&byte| byte == b'/') else {
            continue;
        };
        let (range_kind, range_subtype) = (&media_range[..slash], &media_range[slash + 1..]);
        // The q parameter is read only for a range that matches something.
        let mut quality = None;
        for ((kind, subtype), best) in media.iter().zip(best.iter_mut()) {
            let specificity = if range_kind.eq_ignore_ascii_case(kind)
                && range_subtype.eq_ignore_ascii_case(subtype)
            {
                2
            } else if range_kind.eq_ignore_ascii_case(kind) && range_subtype == b"*" {
                1
            } else if range_kind == b"*" && range_subtype == b"*" {
                0
            } else {
                continue;
            };
            if best.is_none_or(|(seen, _)| specificity > seen) {
                let quality = *quality.get_or_insert_with(|| quality_parameter(parameters));
                *best = Some((specificity, quality));
            }
        }
    }
    best.map(|found| found.map_or(0.0, |(_, quality)| quality))
}

/// The `q` among a media range's `;`-separated parameters (1 when absent, 0 when unreadable),
/// within 0..=1.
fn quality_parameter(parameters: &[u8]) -> f64 {
    let mut quality = 1.0;
    for parameter in parameters.split(|&byte| byte == b';') {
        let Some(equals) = parameter.iter().position(|&byte| byte == b'=') else {
            continue;
        };
        if http::trim_whitespace(&parameter[..equals]).eq_ignore_ascii_case(b"q") {
            quality = std::str::from_utf8(http::trim_whitespace(&parameter[equals + 1..]))
                .ok()
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0);
        }
    }
    quality
}

/// The parameters of `/getlogs`.
#[derive(Debug, Clone, Default, PartialEq)]
struct LogQuery {
    filter: Filter,
    limit: Option<u64>,
}

fn parse_log_query(query: Option<&str>) -> Result<LogQuery, String> {
    let mut parsed = LogQuery::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(raw_name)?;
        let value = percent_decode(raw_value)?;
        if seen.contains(&name) {
            return Err(format!("query parameter '{name}' is given twice"));
        }
        let number = |value: &str| -> Result<u64, String> {
            if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(format!("{name}={value}: expected a whole number"));
            }
            value
                .parse::<u64>()
                .map_err(|_| format!("{name}={value}: the number is too large"))
        };
        match name.as_str() {
            "since" => parsed.filter.since = number(&value)?,
            "limit" => parsed.limit = Some(number(&value)?),
            "outcome" => {
                parsed.filter.outcome = Some(Outcome::from_name(&value).ok_or_else(|| {
                    format!("outcome={value}: expected one of timeout, 403, 500, 200")
                })?)
            }
            "client" => {
                parsed.filter.client = Some(value.parse::<IpAddr>().map_err(|_| {
                    format!("client={value}: expected an IP address such as 127.0.0.1 or ::1")
                })?)
            }
            "request_id_prefix" => parsed.filter.request_id_prefix = Some(value),
            _ => {
                return Err(format!(
                    "unknown query parameter '{name}' (expected since, limit, outcome, client, request_id_prefix)"
                ))
            }
        }
        seen.push(name);
    }
    Ok(parsed)
}

/// Decodes `%XX` escapes (RFC 3986); `+` stays a plus sign.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let digits = bytes
                .get(index + 1..index + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok());
            match digits {
                Some(byte) => decoded.push(byte),
                None => return Err(format!("bad percent-escape in '{text}'")),
            }
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("'{text}' does not decode to UTF-8"))
}

fn get_logs(
    app: &App,
    exchange: &Exchange<'_, '_>,
    out: &mut Vec<u8>,
) -> (Disposition, Option<LogStream>) {
    let query = match parse_log_query(exchange.request.query) {
        Ok(query) => query,
        Err(reason) => return (bad_request(exchange, out, &reason), None),
    };
    let request = exchange.request;
    // HTTP/1.0 has no chunked coding: the body then ends when the connection closes. An answer
    // to HEAD has no body, so its connection stays open as asked either way.
    let chunked = request.minor_version >= 1;
    let keep_alive = request.keep_alive && (chunked || request.method == Method::Head);
    // A stale page would hide entries from the client that reconciles against it.
    http::write_streaming_head(
        out,
        200,
        JSON,
        &[NO_STORE],
        chunked,
        keep_alive,
        exchange.date,
    );
    let disposition = if keep_alive {
        Disposition::KeepOpen
    } else {
        Disposition::Close
    };
    if request.method == Method::Head {
        return (disposition, None);
    }
    let counts = app.log.counts();
    let mut text = String::with_capacity(STREAM_CHUNK + 1024);
    {
        let mut object = ObjectWriter::new(&mut text);
        object.u64("total", counts.total);
        object.u64("dropped", counts.dropped);
        object.u64("oldest_id", counts.dropped + 1);
        // The object stays open: the entries stream after it and the tail closes it by hand.
        object.key("entries").push('[');
    }
    let mut logs = LogStream {
        since: query.filter.since,
        filter: query.filter,
        up_to: counts.total,
        remaining: query.limit.unwrap_or(u64::MAX),
        returned: 0,
        last_returned_id: None,
        exhausted: false,
        chunked,
        text,
    };
    let more = logs.next_piece(app, out);
    (disposition, more.then_some(logs))
}

/// The rest of a `/getlogs` answer: where it stopped, so it goes on piece by piece as the client
/// reads, instead of a thread waiting for a slow reader or the whole log built in memory.
/// Entries recorded after the request are not included (`up_to`), so the answer ends.
#[derive(Debug)]
pub struct LogStream {
    /// The `since` the request asked for.
    since: u64,
    /// Its filter, `since` moved past what was already scanned.
    filter: Filter,
    up_to: u64,
    remaining: u64,
    returned: u64,
    last_returned_id: Option<u64>,
    /// Nothing more can match (a page scanned nothing new).
    exhausted: bool,
    chunked: bool,
    /// Formatted JSON not yet appended.
    text: String,
}

impl LogStream {
    /// Appends the next piece of the body (about [`STREAM_CHUNK`] bytes, chunk-framed on
    /// HTTP/1.1) to `out`; after the last one (the closing tail and, chunked, the last chunk)
    /// returns `false`.
    pub fn next_piece(&mut self, app: &App, out: &mut Vec<u8>) -> bool {
        // A piece is STREAM_CHUNK and the rest of the page of entries that passed it.
        self.text.reserve(2 * STREAM_CHUNK);
        while self.text.len() < STREAM_CHUNK && !self.is_complete() {
            let max = usize::try_from(self.remaining.min(PIECE_ENTRIES)).unwrap_or(1);
            let page = app.log.page(&self.filter, self.up_to, max);
            if page.entries.is_empty() && page.scanned_through <= self.filter.since {
                self.exhausted = true;
                break;
            }
            for entry in &page.entries {
                if self.returned > 0 {
                    self.text.push(',');
                }
                log::write_entry_json(&mut self.text, entry);
                self.last_returned_id = Some(entry.id);
                self.returned += 1;
                self.remaining -= 1;
            }
            self.filter.since = page.scanned_through;
        }
        let finished = self.is_complete();
        if finished {
            // A full page resumes after its last entry; otherwise everything up to the snapshot
            // was seen.
            let next_since = match (self.last_returned_id, self.remaining == 0) {
                (Some(id), true) => id,
                (None, true) => self.since,
                (_, false) => self.up_to.max(self.since),
            };
            self.text.push_str("],\"returned\":");
            self.text.push_str(&self.returned.to_string());
            self.text.push_str(",\"next_since\":");
            self.text.push_str(&next_since.to_string());
            self.text.push_str("}\n");
        }
        if self.chunked {
            http::write_chunk(out, self.text.as_bytes());
            if finished {
                http::write_last_chunk(out);
            }
        } else {
            out.extend_from_slice(self.text.as_bytes());
        }
        // Not kept between pieces: a client that stops reading parks its connection for up to
        // 40 s before it is reset, and thousands of them must not each hold a piece's capacity as well as
        // the piece that waits to be sent. An allocation per piece costs nothing next to
        // formatting it.
        self.text = String::new();
        !finished
    }

    fn is_complete(&self) -> bool {
        self.exhausted || self.remaining == 0 || self.filter.since >= self.up_to
    }
}

fn get_stats(app: &App, exchange: &Exchange<'_, '_>, out: &mut Vec<u8>) -> Disposition {
    let counts = app.log.counts();
    let weights = app.chaos.weights();
    let probabilities = weights.probabilities();
    let fit = stats::goodness_of_fit(&counts.by_outcome, &probabilities);
    let mut text = String::with_capacity(1024);
    let mut object = ObjectWriter::new(&mut text);
    object.string("version", env!("CARGO_PKG_VERSION"));
    object.u64("seed", app.chaos.seed());
    object.string("weights_spec", &weights.to_string());
    write_per_outcome(object.key("weights"), |outcome| weights.weight(outcome));
    write_per_outcome(object.key("probabilities"), |outcome| {
        probabilities[outcome.index()]
    });
    object.u64("total", counts.total);
    write_per_outcome(object.key("counts"), |outcome| {
        counts.by_outcome[outcome.index()] as f64
    });
    let drawn: u64 = counts.by_outcome.iter().sum();
    object.u64("drawn", drawn);
    write_per_outcome(object.key("expected_counts"), |outcome| {
        drawn as f64 * probabilities[outcome.index()]
    });
    write_per_outcome(object.key("forced_counts"), |outcome| {
        counts.forced_by_outcome[outcome.index()] as f64
    });
    {
        let mut test = ObjectWriter::new(object.key("chi_square"));
        test.f64("statistic", fit.statistic);
        test.u64("degrees_of_freedom", u64::from(fit.degrees_of_freedom));
        test.f64("p_value", fit.p_value);
        test.string("method", fit.method.name());
        test.finish();
    }
    object.u64("dropped_from_memory", counts.dropped);
    object.f64("hang_seconds", app.hang.as_secs_f64());
    object.f64("uptime_seconds", app.started.elapsed().as_secs_f64());
    let started = object.key("started");
    started.push('"');
    clock::UtcTime::from_unix_millis(app.started_unix_millis).write_rfc3339(started);
    started.push('"');
    object.finish();
    text.push('\n');
    // A stale copy would hide a restart from the client, which compares `started` before and
    // after its run.
    exchange.reply(out, 200, JSON, &[NO_STORE], text.as_bytes())
}

fn write_per_outcome(out: &mut String, value_of: impl Fn(Outcome) -> f64) {
    let mut object = ObjectWriter::new(out);
    for outcome in Outcome::ALL {
        object.f64(outcome.name(), value_of(outcome));
    }
    object.finish();
}

const INDEX_PAGE: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>unreliable</title></head>
<body>
<h1>unreliable</h1>
<p>An HTTP server that fails on purpose.</p>
<ul>
<li><a href=\"/getbalance\">/getbalance</a>: hangs, 403, 500 or 200 with a fake balance, one draw per request</li>
<li><a href=\"/getlogs\">/getlogs</a>: the request log as JSON (since, limit, outcome, client, request_id_prefix)</li>
<li><a href=\"/stats\">/stats</a>: counts per outcome, weights, seed, chi-square test</li>
<li><a href=\"/health\">/health</a>: 200 ok; 503 while the log file cannot be written</li>
</ul>
</body></html>
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_picks_json_only_when_ranked_higher() {
        let cases = [
            (None, false),
            (Some("application/json"), true),
            (Some("text/html"), false),
            (Some("*/*"), false),
            (Some("application/json, text/html"), false),
            (Some("application/json, text/html;q=0.9"), true),
            (Some("text/html;q=0.1, application/*"), true),
            (Some("application/json;q=0, */*"), false),
            (Some("APPLICATION/JSON"), true),
            (Some("application/json;q=abc"), false),
            // One range weighs both types; the most specific match decides, the first of equals.
            (Some("text/html;q=0.1, */*;q=0.5"), true),
            (Some("*/*;q=0.8, text/html;q=0.9"), false),
            (Some("text/*;q=0.5, application/json;q=0.4"), false),
            (Some("application/json;q=0.5, application/json;q=0.1"), true),
            (Some("*/*;q=0"), false),
        ];
        for (accept, expected) in cases {
            assert_eq!(
                prefers_json(accept.map(str::as_bytes)),
                expected,
                "{accept:?}"
            );
        }
    }

    #[test]
    fn log_query_parameters_are_checked() {
        let parsed = parse_log_query(Some(
            "since=5&limit=10&outcome=403&client=::1&request_id_prefix=run%2D1",
        ))
        .unwrap();
        assert_eq!(parsed.filter.since, 5);
        assert_eq!(parsed.limit, Some(10));
        assert_eq!(parsed.filter.outcome, Some(Outcome::Forbidden));
        assert_eq!(parsed.filter.client, Some("::1".parse().unwrap()));
        assert_eq!(parsed.filter.request_id_prefix.as_deref(), Some("run-1"));
        assert_eq!(parse_log_query(None).unwrap(), LogQuery::default());

        let bad = [
            ("since=-1", "since=-1: expected a whole number"),
            ("limit=", "limit=: expected a whole number"),
            ("since=99999999999999999999", "too large"),
            ("outcome=teapot", "expected one of timeout, 403, 500, 200"),
            ("client=nowhere", "expected an IP address"),
            ("colour=red", "unknown query parameter 'colour'"),
            ("since=1&since=2", "given twice"),
            ("request_id_prefix=%zz", "bad percent-escape"),
            ("request_id_prefix=%ff", "does not decode to UTF-8"),
        ];
        for (query, expected) in bad {
            let error = parse_log_query(Some(query)).unwrap_err();
            assert!(error.contains(expected), "{query}: {error}");
        }
    }

    /// An app drawing from `weights` with `seed`, logging to `log`, holding hangs for 1 s.
    fn test_app(seed: u64, weights: crate::chaos::Weights, log: RequestLog) -> App {
        App {
            chaos: Chaos::new(seed, weights),
            log: Arc::new(log),
            started: Instant::now(),
            started_unix_millis: 1_700_000_000_000,
            hang: Duration::from_secs(1),
        }
    }

    /// Answers each request in turn the way a worker does (parse, respond into a reused buffer).
    fn answer_all(
        app: &App,
        requests: &[&[u8]],
        out: &mut Vec<u8>,
        dispositions: &mut Vec<Disposition>,
    ) {
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        dispositions.clear();
        for request in requests {
            let Ok(http::Parsed::Complete(head)) = http::parse_request(request) else {
                panic!("bad test request {request:?}");
            };
            let exchange = Exchange {
                request: &head,
                peer,
                started: Instant::now(),
                unix_millis: clock::now_unix_millis(),
                date,
            };
            out.clear();
            let answered = respond(app, &exchange, out);
            assert!(answered.rest.is_none(), "{request:?}");
            let disposition = answered.disposition;
            assert!(
                disposition == Disposition::Hang || !out.is_empty(),
                "{request:?}"
            );
            dispositions.push(disposition);
        }
    }

    #[test]
    fn balance_answers_and_their_log_entries_allocate_nothing_once_warm() {
        use crate::chaos::Weights;
        use crate::sys::counting_allocator::allocations_on_this_thread;
        // A small ring, so the warm-up fills it and the measured requests also evict.
        let app = test_app(
            1,
            Weights::parse("200=1").unwrap(),
            RequestLog::new(16, false).unwrap(),
        );
        let requests: [&[u8]; 7] = [
            b"GET /getbalance HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /getbalance HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nX-Request-Id: run-1-1\r\n\r\n",
            b"HEAD /getbalance?unusual=target HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"GET /getbalance HTTP/1.1\r\nHost: x\r\nX-Unreliable-Outcome: 403\r\n\r\n",
            b"GET /getbalance HTTP/1.1\r\nHost: x\r\nX-Unreliable-Outcome: 500\r\n\r\n",
            b"GET /getbalance HTTP/1.1\r\nHost: x\r\nX-Unreliable-Outcome: timeout\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ];
        let mut out = Vec::new();
        let mut dispositions = Vec::with_capacity(requests.len());
        for _ in 0..32 {
            answer_all(&app, &requests, &mut out, &mut dispositions);
        }
        let before = allocations_on_this_thread();
        for _ in 0..100 {
            answer_all(&app, &requests, &mut out, &mut dispositions);
        }
        let allocated = allocations_on_this_thread() - before;
        assert_eq!(allocated, 0, "allocations in 700 answered requests");
        assert_eq!(dispositions[5], Disposition::Hang);
        assert_eq!(dispositions[6], Disposition::Close);
        // The counter does count: the JSON error body is still built in a String.
        let before = allocations_on_this_thread();
        answer_all(
            &app,
            &[b"GET /getbalance HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nX-Unreliable-Outcome: 403\r\n\r\n"],
            &mut out,
            &mut dispositions,
        );
        assert!(allocations_on_this_thread() > before);
        assert!(out.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
        assert_eq!(app.log.counts().total, 132 * 6 + 1);
    }

    #[test]
    fn a_failing_log_file_fails_health_while_balance_is_still_answered_and_logged() {
        use crate::chaos::Weights;
        let app = test_app(
            1,
            Weights::parse("200=1").unwrap(),
            RequestLog::new(16, true).unwrap(),
        );
        let balance: &[u8] = b"GET /getbalance HTTP/1.1\r\nHost: x\r\n\r\n";
        let health: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut out = Vec::new();
        let mut dispositions = Vec::new();
        app.log.set_file_failing(true);
        answer_all(&app, &[health], &mut out, &mut dispositions);
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(out.ends_with(LOG_FAILING_BODY));
        // Entries still wait in memory: outcomes are drawn and logged.
        answer_all(&app, &[balance], &mut out, &mut dispositions);
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(app.log.counts().total, 1);
        app.log.set_file_failing(false);
        answer_all(&app, &[health], &mut out, &mut dispositions);
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn a_stalled_log_file_refuses_balance_and_fails_health_until_it_recovers() {
        use crate::chaos::Weights;
        let app = test_app(
            1,
            Weights::parse("200=1").unwrap(),
            RequestLog::new(16, true).unwrap(),
        );
        let balance: &[u8] = b"GET /getbalance HTTP/1.1\r\nHost: x\r\n\r\n";
        let health: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        let head: &[u8] = b"HEAD /getbalance HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut out = Vec::new();
        let mut dispositions = Vec::new();
        let status_line = |out: &[u8]| out.split(|&byte| byte == b'\r').next().unwrap().to_vec();
        app.log.set_file_stalled(true);
        for request in [balance, health, head] {
            answer_all(&app, &[request], &mut out, &mut dispositions);
            assert_eq!(
                status_line(&out),
                b"HTTP/1.1 503 Service Unavailable",
                "{request:?}"
            );
            assert!(out.windows(15).any(|w| w == b"Retry-After: 1\r"));
            assert_eq!(out.ends_with(LOG_STALLED_BODY), request != head);
        }
        assert_eq!(
            app.log.counts().total,
            0,
            "a refused request makes no entry"
        );
        assert_eq!(app.log.set_file_stalled(false), (true, 2));
        for request in [balance, health] {
            answer_all(&app, &[request], &mut out, &mut dispositions);
            assert_eq!(status_line(&out), b"HTTP/1.1 200 OK", "{request:?}");
        }
        assert_eq!(app.log.counts().total, 1);
    }

    #[test]
    fn refusals_escape_control_text_and_non_utf8_request_ids_are_not_logged() {
        use crate::chaos::Weights;
        let app = test_app(
            1,
            Weights::parse("200=1").unwrap(),
            RequestLog::new(16, false).unwrap(),
        );
        let mut out = Vec::new();
        let mut dispositions = Vec::new();
        let escaping: &[u8] =
            b"GET /getlogs?outcome=%1b%5b2J%e2%80%ae%0d%0a HTTP/1.1\r\nHost: x\r\n\r\n";
        answer_all(&app, &[escaping], &mut out, &mut dispositions);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.ends_with(
                "outcome=\\u{1b}[2J\\u{202e}\\u{d}\\u{a}: expected one of timeout, 403, 500, 200\n"
            ),
            "{text}"
        );
        let latin1: &[u8] = b"GET /getbalance HTTP/1.1\r\nHost: x\r\nX-Request-Id: caf\xe9\r\n\r\n";
        answer_all(&app, &[latin1], &mut out, &mut dispositions);
        assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(out.ends_with(b"x-request-id must be UTF-8 text\n"));
        assert_eq!(app.log.counts().total, 0);
    }

    #[test]
    fn decimal_writes_every_digit() {
        let mut buffer = [0u8; 20];
        assert_eq!(decimal(0, &mut buffer), "0");
        assert_eq!(decimal(1234567, &mut buffer), "1234567");
        assert_eq!(decimal(u64::MAX, &mut buffer), "18446744073709551615");
    }

    #[test]
    fn a_long_log_answer_comes_in_pieces_that_add_up() {
        use crate::chaos::Weights;
        let app = test_app(
            3,
            Weights::owner_default(),
            RequestLog::new(5000, false).unwrap(),
        );
        for index in 0..3000 {
            let request_id = format!("piece-{index:0>100}");
            app.log.record(
                &NewEntry {
                    unix_millis: 1_729_727_731_705,
                    client: SocketAddr::from(([127, 0, 0, 1], 40000)),
                    method: "GET",
                    target: "/getbalance",
                    request_id: Some(request_id.as_bytes()),
                    duration_micros: 7,
                    forced: false,
                },
                |k| app.chaos.outcome(k),
            );
        }
        let expected_200 = app.log.counts().by_outcome[Outcome::Balance.index()];
        let date = b"Sun, 06 Nov 1994 08:49:37 GMT";
        let cases: [(&[u8], bool, u64, u64); 2] = [
            (
                b"GET /getlogs?since=100&limit=2500 HTTP/1.1\r\nHost: x\r\n\r\n",
                true,
                2500,
                2600,
            ),
            (
                b"GET /getlogs?outcome=200 HTTP/1.0\r\n\r\n",
                false,
                expected_200,
                3000,
            ),
        ];
        for (request, chunked, returned, next_since) in cases {
            let Ok(http::Parsed::Complete(head)) = http::parse_request(request) else {
                panic!("bad test request");
            };
            let exchange = Exchange {
                request: &head,
                peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
                started: Instant::now(),
                unix_millis: clock::now_unix_millis(),
                date,
            };
            let mut out = Vec::new();
            let mut answered = respond(&app, &exchange, &mut out);
            let mut pieces = 1;
            while let Some(rest) = answered.rest.as_mut() {
                pieces += 1;
                if !rest.next_piece(&app, &mut out) {
                    answered.rest = None;
                }
            }
            assert!(pieces > 3, "{pieces} pieces");
            let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut body = Vec::new();
            if chunked {
                let progress = http::ChunkedDecoder::new(u64::MAX)
                    .decode(&out[head_end..], Some(&mut body))
                    .unwrap();
                assert!(progress.finished);
                assert_eq!(head_end + progress.consumed, out.len());
            } else {
                body.extend_from_slice(&out[head_end..]);
            }
            let logs = crate::json::decode(std::str::from_utf8(&body).unwrap().trim_end()).unwrap();
            let number = |key: &str| logs.get(key).and_then(|value| value.as_u64());
            assert_eq!(number("returned"), Some(returned));
            assert_eq!(number("next_since"), Some(next_since));
            assert_eq!(number("total"), Some(3000));
        }
    }
}
