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
//! - An attempt that failed before its request was written ("not sent") has no server entry by
//!   right. One that failed after (reset, closed) may or may not have one, and either is accepted.
//! - A worker never sits idle through a backoff: a retry goes into the worker's own queue with
//!   its due time (now + backoff), and the worker's loop sends the earliest due retry if one is
//!   due, otherwise claims the next fresh logical request, and sleeps (until the earliest due
//!   retry) only when no fresh request is left ([`next_step`]). So a backoff is a minimum pause:
//!   a retry that falls due while its worker is busy goes out when that attempt ends. Attempts
//!   of different logical requests interleave on a worker, also with `--concurrency 1`.
//!   `--interval` pauses before each fresh request a worker claims (not its first); a retry
//!   waits for its backoff instead.
//! - The text report shows every string from the server through [`visible`] (controls, bidi
//!   and invisible format characters as escapes): the server's log holds whatever its clients
//!   sent, and none of it may reach the terminal raw.
//! - An attempt's latency is its own exchange (connect, write, read); backoffs and the other
//!   requests a worker serves meanwhile are in no latency, only in the run's wall time.

use crate::chaos::{mix64, Outcome, Rng};
use crate::cli::{ClientOptions, ShowLogs};
use crate::http::{self, ChunkedDecoder, Parsed, ResponseFraming};
use crate::json::{self, ArrayWriter, ObjectWriter, Value};
use crate::stats::{self, GoodnessOfFit};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest `/getbalance` response read (head and body); a bigger one counts as malformed.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Interim (1xx) responses skipped before a final one at most (RFC 9110 §15.2 sets no limit; a
/// server sends one or two): an endless stream of `100 Continue` must end the attempt, not
/// fill its time.
pub const MAX_INTERIM_RESPONSES: usize = 16;
/// Largest `/stats` answer or `/getlogs` page read.
pub const MAX_ADMIN_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long `/stats` and each `/getlogs` page may take, connecting included (one deadline).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries asked for per `/getlogs` page.
pub const LOG_PAGE_LIMIT: u64 = 1000;
/// Most `/getlogs` pages fetched (ten million entries), a backstop: paging already ends once the
/// entries pass the run's bound (see [`fetch_run_entries`]).
pub const MAX_LOG_PAGES: u64 = 10_000;
/// Text (time, client address, outcome, request id) kept per log entry the run may have (one per
/// attempt and [`EXTRA_RUN_ENTRIES`]), summed over the entries. An entry of the run holds about
/// 100 bytes (an id of at most 40, a 24-byte time, an address of at most 45) and the server
/// refuses ids over 200 bytes, so a server past this sends something else than this run's log.
pub const MAX_LOG_TEXT_PER_ENTRY: usize = 512;
/// Entries for the run beyond one per attempt that are still fetched, so the report can list
/// them (ids the client never sent, entries logged twice) instead of stopping at the first; past
/// this many the server's log is not worth reading and the fetch fails.
pub const EXTRA_RUN_ENTRIES: u64 = 1000;
/// A keep-alive connection idle longer than this is replaced before the next attempt: the server
/// closes idle connections after 5 s, and a request written into one it is closing is lost.
pub const MAX_IDLE_REUSE: Duration = Duration::from_secs(2);
/// Attempts in a row without an answer (connect failures and timeouts, across all workers, in
/// the order they end; see [`NoAnswerStreak`]) after which the run stops early, at the least.
/// A server that is gone (killed, firewalled) fails every connect, and without a stop the
/// client would try on for count × attempts × --timeout (20 minutes with the defaults) to
/// print a report of failures. A handful in a row can be a blip (SYNs lost, a listen queue
/// full for a moment), so a lone worker stops only after this many.
pub const MIN_UNREACHABLE_STREAK: u64 = 10;
/// Attempts without an answer in a row per worker after which the run stops early (when more
/// than [`MIN_UNREACHABLE_STREAK`]): every worker may be connecting when a blip hits, so one
/// failure each proves nothing, while three rounds of every worker failing do. Connect
/// timeouts run in parallel, so that is about three --timeouts of wall time.
pub const UNREACHABLE_STREAK_PER_WORKER: u64 = 3;
/// How long `/stats` after a run that stopped early is tried, retries included (or the attempt
/// timeout when longer): long enough for a server being restarted to listen again, short
/// enough not to wait on one already known to be gone.
pub const STATS_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// The pause between two tries of `/stats` within [`STATS_RETRY_WINDOW`].
const STATS_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often a waiting worker (backoff, --interval) looks whether the run has stopped: a
/// backoff may be long, and a stopped run must not wait it out.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How much less the server's uptime may have grown between the two `/stats` reads than the
/// client's clock says passed, before the client calls it a restart: the two clocks are on
/// different machines and may run a little apart, and the server's may pause (a suspended VM).
pub const UPTIME_SLACK: Duration = Duration::from_secs(1);
/// Width in characters of the bars in the distribution tables, besides the marker.
pub const BAR_WIDTH: usize = 40;
/// Request ids the text report lists per reconciliation problem (the JSON lists all of them).
pub const MAX_LISTED_IDS: usize = 10;
/// How often the progress line is redrawn.
pub const PROGRESS_PERIOD: Duration = Duration::from_millis(200);
/// Two-sided confidence of every interval in the report.
pub const CONFIDENCE: f64 = 0.95;
/// A p-value below this is reported as unlikely under the configured weights.
pub const SIGNIFICANCE: f64 = 0.05;
/// Hex digits in a run id.
pub const RUN_ID_DIGITS: usize = 8;
/// Bytes asked for per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// How far past its deadline a read may block. It spares a `setsockopt` per attempt: the first
/// read keeps the full timeout the socket already has when the time left is within this of it,
/// as it is unless the thread was held up between starting the clock and reading.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(1);
/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("unreliable-client/", env!("CARGO_PKG_VERSION"));
/// Characters that the text report shows as escapes when they come from the server, besides
/// the controls (C0, DEL, C1): each can move the cursor, reorder or hide what follows, or
/// make a line look like another. Unicode's format characters (General_Category Cf), the line
/// and paragraph separators (Zl, Zp) and the Default_Ignorable_Code_Point ones (fillers,
/// variation selectors, tags), as of Unicode 15, in code point order.
const INVISIBLE_CHARACTERS: &[(char, char)] = &[
    ('\u{ad}', '\u{ad}'),       // soft hyphen
    ('\u{34f}', '\u{34f}'),     // combining grapheme joiner
    ('\u{600}', '\u{605}'),     // Arabic number signs
    ('\u{61c}', '\u{61c}'),     // Arabic letter mark (bidi)
    ('\u{6dd}', '\u{6dd}'),     // Arabic end of ayah
    ('\u{70f}', '\u{70f}'),     // Syriac abbreviation mark
    ('\u{890}', '\u{891}'),     // Arabic pound and piastre marks above
    ('\u{8e2}', '\u{8e2}'),     // Arabic disputed end of ayah
    ('\u{115f}', '\u{1160}'),   // Hangul fillers
    ('\u{17b4}', '\u{17b5}'),   // Khmer inherent vowels
    ('\u{180b}', '\u{180f}'),   // Mongolian variation selectors, vowel separator
    ('\u{200b}', '\u{200f}'),   // zero width space, (non-)joiner, LRM, RLM
    ('\u{2028}', '\u{202e}'),   // line and paragraph separators, bidi embeddings, overrides
    ('\u{2060}', '\u{206f}'),   // word joiner, invisible operators, bidi isolates
    ('\u{3164}', '\u{3164}'),   // Hangul filler
    ('\u{fe00}', '\u{fe0f}'),   // variation selectors
    ('\u{feff}', '\u{feff}'),   // zero width no-break space (byte order mark)
    ('\u{ffa0}', '\u{ffa0}'),   // halfwidth Hangul filler
    ('\u{fff0}', '\u{fffb}'),   // reserved ignorables, interlinear annotation
    ('\u{110bd}', '\u{110bd}'), // Kaithi number sign
    ('\u{110cd}', '\u{110cd}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343f}'), // Egyptian hieroglyph format controls
    ('\u{1bca0}', '\u{1bca3}'), // shorthand format controls
    ('\u{1d173}', '\u{1d17a}'), // musical symbol format controls
    ('\u{e0000}', '\u{e0fff}'), // tags, variation selectors supplement
];

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

// ---------------------------------------------------------------------------------------------
// Classification

/// A failure below HTTP: the attempt got no usable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Connecting was refused (request not sent).
    ConnectionRefused,
    /// Connecting took longer than the attempt timeout (request not sent).
    ConnectTimeout,
    /// No route to the server's host (`EHOSTUNREACH`: a firewall's reject, a host that does
    /// not answer ARP); the request was not sent.
    HostUnreachable,
    /// No route to the server's network (`ENETUNREACH`: a route or interface gone).
    NetworkUnreachable,
    /// No local address to connect from (`EADDRNOTAVAIL`: an address removed, or no local
    /// ports left).
    AddressNotAvailable,
    /// The peer reset the connection.
    ConnectionReset,
    /// The connection closed before any byte of a response.
    ClosedBeforeResponse,
    /// The connection closed in the middle of a response.
    ClosedMidResponse,
    /// The bytes were not a valid HTTP response; the detail says why.
    Malformed(String),
    /// Any other I/O error, described.
    Io(String),
}

impl TransportError {
    /// The category name used in counts, tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            TransportError::ConnectionRefused => "connection refused",
            TransportError::ConnectTimeout => "connect timeout",
            TransportError::HostUnreachable => "no route to host",
            TransportError::NetworkUnreachable => "network unreachable",
            TransportError::AddressNotAvailable => "address not available",
            TransportError::ConnectionReset => "connection reset",
            TransportError::ClosedBeforeResponse => "closed before a response",
            TransportError::ClosedMidResponse => "closed mid-response",
            TransportError::Malformed(_) => "malformed response",
            TransportError::Io(_) => "I/O error",
        }
    }
    /// Whether connecting failed, so the request was never sent: what a server that is gone or
    /// cut off gives, as opposed to one that answered badly.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            TransportError::ConnectionRefused
                | TransportError::ConnectTimeout
                | TransportError::HostUnreachable
                | TransportError::NetworkUnreachable
                | TransportError::AddressNotAvailable
        )
    }
    /// The variable part, if any (what was malformed, which I/O error).
    pub fn detail(&self) -> Option<&str> {
        match self {
            TransportError::Malformed(detail) | TransportError::Io(detail) => Some(detail),
            _ => None,
        }
    }
}

/// What one attempt observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// One of the server's outcomes: a 403, 500 or 200 answer, or no answer within the timeout.
    Server(Outcome),
    /// A complete response with a status the server is not supposed to send.
    OtherStatus(u16),
    Transport(TransportError),
}

impl AttemptOutcome {
    /// The category name: `timeout`, `403`, `500`, `200`, `status 404`, `connection refused` …
    pub fn category(&self) -> String {
        match self {
            AttemptOutcome::Server(outcome) => outcome.name().to_string(),
            AttemptOutcome::OtherStatus(status) => format!("status {status}"),
            AttemptOutcome::Transport(error) => error.name().to_string(),
        }
    }
}

/// Maps the status of a complete response to an outcome.
pub fn classify_status(status: u16) -> AttemptOutcome {
    match Outcome::ALL
        .iter()
        .find(|outcome| outcome.status() == Some(status))
    {
        Some(outcome) => AttemptOutcome::Server(*outcome),
        None => AttemptOutcome::OtherStatus(status),
    }
}

/// Whether an attempt with this outcome is tried again (budget permitting). A transport error
/// got no answer at all, so it is retried like a timeout whenever retries are on; an empty
/// `retry_on` (`--retry-on none`) means no retries of any kind, as documented.
pub fn is_retried(outcome: &AttemptOutcome, retry_on: &[Outcome]) -> bool {
    match outcome {
        AttemptOutcome::Server(outcome) => retry_on.contains(outcome),
        AttemptOutcome::OtherStatus(_) => false,
        AttemptOutcome::Transport(_) => !retry_on.is_empty(),
    }
}

/// The pause before attempt `attempt + 1`: uniform in `[0, min(max_backoff, backoff * 2^(attempt-1))]`
/// ("full jitter"), where `uniform` is a draw in `[0, 1)`.
pub fn backoff_delay(
    attempt: u32,
    backoff: Duration,
    max_backoff: Duration,
    uniform: f64,
) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let ceiling = (backoff.as_secs_f64() * 2f64.powi(exponent)).min(max_backoff.as_secs_f64());
    let fraction = if uniform.is_finite() {
        uniform.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let seconds = ceiling * fraction;
    if seconds.is_finite() && seconds > 0.0 {
        Duration::from_secs_f64(seconds)
    } else {
        Duration::ZERO
    }
}

/// `<run>-<request>-<attempt>`, the value of `X-Request-Id`.
pub fn request_id(run_id: &str, request: u64, attempt: u32) -> String {
    RequestId {
        run_id,
        request,
        attempt,
    }
    .to_string()
}

/// An `X-Request-Id` that is written where it is needed rather than allocated per attempt.
#[derive(Debug, Clone, Copy)]
struct RequestId<'a> {
    run_id: &'a str,
    request: u64,
    attempt: u32,
}

impl std::fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.run_id, self.request, self.attempt)
    }
}

/// A fresh run id of [`RUN_ID_DIGITS`] hex digits from the clock and the process id.
pub fn fresh_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = mix64(nanos ^ mix64(u64::from(std::process::id())));
    format_run_id(mixed)
}

fn format_run_id(mixed: u64) -> String {
    let digits = format!("{mixed:016x}");
    digits[..RUN_ID_DIGITS].to_string()
}

/// The `Host` header value: IPv6 literals in brackets, without a zone id.
pub fn host_header(host: &str, port: u16) -> String {
    let bare = strip_brackets(host);
    // A zone id (`fe80::1%eth0`) names an interface of this machine, so it means nothing to
    // the server, and a raw '%' is not allowed in a URI host (RFC 3986): a strict server
    // answers 400. The socket address keeps it (see `resolve`), which is where it matters.
    let bare = bare
        .split_once('%')
        .map_or(bare, |(address, _zone)| address);
    if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    }
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

/// Replaces `out` with the bytes of one `/getbalance` attempt; a worker reuses one `out`, so
/// an attempt allocates nothing for its request.
fn write_getbalance_request(
    out: &mut String,
    host_header: &str,
    request_id: impl std::fmt::Display,
) {
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "GET /getbalance HTTP/1.1\r\nHost: {host_header}\r\nX-Request-Id: {request_id}\r\n\
         Accept: text/html\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading a response

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub status: u16,
    /// The server allows another request on this connection.
    pub keep_alive: bool,
    /// The decoded body (empty unless the assembler keeps bodies).
    pub body: Vec<u8>,
    /// Bytes arrived after the response: the connection is out of step and must not be reused.
    pub trailing_bytes: bool,
    /// The `Server` header names unreliable: reports are only trusted from the real thing.
    pub from_unreliable: bool,
}

/// Why bytes did not make a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssemblyError {
    Malformed(String),
    TooLarge,
    ClosedBeforeResponse,
    ClosedMidResponse,
}

impl AssemblyError {
    fn into_transport(self, max_bytes: usize) -> TransportError {
        match self {
            AssemblyError::Malformed(detail) => TransportError::Malformed(detail),
            AssemblyError::TooLarge => {
                TransportError::Malformed(format!("response larger than {max_bytes} bytes"))
            }
            AssemblyError::ClosedBeforeResponse => TransportError::ClosedBeforeResponse,
            AssemblyError::ClosedMidResponse => TransportError::ClosedMidResponse,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct HeadSummary {
    status: u16,
    keep_alive: bool,
    framing: ResponseFraming,
    from_unreliable: bool,
}

/// Collects the bytes of one response as they arrive; pure, so it is tested without sockets.
#[derive(Debug)]
pub struct ResponseAssembler {
    max_bytes: usize,
    keep_body: bool,
    received: usize,
    /// The head until it parses; afterwards the body bytes not yet consumed.
    pending: Vec<u8>,
    /// Interim (1xx) responses skipped so far.
    interim: usize,
    head: Option<HeadSummary>,
    body: Vec<u8>,
    length_left: u64,
    decoder: Option<ChunkedDecoder>,
}

impl ResponseAssembler {
    /// `max_bytes`: the most bytes (head and body as sent) accepted.
    pub fn new(max_bytes: usize, keep_body: bool) -> ResponseAssembler {
        ResponseAssembler {
            max_bytes,
            keep_body,
            received: 0,
            pending: Vec::new(),
            interim: 0,
            head: None,
            body: Vec::new(),
            length_left: 0,
            decoder: None,
        }
    }

    /// Ready for the next response, keeping the buffers' capacity: a worker reuses one
    /// assembler, so an attempt does not allocate one.
    pub fn reset(&mut self) {
        self.received = 0;
        self.pending.clear();
        self.interim = 0;
        self.head = None;
        self.body.clear();
        self.length_left = 0;
        self.decoder = None;
    }

    /// Feeds newly read bytes; `Ok(Some)` once the final response is complete. Interim (1xx)
    /// responses before it are skipped, as RFC 9110 §15.2 asks of a client, up to
    /// [`MAX_INTERIM_RESPONSES`]; their bytes count towards the size limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Assembled>, AssemblyError> {
        self.received = self.received.saturating_add(bytes.len());
        if self.received > self.max_bytes {
            return Err(AssemblyError::TooLarge);
        }
        self.pending.extend_from_slice(bytes);
        while self.head.is_none() {
            let summary = match http::parse_response(&self.pending, false) {
                Err(error) => return Err(AssemblyError::Malformed(error.to_string())),
                Ok(Parsed::Partial) => return Ok(None),
                Ok(Parsed::Complete(head)) => (
                    HeadSummary {
                        status: head.status,
                        keep_alive: head.keep_alive,
                        framing: head.body,
                        from_unreliable: head
                            .header("server")
                            .is_some_and(|name| name.starts_with(b"unreliable/")),
                    },
                    head.head_length,
                ),
            };
            let (head, head_length) = summary;
            self.pending.drain(..head_length.min(self.pending.len()));
            if head.status == 101 {
                return Err(AssemblyError::Malformed(
                    "101 Switching Protocols, though no upgrade was asked for".into(),
                ));
            }
            if (100..200).contains(&head.status) {
                self.interim += 1;
                if self.interim > MAX_INTERIM_RESPONSES {
                    return Err(AssemblyError::Malformed(format!(
                        "more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
                    )));
                }
                continue;
            }
            match head.framing {
                ResponseFraming::Length(length) => self.length_left = length,
                ResponseFraming::Chunked => {
                    self.decoder = Some(ChunkedDecoder::new(self.max_bytes as u64))
                }
                ResponseFraming::None | ResponseFraming::UntilClose => {}
            }
            self.head = Some(head);
        }
        self.advance_body()
    }

    /// The peer closed the connection: completes a read-until-close body, fails anything else.
    pub fn finish_at_close(&mut self) -> Result<Assembled, AssemblyError> {
        match self.head {
            None if self.received == 0 => Err(AssemblyError::ClosedBeforeResponse),
            None => Err(AssemblyError::ClosedMidResponse),
            Some(head) if head.framing == ResponseFraming::UntilClose => {
                if self.keep_body {
                    self.body.append(&mut self.pending);
                }
                Ok(self.complete(head, false))
            }
            Some(_) => Err(AssemblyError::ClosedMidResponse),
        }
    }

    fn advance_body(&mut self) -> Result<Option<Assembled>, AssemblyError> {
        let Some(head) = self.head else {
            return Ok(None);
        };
        match head.framing {
            ResponseFraming::None => Ok(Some(self.complete(head, head.keep_alive))),
            ResponseFraming::Length(_) => {
                let available = self.pending.len() as u64;
                let taken = available.min(self.length_left) as usize;
                if self.keep_body {
                    self.body.extend_from_slice(&self.pending[..taken]);
                }
                self.pending.drain(..taken);
                self.length_left -= taken as u64;
                if self.length_left == 0 {
                    Ok(Some(self.complete(head, head.keep_alive)))
                } else {
                    Ok(None)
                }
            }
            ResponseFraming::Chunked => {
                let Some(decoder) = self.decoder.as_mut() else {
                    return Err(AssemblyError::Malformed("chunked decoder missing".into()));
                };
                let data = if self.keep_body {
                    Some(&mut self.body)
                } else {
                    None
                };
                let progress = decoder
                    .decode(&self.pending, data)
                    .map_err(|error| AssemblyError::Malformed(format!("chunked body: {error}")))?;
                self.pending
                    .drain(..progress.consumed.min(self.pending.len()));
                if progress.finished {
                    Ok(Some(self.complete(head, head.keep_alive)))
                } else {
                    Ok(None)
                }
            }
            ResponseFraming::UntilClose => {
                if self.keep_body {
                    self.body.append(&mut self.pending);
                } else {
                    self.pending.clear();
                }
                Ok(None)
            }
        }
    }

    fn complete(&mut self, head: HeadSummary, keep_alive: bool) -> Assembled {
        Assembled {
            status: head.status,
            keep_alive,
            body: std::mem::take(&mut self.body),
            trailing_bytes: !self.pending.is_empty(),
            from_unreliable: head.from_unreliable,
        }
    }
}

/// Why receiving a response failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReceiveFailure {
    Timeout,
    Transport(TransportError),
}

fn is_timeout(error: &io::Error) -> bool {
    // Platforms disagree on which kind an expired socket timeout reports.
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn io_failure(error: &io::Error) -> TransportError {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => TransportError::ConnectionRefused,
        io::ErrorKind::HostUnreachable => TransportError::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => TransportError::NetworkUnreachable,
        io::ErrorKind::AddrNotAvailable => TransportError::AddressNotAvailable,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => TransportError::ConnectionReset,
        _ => TransportError::Io(describe_io_error(error)),
    }
}

/// A short lowercase description of an I/O error.
fn describe_io_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::HostUnreachable => "no route to host".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => error.to_string(),
    }
}

/// The read timeout to give the socket before a read with `remaining` left of an attempt's
/// `timeout`, or `None` when its `current` one is right already. Within
/// [`READ_TIMEOUT_SLACK`] of the start that is the whole timeout, so the common attempt (one
/// read on a kept connection) makes no `setsockopt` call at all; a later read of the same
/// attempt gets exactly what is left, so a slow response never overruns the deadline.
fn read_timeout_change(
    current: Option<Duration>,
    remaining: Duration,
    timeout: Duration,
) -> Option<Duration> {
    let wanted = if timeout.saturating_sub(remaining) <= READ_TIMEOUT_SLACK {
        timeout
    } else {
        remaining
    };
    (current != Some(wanted) && !wanted.is_zero()).then_some(wanted)
}

/// Reads until the assembler has a complete response or `timeout` has passed since the call.
/// `chunk` is the read buffer (a worker reuses one); `read_timeout` is the socket's current
/// read timeout, changed only when it must be.
fn receive(
    stream: &mut TcpStream,
    assembler: &mut ResponseAssembler,
    timeout: Duration,
    chunk: &mut [u8],
    read_timeout: &mut Option<Duration>,
) -> Result<Assembled, ReceiveFailure> {
    let deadline = Instant::now() + timeout;
    let limit = assembler.max_bytes;
    let failure = |error: AssemblyError| ReceiveFailure::Transport(error.into_transport(limit));
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReceiveFailure::Timeout);
        }
        if let Some(wanted) = read_timeout_change(*read_timeout, remaining, timeout) {
            if let Err(error) = stream.set_read_timeout(Some(wanted)) {
                return Err(ReceiveFailure::Transport(io_failure(&error)));
            }
            *read_timeout = Some(wanted);
        }
        match stream.read(chunk) {
            Ok(0) => return assembler.finish_at_close().map_err(failure),
            Ok(read) => {
                let result = assembler.push(&chunk[..read]);
                match result {
                    Ok(Some(response)) => return Ok(response),
                    Ok(None) => {}
                    Err(error) => return Err(failure(error)),
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // Only the deadline decides: a socket timeout set for an earlier read may be
            // shorter than what is left, and the loop then sets the right one.
            Err(error) if is_timeout(&error) && Instant::now() < deadline => {}
            Err(error) if is_timeout(&error) => return Err(ReceiveFailure::Timeout),
            Err(error) => return Err(ReceiveFailure::Transport(io_failure(&error))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending

/// Where the server is.
#[derive(Debug, Clone)]
struct Target {
    address: SocketAddr,
    host_header: String,
}

struct Connection {
    stream: TcpStream,
    last_used: Instant,
    /// The socket's read timeout as last set, so it is set again only when it changes.
    read_timeout: Option<Duration>,
}

impl Connection {
    /// Takes over a connected stream; its write timeout is set here, once, since every
    /// attempt on it has the same one.
    fn new(stream: TcpStream, timeout: Duration) -> io::Result<Connection> {
        stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        Ok(Connection {
            stream,
            last_used: Instant::now(),
            read_timeout: None,
        })
    }
}

/// What one worker reuses from attempt to attempt, so that an attempt on a kept connection
/// allocates nothing: the request text, the read buffer and the response assembler.
struct Scratch {
    request: String,
    chunk: Vec<u8>,
    assembler: ResponseAssembler,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            request: String::new(),
            chunk: vec![0; READ_CHUNK],
            assembler: ResponseAssembler::new(MAX_RESPONSE_BYTES, false),
        }
    }
}

/// Whether a connection last used at `last_used` may carry another request at `now`.
fn is_fresh(last_used: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last_used) <= MAX_IDLE_REUSE
}

fn connect(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, timeout.max(Duration::from_millis(1)))?;
    // Small requests, answered one at a time: Nagle's delay would only add latency.
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ClientError> {
    let bare = strip_brackets(host);
    let addresses: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|error| ClientError::Resolve {
            host: host.to_string(),
            reason: error.to_string(),
        })?
        .collect();
    if addresses.is_empty() {
        return Err(ClientError::Resolve {
            host: host.to_string(),
            reason: "no addresses".into(),
        });
    }
    Ok(addresses)
}

/// Connects to the first address that answers; the connection is kept for the first worker.
fn reach(host: &str, port: u16, timeout: Duration) -> Result<(Target, TcpStream), ClientError> {
    let addresses = resolve(host, port)?;
    let mut last_error = None;
    for address in &addresses {
        match connect(*address, timeout) {
            Ok(stream) => {
                let target = Target {
                    address: *address,
                    host_header: host_header(host, port),
                };
                return Ok((target, stream));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(ClientError::Unreachable {
        address: addresses[0].to_string(),
        reason: last_error
            .as_ref()
            .map(describe_io_error)
            .unwrap_or_else(|| "no address answered".into()),
        hint: last_error
            .as_ref()
            .and_then(|error| unreachable_hint(error, &addresses[0])),
    })
}

/// A test statistic for people: three decimals, or a mantissa and an exponent once it is
/// large (a weight of 1e-300 observed makes it about 1e300, which `{:.3}` spells in full).
fn statistic_text(statistic: f64) -> String {
    if statistic.abs() < 1e9 {
        format!("{statistic:.3}")
    } else {
        format!("{statistic:.3e}")
    }
}

/// What to check when connecting to `address` failed with `error`, for the errors that point
/// somewhere: the first thing a tester meets is a server listening on loopback only.
fn unreachable_hint(error: &io::Error, address: &SocketAddr) -> Option<&'static str> {
    // The wildcard to suggest is the one of the address family tried: `0.0.0.0` listens on
    // IPv4 only, so it would not help a client connecting over IPv6.
    match (error.kind(), address) {
        (io::ErrorKind::ConnectionRefused, SocketAddr::V4(_)) => {
            return Some(
                "is a server running on that port, and listening on this address? \
                 (a server on another machine needs 'serve --host 0.0.0.0')",
            )
        }
        (io::ErrorKind::ConnectionRefused, SocketAddr::V6(_)) => {
            return Some(
                "is a server running on that port, and listening on this address? \
                 (a server on another machine needs 'serve --host ::')",
            )
        }
        (io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable, _) => {
            return Some(
                "no route to the server: a wrong address, a network or interface down, or a \
                 firewall rejecting the connection?",
            )
        }
        _ => {}
    }
    if is_timeout(error) {
        // A server that is stopped or hung still gets its handshakes done by the kernel until
        // its accept queue is full; then connecting times out exactly as for a lost packet.
        return Some(
            "no answer: a wrong address, a firewall dropping packets, or a server that is hung \
             (its accept queue full)?",
        );
    }
    match address {
        // fe80::/10 without a zone id: the system cannot know which interface to use.
        SocketAddr::V6(v6) if v6.ip().segments()[0] & 0xffc0 == 0xfe80 && v6.scope_id() == 0 => {
            Some("a link-local address needs its interface, as in fe80::1%eth0")
        }
        _ => None,
    }
}

/// One classified attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The logical request, 1..=count.
    pub request: u64,
    /// 1 for the first try.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// The request was written completely (so the server may have logged it).
    pub sent: bool,
    /// From the start of the attempt (connecting included) to its classification.
    pub latency: Duration,
}

/// Counters the progress line reads while workers run.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    attempts: AtomicU64,
    by_outcome: [AtomicU64; Outcome::COUNT],
    other: AtomicU64,
    finished: AtomicBool,
}

impl Progress {
    fn record(&self, outcome: &AttemptOutcome) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        match outcome {
            AttemptOutcome::Server(outcome) => {
                self.by_outcome[outcome.index()].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn line(&self, total: u64, elapsed: Duration) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let attempts = self.attempts.load(Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            attempts as f64 / seconds
        } else {
            0.0
        };
        let mut line = format!("{done}/{total} requests  {rate:.0} attempts/s ");
        for outcome in Outcome::ALL {
            let count = self.by_outcome[outcome.index()].load(Ordering::Relaxed);
            let _ = write!(line, " {} {count}", outcome.name());
        }
        let _ = write!(line, "  other {}", self.other.load(Ordering::Relaxed));
        if done > 0 && done < total {
            let left = seconds * (total - done) as f64 / done as f64;
            let _ = write!(line, "  ETA {left:.0}s");
        }
        line
    }
}

/// Connect failures in a row that stop a run with `workers` workers: the larger of
/// [`MIN_UNREACHABLE_STREAK`] and [`UNREACHABLE_STREAK_PER_WORKER`] per worker.
pub fn unreachable_streak(workers: usize) -> u64 {
    let per_workers = UNREACHABLE_STREAK_PER_WORKER.saturating_mul(workers as u64);
    per_workers.max(MIN_UNREACHABLE_STREAK)
}

/// The least time a streak of attempts without an answer must span before it stops the run
/// (or, for timeouts, starts a `/health` probe), or the attempt timeout when that is longer.
/// A refused connect takes microseconds, so a count alone is reached within a millisecond of a
/// restart's first refusal: a server restarted with a gap of a tenth of a second would be
/// called unreachable and the rest of the run thrown away.
pub const MIN_STREAK_SPAN: Duration = Duration::from_secs(1);
/// How long a worker whose connect failed waits before its next attempt: a refusing server
/// answers in microseconds, and without a pause a worker would burn through thousands of
/// requests during a restart's gap (or the [`MIN_STREAK_SPAN`] before an early stop).
pub const CONNECT_FAILURE_PAUSE: Duration = Duration::from_millis(100);
/// The least time `GET /health` is given when a streak holds timeouts, connecting included
/// (or the attempt timeout, when longer): the kernel resends a dropped SYN after 1 s and again
/// 2 s later, so 3 s see a connect through a listen queue that was full for a moment (1 s,
/// the earlier window, gave up just before the first resend).
pub const HEALTH_PROBE_WINDOW: Duration = Duration::from_secs(3);

/// Why the workers stopped before sending every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCause {
    /// Attempts in a row without an answer when the run stopped (at least the bound).
    pub failures_in_a_row: u64,
    /// The last of them: `connection refused`, `connect timeout`, `no route to host`, …, or
    /// `timeout`.
    pub failure: &'static str,
    /// `None` when every one of them failed to connect (the server is unreachable). When
    /// some timed out instead (a frozen server whose kernel still accepts connections), why
    /// `GET /health` did not answer either: the server stopped answering.
    pub health_failure: Option<String>,
}

/// Attempts in a row, across all workers in the order they ended, that got no answer at all:
/// connect failures and timeouts. Anything the server answered (any status, even a reset or a
/// malformed answer) ends the streak. Pure, so its rules are tested without sockets.
#[derive(Debug)]
struct NoAnswerStreak {
    /// [`unreachable_streak`] of the run.
    bound: u64,
    /// [`MIN_STREAK_SPAN`], or the attempt timeout when longer.
    min_span: Duration,
    count: u64,
    /// When the streak's first attempt ended.
    since: Option<Instant>,
    /// Whether a timeout is among them; else every one failed to connect.
    timed_out: bool,
    /// A worker is asking `/health`; the others do not ask too.
    probing: bool,
    /// How many streaks ended with an answer: one that ends during a probe shows the server
    /// answering again, whatever the probe met.
    ended: u64,
}

/// What the worker that noted an attempt does about the streak.
#[derive(Debug, PartialEq, Eq)]
enum StreakStep {
    Continue,
    /// Ask `GET /health`: the streak holds timeouts, which a healthy server with a high
    /// timeout weight gives too, so only a `/health` that does not answer either stops the run.
    Probe,
    /// Every attempt of the streak failed to connect: the server is unreachable.
    Stop(StopCause),
}

impl NoAnswerStreak {
    fn new(workers: usize, timeout: Duration) -> NoAnswerStreak {
        NoAnswerStreak {
            bound: unreachable_streak(workers),
            min_span: MIN_STREAK_SPAN.max(timeout),
            count: 0,
            since: None,
            timed_out: false,
            probing: false,
            ended: 0,
        }
    }

    /// Notes an attempt that ended at `now`: `no_answer` names the failure when it got no
    /// answer (see [`no_answer_name`]).
    fn note(&mut self, no_answer: Option<&'static str>, now: Instant) -> StreakStep {
        let Some(failure) = no_answer else {
            self.restart();
            return StreakStep::Continue;
        };
        self.count += 1;
        let since = *self.since.get_or_insert(now);
        self.timed_out |= failure == Outcome::Timeout.name();
        if self.count < self.bound || now.saturating_duration_since(since) < self.min_span {
            return StreakStep::Continue;
        }
        if !self.timed_out {
            return StreakStep::Stop(StopCause {
                failures_in_a_row: self.count,
                failure,
                health_failure: None,
            });
        }
        if self.probing {
            return StreakStep::Continue;
        }
        self.probing = true;
        StreakStep::Probe
    }

    /// `/health` answered: the server is alive, whatever its attempts time out with.
    /// What a finished `/health` probe, started after `ended_before` streaks had ended, means
    /// for the run: `None` to go on, or why it stops.
    fn probe_finished(
        &mut self,
        health: Result<(), String>,
        ended_before: u64,
        failure: &'static str,
    ) -> Option<StopCause> {
        match health {
            // Other attempts were answered meanwhile (a server frozen for a moment, a probe
            // lost in a full accept queue): the server is back, whatever the probe met.
            Err(_) if self.ended != ended_before => {}
            Err(reason) => {
                return Some(StopCause {
                    failures_in_a_row: self.count,
                    failure,
                    health_failure: Some(reason),
                })
            }
            Ok(()) => {}
        }
        self.probing = false;
        self.restart();
        None
    }

    fn restart(&mut self) {
        self.ended += 1;
        self.count = 0;
        self.since = None;
        self.timed_out = false;
    }
}

/// The failure's name when an attempt got no answer at all (a timeout, or a connect failure),
/// `None` when something answered.
fn no_answer_name(outcome: &AttemptOutcome) -> Option<&'static str> {
    match outcome {
        AttemptOutcome::Server(Outcome::Timeout) => Some(Outcome::Timeout.name()),
        AttemptOutcome::Transport(error) if error.is_connect_failure() => Some(error.name()),
        _ => None,
    }
}

/// Whether anything answers `GET /health` within `timeout`, connecting included: any complete
/// response will do (a `503` while the server's log file is stuck is an answer too). Why not,
/// otherwise.
fn probe_health(target: &Target, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    // While the listen queue is full the kernel drops the SYN and resends it after 1 s, then
    // 2 s later: one connect given the whole window (3 s at least) sees those resends.
    let mut stream = connect(target.address, timeout).map_err(|e| describe_io_error(&e))?;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n",
        target.host_header
    );
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| describe_io_error(&e))?;
    let mut assembler = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
    let mut chunk = vec![0; READ_CHUNK];
    let left = deadline.saturating_duration_since(Instant::now());
    match receive(&mut stream, &mut assembler, left, &mut chunk, &mut None) {
        Ok(_) => Ok(()),
        Err(ReceiveFailure::Timeout) => {
            Err(format!("no answer within {}", format_duration(timeout)))
        }
        Err(ReceiveFailure::Transport(error)) => Err(error.name().to_string()),
    }
}

/// What the workers share.
struct RunContext<'a> {
    options: &'a ClientOptions,
    target: &'a Target,
    run_id: &'a str,
    seed: u64,
    next_request: AtomicU64,
    progress: Progress,
    first_connection: Mutex<Option<TcpStream>>,
    streak: Mutex<NoAnswerStreak>,
    /// Set once, when the server is found unreachable or not answering; workers then take no
    /// more work.
    stopped: OnceLock<StopCause>,
}

impl RunContext<'_> {
    /// Counts an attempt towards the streak of attempts without an answer, or ends the
    /// streak; stops the run when the streak says so, after asking `/health` in this worker
    /// when the streak holds timeouts.
    fn note_outcome(&self, outcome: &AttemptOutcome) {
        let no_answer = no_answer_name(outcome);
        let (step, ended_before) = match self.streak.lock() {
            Ok(mut streak) => (streak.note(no_answer, Instant::now()), streak.ended),
            // A worker never panics holding it; should one, the run just goes on unguarded.
            Err(_) => return,
        };
        let cause = match step {
            StreakStep::Continue => return,
            StreakStep::Stop(cause) => cause,
            StreakStep::Probe => {
                // At least the streak's span: a probe that gives up on a loaded but healthy
                // server would stop a good run, while a frozen one costs this once.
                let timeout = self.options.timeout.max(HEALTH_PROBE_WINDOW);
                let health = probe_health(self.target, timeout);
                let Ok(mut streak) = self.streak.lock() else {
                    return;
                };
                match streak.probe_finished(health, ended_before, no_answer.unwrap_or("")) {
                    Some(cause) => cause,
                    None => return,
                }
            }
        };
        // Only the first cause is kept: the stop is for good, whatever ends after it.
        let _ = self.stopped.set(cause);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.get().is_some()
    }

    /// Sleeps for `duration`, or less once the run has stopped.
    fn pause(&self, duration: Duration) {
        let started = Instant::now();
        while !self.is_stopped() {
            let left = duration.saturating_sub(started.elapsed());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(STOP_POLL));
        }
    }
}

/// What sending produced.
#[derive(Debug)]
struct Sent {
    /// Every attempt, sorted by request id.
    attempts: Vec<AttemptRecord>,
    /// Set when the workers stopped early because the server could no longer be reached.
    stopped: Option<StopCause>,
    /// The logical requests whose pending retry was given up when the run stopped.
    retries_dropped: Vec<u64>,
}

/// Sends every logical request with its retries, until the server can no longer be reached
/// (see [`unreachable_streak`]). `first_connection` is an open connection for the first
/// worker, if there is one.
fn send_all(
    options: &ClientOptions,
    target: &Target,
    run_id: &str,
    first_connection: Option<TcpStream>,
) -> Sent {
    let workers = options
        .concurrency
        .max(1)
        .min(usize::try_from(options.count.max(1)).unwrap_or(usize::MAX));
    let context = RunContext {
        options,
        target,
        run_id,
        seed: mix64(u64::from_str_radix(run_id, 16).unwrap_or(0)),
        next_request: AtomicU64::new(0),
        progress: Progress::default(),
        first_connection: Mutex::new(first_connection),
        streak: Mutex::new(NoAnswerStreak::new(workers, options.timeout)),
        stopped: OnceLock::new(),
    };
    let show_progress = !options.quiet && io::stderr().is_terminal();
    let started = Instant::now();
    let (mut records, retries_dropped) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let context = &context;
                scope.spawn(move || run_worker(context, worker))
            })
            .collect();
        if show_progress {
            scope.spawn(|| draw_progress(&context, started));
        }
        let mut all = Vec::new();
        let mut dropped = Vec::new();
        for handle in handles {
            // A worker never panics on input; should one panic anyway, its attempts are lost
            // and reconciliation will say so (unknown entries), rather than crashing the run.
            if let Ok((records, retries_dropped)) = handle.join() {
                all.extend(records);
                dropped.extend(retries_dropped);
            }
        }
        context.progress.finished.store(true, Ordering::Relaxed);
        (all, dropped)
    });
    if show_progress {
        let mut stderr = io::stderr();
        let _ = writeln!(
            stderr,
            "\r{}\x1b[K",
            context.progress.line(options.count, started.elapsed())
        );
    }
    records.sort_by_key(|record| (record.request, record.attempt));
    Sent {
        attempts: records,
        stopped: context.stopped.get().cloned(),
        retries_dropped,
    }
}

fn draw_progress(context: &RunContext<'_>, started: Instant) {
    let mut stderr = io::stderr();
    while !context.progress.finished.load(Ordering::Relaxed) {
        let line = context
            .progress
            .line(context.options.count, started.elapsed());
        let _ = write!(stderr, "\r{line}\x1b[K");
        let _ = stderr.flush();
        std::thread::sleep(PROGRESS_PERIOD);
    }
}

/// A retry waiting in its worker's queue for its backoff to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingRetry {
    /// When the backoff has passed: the retry may go out from then on.
    due: Instant,
    request: u64,
    /// The attempt number it goes out as.
    attempt: u32,
}

/// What a worker does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextStep {
    /// Send the pending retry at this index of the queue.
    Retry(usize),
    /// Claim the next fresh logical request from the shared counter.
    Fresh,
    /// Nothing can go out before this instant.
    SleepUntil(Instant),
    /// No fresh request left and no retry pending.
    Finished,
}

/// The worker's choice at `now`, given its queue of `pending` retries and whether fresh
/// requests may be left. A due retry comes first (the earliest due, then the lowest request,
/// so the choice is deterministic), which keeps the queue short and a retry's wait close to
/// its backoff; else a fresh request, so the worker works through the backoff; it sleeps only
/// when there is nothing else to do.
fn next_step(pending: &[PendingRetry], fresh_left: bool, now: Instant) -> NextStep {
    let earliest = pending
        .iter()
        .enumerate()
        .min_by_key(|(_, retry)| (retry.due, retry.request));
    match earliest {
        Some((index, retry)) if retry.due <= now => NextStep::Retry(index),
        _ if fresh_left => NextStep::Fresh,
        Some((_, retry)) => NextStep::SleepUntil(retry.due),
        None => NextStep::Finished,
    }
}

/// One worker's attempts, and the requests whose pending retry it gave up when the run stopped.
fn run_worker(context: &RunContext<'_>, worker: usize) -> (Vec<AttemptRecord>, Vec<u64>) {
    let options = context.options;
    let mut rng = Rng::with_seed(mix64(context.seed ^ worker as u64));
    let first = match context.first_connection.lock() {
        Ok(mut first) => first.take(),
        Err(_) => None,
    };
    // Should setting its write timeout fail, the first attempt simply opens another one.
    let mut connection = first.and_then(|stream| Connection::new(stream, options.timeout).ok());
    let mut scratch = Scratch::new();
    let mut records = Vec::new();
    let mut pending: Vec<PendingRetry> = Vec::new();
    let mut fresh_left = true;
    let mut first_request = true;
    loop {
        if context.is_stopped() {
            // The server is gone: its retries would only fail the same way.
            let dropped = pending.iter().map(|retry| retry.request).collect();
            return (records, dropped);
        }
        let (request, attempt) = match next_step(&pending, fresh_left, Instant::now()) {
            NextStep::Retry(index) => {
                let retry = pending.swap_remove(index);
                (retry.request, retry.attempt)
            }
            NextStep::Fresh => {
                let request = context.next_request.fetch_add(1, Ordering::Relaxed) + 1;
                if request > options.count {
                    fresh_left = false;
                    continue;
                }
                if !first_request && !options.interval.is_zero() {
                    context.pause(options.interval);
                    if context.is_stopped() {
                        // Claimed but never sent: the report counts it among the unsent.
                        continue;
                    }
                }
                first_request = false;
                (request, 1)
            }
            NextStep::SleepUntil(due) => {
                context.pause(due.saturating_duration_since(Instant::now()));
                continue;
            }
            NextStep::Finished => break,
        };
        let record = perform_attempt(context, &mut connection, &mut scratch, request, attempt);
        context.progress.record(&record.outcome);
        context.note_outcome(&record.outcome);
        if matches!(&record.outcome, AttemptOutcome::Transport(error) if error.is_connect_failure())
        {
            context.pause(CONNECT_FAILURE_PAUSE);
        }
        let again = attempt <= options.retries && is_retried(&record.outcome, &options.retry_on);
        records.push(record);
        if again {
            let delay = backoff_delay(
                attempt,
                options.backoff,
                options.max_backoff,
                rng.next_f64(),
            );
            pending.push(PendingRetry {
                due: Instant::now() + delay,
                request,
                attempt: attempt.saturating_add(1),
            });
        } else {
            context.progress.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    (records, Vec::new())
}

fn perform_attempt(
    context: &RunContext<'_>,
    connection: &mut Option<Connection>,
    scratch: &mut Scratch,
    request: u64,
    attempt: u32,
) -> AttemptRecord {
    let started = Instant::now();
    let id = RequestId {
        run_id: context.run_id,
        request,
        attempt,
    };
    let (outcome, sent) = exchange(
        context.target,
        context.options.timeout,
        connection,
        scratch,
        id,
    );
    AttemptRecord {
        request,
        attempt,
        outcome,
        sent,
        latency: started.elapsed(),
    }
}

/// One attempt on the worker's connection (opened when missing or stale); the connection is
/// kept only after a complete keep-alive response with nothing after it.
fn exchange(
    target: &Target,
    timeout: Duration,
    connection: &mut Option<Connection>,
    scratch: &mut Scratch,
    id: RequestId<'_>,
) -> (AttemptOutcome, bool) {
    let reusable = connection
        .take()
        .filter(|open| is_fresh(open.last_used, Instant::now()));
    let mut open = match reusable {
        Some(open) => open,
        None => match connect(target.address, timeout)
            .and_then(|stream| Connection::new(stream, timeout))
        {
            Ok(open) => open,
            Err(error) if is_timeout(&error) => {
                return (
                    AttemptOutcome::Transport(TransportError::ConnectTimeout),
                    false,
                )
            }
            Err(error) => return (AttemptOutcome::Transport(io_failure(&error)), false),
        },
    };
    write_getbalance_request(&mut scratch.request, &target.host_header, id);
    if let Err(error) = open.stream.write_all(scratch.request.as_bytes()) {
        return (AttemptOutcome::Transport(io_failure(&error)), false);
    }
    scratch.assembler.reset();
    let received = receive(
        &mut open.stream,
        &mut scratch.assembler,
        timeout,
        &mut scratch.chunk,
        &mut open.read_timeout,
    );
    match received {
        Ok(response) => {
            if response.keep_alive && !response.trailing_bytes {
                open.last_used = Instant::now();
                *connection = Some(open);
            }
            (classify_status(response.status), true)
        }
        // Dropping the stream here closes it, which is how the server learns we gave up.
        Err(ReceiveFailure::Timeout) => (AttemptOutcome::Server(Outcome::Timeout), true),
        Err(ReceiveFailure::Transport(error)) => (AttemptOutcome::Transport(error), true),
    }
}

// ---------------------------------------------------------------------------------------------
// Asking the server

/// `GET path` on a fresh connection within `timeout`, connecting included; the body of a 200
/// answer, decoded as JSON.
fn fetch_json(target: &Target, path: &str, timeout: Duration) -> Result<Value, ClientError> {
    fetch_json_text(target, path, timeout, timeout).map(|(_, value)| value)
}

/// Like [`fetch_json`], also handing back the text; connecting may take `connect_timeout` of
/// the `timeout` at most.
fn fetch_json_text(
    target: &Target,
    path: &str,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<(String, Value), ClientError> {
    let fail = |reason: String| ClientError::Server {
        request: format!("GET {path}"),
        reason,
    };
    // One deadline for both: a server slow to accept and then slow to answer must not get
    // the timeout twice over.
    let deadline = Instant::now() + timeout;
    let mut stream = connect(target.address, connect_timeout.min(timeout))
        .map_err(|e| fail(describe_io_error(&e)))?;
    let answer = ask_json(&mut stream, target, path, (deadline, timeout), true).map_err(fail)?;
    Ok((answer.text, answer.value))
}

/// A JSON answer, and whether its connection may carry another request.
struct JsonAnswer {
    text: String,
    value: Value,
    reusable: bool,
}

/// `GET path` on an open connection, asking the server to close it after the answer when
/// `close`; the body of a 200 answer from an unreliable server, decoded as JSON, or why not.
/// `deadline` ends the exchange; `timeout` is what the caller gave it, for the message.
fn ask_json(
    stream: &mut TcpStream,
    target: &Target,
    path: &str,
    (deadline, timeout): (Instant, Duration),
    close: bool,
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
        Err(ReceiveFailure::Timeout) => {
            return Err(format!(
                "no complete answer within {}",
                format_duration(timeout)
            ))
        }
        Err(ReceiveFailure::Transport(error)) => {
            let detail = error.detail().map(|d| format!(": {d}")).unwrap_or_default();
            return Err(format!("{}{detail}", error.name()));
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
    let text = String::from_utf8(response.body).map_err(|_| "body is not UTF-8".to_string())?;
    let value = json::decode(&text).map_err(|error| format!("invalid JSON: {error}"))?;
    Ok(JsonAnswer {
        text,
        value,
        reusable,
    })
}

/// `/stats` before the run, asked on the connection [`reach`] opened (so a server with a
/// connection limit of one still serves the run), which is handed back for the first worker
/// when the server keeps it open.
fn stats_before_run(
    target: &Target,
    mut stream: TcpStream,
) -> Result<(ServerStats, Option<TcpStream>), ClientError> {
    let fail = |reason: String| ClientError::Server {
        request: "GET /stats".into(),
        reason,
    };
    let deadline = (Instant::now() + ADMIN_TIMEOUT, ADMIN_TIMEOUT);
    let answer = ask_json(&mut stream, target, "/stats", deadline, false).map_err(fail)?;
    let stats = parse_server_stats(&answer.text, &answer.value).map_err(fail)?;
    Ok((stats, answer.reusable.then_some(stream)))
}

/// `/stats` on a fresh connection, after the run. After an early stop the server was just
/// found unreachable or not answering, so the whole read, retries included, gets
/// [`STATS_RETRY_WINDOW`] (or the attempt timeout when longer) instead of [`ADMIN_TIMEOUT`],
/// connecting the attempt timeout at most each time; and it is tried again while that lasts,
/// so that a server that was restarting is reached and its restart named.
fn fetch_server_stats(
    target: &Target,
    after_stop: bool,
    attempt_timeout: Duration,
) -> Result<ServerStats, ClientError> {
    let read = |timeout: Duration, connect_timeout: Duration| {
        let (text, value) = fetch_json_text(target, "/stats", timeout, connect_timeout)?;
        parse_server_stats(&text, &value).map_err(|reason| ClientError::Server {
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
}

/// Reads the seed and the outcome probabilities (or, failing those, the weights) from `/stats`;
/// `text` is the document `value` was decoded from.
pub fn parse_server_stats(text: &str, value: &Value) -> Result<ServerStats, String> {
    let seed = value.get("seed").and_then(|seed| match seed {
        Value::Number(number) => seed.as_u64().or_else(|| exact_seed(text, *number)),
        Value::String(digits) => digits.parse().ok(),
        _ => None,
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
    })
}

/// Whether the server restarted between two `/stats` reads: a new seed, fewer requests logged,
/// or an uptime that grew less than `between` (the client's time from the end of the first read
/// to the start of the second, which the server's clock saw pass too) allows, with
/// [`UPTIME_SLACK`]. The verdict reason naming the evidence, or `None`.
pub fn restart_evidence(
    before: &ServerStats,
    after: &ServerStats,
    between: Duration,
) -> Option<String> {
    let mut evidence = Vec::new();
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

/// The seed's digits read from the text: JSON numbers decode to f64, which cannot hold every
/// 64-bit seed, and a seed is only useful exact. The digits are trusted only when they agree
/// with the decoded number, so a `"seed"` key elsewhere in the document cannot be mistaken.
fn exact_seed(text: &str, decoded: f64) -> Option<u64> {
    const KEY: &str = "\"seed\"";
    let mut rest = text;
    while let Some(position) = rest.find(KEY) {
        rest = &rest[position + KEY.len()..];
        let Some(number) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let number = number.trim_start();
        let end = number
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(number.len());
        if let Ok(seed) = number[..end].parse::<u64>() {
            if seed as f64 == decoded {
                return Some(seed);
            }
        }
    }
    None
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
    let id = value
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("log entry without an id")?;
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
struct LogFetch {
    entries: Vec<LogEntry>,
    dropped: u64,
}

/// Pages through `/getlogs?request_id_prefix=prefix` with `since` while pages come back full.
///
/// `attempts` is how many attempts the run made. Each has one entry at most; `extra` more are
/// taken so that the report can show them as unknown or duplicated, and a server that returns
/// more than that for the run is refused (as is one whose entries hold more text than
/// [`MAX_LOG_TEXT_PER_ENTRY`] per entry allowed): what the client keeps is bounded by its own
/// run, not by what a server cares to send. When the entries fill the last page exactly, the
/// page after it is empty, so that page costs nothing.
fn fetch_run_entries(
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
        let value = fetch_json(target, &path, timeout)?;
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

// ---------------------------------------------------------------------------------------------
// Reconciliation

/// A client attempt and its server entry disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub request_id: String,
    /// What the client saw (`timeout`, `403`, … or `not sent (connection refused)`).
    pub client: String,
    /// The entry's outcome.
    pub server: String,
}

/// Attempts against entries, by request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Entries of this run on the server.
    pub server_entries: u64,
    /// Attempts whose one entry has the same outcome.
    pub matched: u64,
    /// Attempts that failed before the request was written and, rightly, have no entry.
    pub not_sent: u64,
    /// Transport failures after sending that the server logged (any outcome is accepted).
    pub transport_logged: u64,
    /// The server's outcomes for those, by name: `timeout` here means the server gave up on a
    /// hung request before the client's timeout (its `--hang` is shorter).
    pub transport_logged_outcomes: BTreeMap<String, u64>,
    /// Transport failures after sending that the server did not log (the request may never
    /// have arrived, e.g. a keep-alive connection the server was closing).
    pub transport_unlogged: u64,
    /// Answered or timed-out attempts with no entry.
    pub missing_on_server: Vec<String>,
    /// Entries with this run's prefix for requests the client never sent.
    pub unknown_to_client: Vec<String>,
    pub mismatches: Vec<Mismatch>,
    /// Request ids with more than one entry.
    pub duplicates: Vec<String>,
}

impl Reconciliation {
    /// Every attempt and every entry accounted for.
    pub fn is_clean(&self) -> bool {
        self.missing_on_server.is_empty()
            && self.unknown_to_client.is_empty()
            && self.mismatches.is_empty()
            && self.duplicates.is_empty()
    }
}

/// Matches every attempt with the entries carrying its request id. Entries without this run's
/// prefix are ignored; a request id the client sent twice cannot occur (ids are unique).
pub fn reconcile(run_id: &str, attempts: &[AttemptRecord], entries: &[LogEntry]) -> Reconciliation {
    let prefix = format!("{run_id}-");
    let mut by_id: HashMap<&str, Vec<&LogEntry>> = HashMap::new();
    let mut result = Reconciliation::default();
    for entry in entries {
        if let Some(id) = entry
            .request_id
            .as_deref()
            .filter(|id| id.starts_with(&prefix))
        {
            by_id.entry(id).or_default().push(entry);
            result.server_entries += 1;
        }
    }
    let mut sent_ids = HashSet::new();
    for attempt in attempts {
        let id = request_id(run_id, attempt.request, attempt.attempt);
        let found = by_id.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        match found {
            [] if !attempt.sent => result.not_sent += 1,
            [] if matches!(attempt.outcome, AttemptOutcome::Transport(_)) => {
                result.transport_unlogged += 1
            }
            [] => result.missing_on_server.push(id.clone()),
            [entry] if !attempt.sent => result.mismatches.push(Mismatch {
                request_id: id.clone(),
                client: format!("not sent ({})", attempt.outcome.category()),
                server: entry.outcome.clone(),
            }),
            [entry] if matches!(attempt.outcome, AttemptOutcome::Transport(_)) => {
                result.transport_logged += 1;
                *result
                    .transport_logged_outcomes
                    .entry(entry.outcome.clone())
                    .or_insert(0) += 1;
            }
            [entry] => {
                if outcome_matches(&attempt.outcome, entry) {
                    result.matched += 1;
                } else {
                    result.mismatches.push(Mismatch {
                        request_id: id.clone(),
                        client: attempt.outcome.category(),
                        server: entry.outcome.clone(),
                    });
                }
            }
            _ => result.duplicates.push(id.clone()),
        }
        sent_ids.insert(id);
    }
    let mut unknown: Vec<&LogEntry> = by_id
        .iter()
        .filter(|(id, _)| !sent_ids.contains(**id))
        .flat_map(|(_, found)| found.iter().copied())
        .collect();
    unknown.sort_by_key(|entry| entry.id);
    result.unknown_to_client = unknown
        .iter()
        .filter_map(|entry| entry.request_id.clone())
        .collect();
    result
}

fn outcome_matches(outcome: &AttemptOutcome, entry: &LogEntry) -> bool {
    match outcome {
        AttemptOutcome::Server(outcome) => entry.outcome == outcome.name(),
        AttemptOutcome::OtherStatus(status) => entry.status == Some(*status),
        AttemptOutcome::Transport(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Theory and tables

/// Final-outcome probabilities per logical request when the outcomes in `retried` are tried
/// again up to `retries` times. With q the summed probability of `retried`: an outcome outside
/// it ends a request with `p (1 - q^(R+1)) / (1 - q)`; one inside it is final only on the last
/// attempt, with `p q^R`.
pub fn final_outcome_probabilities(
    probabilities: &[f64; Outcome::COUNT],
    retried: &[Outcome],
    retries: u32,
) -> [f64; Outcome::COUNT] {
    let q = retried_probability(probabilities, retried);
    let reach = expected_attempts_per_request(q, retries);
    let last_round = q.powf(f64::from(retries));
    let mut finals = [0.0; Outcome::COUNT];
    for outcome in Outcome::ALL {
        let p = probabilities[outcome.index()];
        finals[outcome.index()] = if retried.contains(&outcome) {
            p * last_round
        } else {
            p * reach
        };
    }
    finals
}

/// The summed probability of the retried outcomes.
pub fn retried_probability(probabilities: &[f64; Outcome::COUNT], retried: &[Outcome]) -> f64 {
    Outcome::ALL
        .iter()
        .filter(|outcome| retried.contains(outcome))
        .map(|outcome| probabilities[outcome.index()])
        .sum()
}

/// Mean attempts per logical request: `(1 - q^(R+1)) / (1 - q)`, and `R + 1` when `q` is 1.
pub fn expected_attempts_per_request(q: f64, retries: u32) -> f64 {
    let rounds = f64::from(retries) + 1.0;
    if 1.0 - q < 1e-12 {
        rounds
    } else {
        (1.0 - q.powf(rounds)) / (1.0 - q)
    }
}

/// One row of a distribution table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistributionRow {
    pub outcome: Outcome,
    pub expected_probability: f64,
    pub expected_count: f64,
    pub actual_count: u64,
    pub actual_proportion: f64,
    /// 95% Wilson interval of the proportion.
    pub interval: (f64, f64),
}

/// Observed counts against expected probabilities, one row per outcome.
pub fn distribution(
    counts: &[u64; Outcome::COUNT],
    probabilities: &[f64; Outcome::COUNT],
) -> Vec<DistributionRow> {
    let total: u64 = counts.iter().sum();
    Outcome::ALL
        .iter()
        .map(|outcome| {
            let count = counts[outcome.index()];
            let expected = probabilities[outcome.index()];
            DistributionRow {
                outcome: *outcome,
                expected_probability: expected,
                expected_count: expected * total as f64,
                actual_count: count,
                actual_proportion: if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                },
                interval: stats::wilson_interval(count, total, CONFIDENCE),
            }
        })
        .collect()
}

/// Whether the row's interval lies entirely outside expected ± `tolerance_points`.
pub fn is_outside_tolerance(row: &DistributionRow, total: u64, tolerance_points: f64) -> bool {
    if total == 0 {
        return false;
    }
    let expected = row.expected_probability * 100.0;
    row.interval.0 * 100.0 > expected + tolerance_points
        || row.interval.1 * 100.0 < expected - tolerance_points
}

/// A text bar: `#` for the actual share, `|` where the expected share ends.
///
/// The marker goes between cells, not on one: on a cell it hid that cell, so a share one cell
/// past the expected one drew the same bar as the expected share itself. So every cell of the
/// actual share shows, and the bar is one character wider than [`BAR_WIDTH`] at most.
pub fn bar(actual: f64, expected: f64) -> String {
    let cells = |share: f64| (share.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize;
    let filled = cells(actual);
    let marker = cells(expected);
    let mut drawn = String::with_capacity(BAR_WIDTH + 1);
    for cell in 0..=BAR_WIDTH {
        if cell == marker {
            drawn.push('|');
        }
        if cell < BAR_WIDTH {
            drawn.push(if cell < filled { '#' } else { ' ' });
        }
    }
    drawn.trim_end().to_string()
}

/// The ± half-width (percentage points) of the interval of the most frequent outcome, and how
/// many draws bring every outcome's interval to about ±1 point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Precision {
    pub draws: u64,
    pub half_width_points: f64,
    pub draws_for_one_point: u64,
}

/// The share whose interval is widest for a given number of draws: p(1 − p) peaks at one half.
const WORST_CASE_SHARE: f64 = 0.5;

pub fn precision(rows: &[DistributionRow], draws: u64) -> Option<Precision> {
    let largest = rows.iter().max_by_key(|row| row.actual_count)?;
    if draws == 0 {
        return None;
    }
    // The worst case, as the README's testing procedure explains (about 10,000 draws for ±1
    // point): the observed share is no basis, since one at 0% or 100% would say 0 draws.
    // Two-sided, as the intervals are: 1.96 for 95% (the one-sided 1.645 asked for 30% too few).
    let z = stats::normal_quantile(1.0 - (1.0 - CONFIDENCE) / 2.0);
    let p = WORST_CASE_SHARE;
    let needed = (z * z * p * (1.0 - p) / 1e-4).ceil();
    Some(Precision {
        draws,
        half_width_points: (largest.interval.1 - largest.interval.0) * 50.0,
        draws_for_one_point: round_to_two_digits(needed as u64),
    })
}

/// 6576 as 6600: the count is an estimate, so more digits would claim too much.
fn round_to_two_digits(value: u64) -> u64 {
    let mut scale = 1;
    while value / scale >= 100 {
        scale *= 10;
    }
    value.saturating_add(scale / 2) / scale * scale
}

/// Latency quantiles of one category, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRow {
    pub category: String,
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

fn latency_rows(attempts: &[AttemptRecord]) -> Vec<LatencyRow> {
    let mut by_category: BTreeMap<(usize, String), Vec<f64>> = BTreeMap::new();
    for attempt in attempts {
        let order = match &attempt.outcome {
            AttemptOutcome::Server(outcome) => outcome.index(),
            _ => Outcome::COUNT,
        };
        by_category
            .entry((order, attempt.outcome.category()))
            .or_default()
            .push(attempt.latency.as_secs_f64() * 1000.0);
    }
    by_category
        .into_iter()
        .map(|((_, category), mut values)| {
            values.sort_by(f64::total_cmp);
            let quantile = |q| stats::percentile(&values, q).unwrap_or(0.0);
            LatencyRow {
                category,
                count: values.len() as u64,
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The report

/// Everything a report shows, computed once and rendered as text or JSON.
#[derive(Debug, Clone)]
pub struct Report {
    pub run_id: String,
    pub target: String,
    pub seed: Option<u64>,
    pub probabilities: [f64; Outcome::COUNT],
    pub attempts: u64,
    pub requests: u64,
    pub attempt_rows: Vec<DistributionRow>,
    pub attempt_draws: u64,
    /// Attempts that were not draws (other statuses, transport errors), by category.
    pub attempt_other: BTreeMap<String, u64>,
    /// A detail per transport category (the first one seen).
    pub transport_details: BTreeMap<String, String>,
    pub fit: GoodnessOfFit,
    pub precision: Option<Precision>,
    pub request_rows: Vec<DistributionRow>,
    pub request_draws: u64,
    pub request_other: BTreeMap<String, u64>,
    pub mean_attempts: f64,
    pub expected_mean_attempts: f64,
    /// Wall time of sending: from starting the workers until the last attempt is classified.
    pub elapsed: Duration,
    pub latency: Vec<LatencyRow>,
    /// Logical requests without a single attempt (the run stopped before them).
    pub requests_never_sent: u64,
    /// Why the run stopped before sending every request, when it did.
    pub stopped: Option<StopCause>,
    /// Pending retries given up when the run stopped.
    pub retries_dropped: u64,
    /// Empty (all zero) when the reconciliation was not done; see `reconciliation_not_done`.
    pub reconciliation: Reconciliation,
    /// Why the attempts could not be checked against the server's log, when they could not.
    pub reconciliation_not_done: Option<String>,
    pub restart: Restart,
    pub dropped_by_server: u64,
    /// The server entries to show (already cut to `show_logs`).
    pub shown_entries: Vec<LogEntry>,
    pub tolerance_violations: Vec<Outcome>,
    /// Why the verdict failed, one line each; empty when it passed.
    pub verdict_reasons: Vec<String>,
    pub verdict: Verdict,
}

/// Whether the server restarted during the run, as its two `/stats` answers tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// `/stats` after the run could not be read.
    Unknown,
    No,
    /// The verdict reason, naming the evidence (see [`restart_evidence`]).
    Yes(String),
}

/// What the server told about the run.
#[derive(Debug, Clone)]
struct ServerAccount {
    /// `/stats` before the run: the weights the run is judged against, read from the server
    /// that served its start.
    stats: ServerStats,
    restart: Restart,
    /// This run's entries, or why they could not be read (the reconciliation is then not done).
    log: Result<LogFetch, String>,
}

/// What the run did, for the report.
#[derive(Debug)]
struct RunRecord<'a> {
    run_id: &'a str,
    /// The address connected to.
    target: &'a str,
    sent: &'a Sent,
    /// Wall time of sending.
    elapsed: Duration,
}

/// The per-request category of a request whose pending retry was given up when the run
/// stopped early.
pub const RETRY_DROPPED: &str = "retry dropped";

/// The verdict reason of a run stopped early: `the server became unreachable: 12 connection
/// attempts in a row failed (connection refused); 1,234 requests not sent`, or `the server
/// stopped answering: 10 attempts in a row got no answer (timeout), nor did GET /health (no
/// answer within 1s); …`.
fn unreachable_reason(cause: &StopCause, never_sent: u64, retries_dropped: u64) -> String {
    let failures = group_thousands(cause.failures_in_a_row);
    let mut reason = match &cause.health_failure {
        None => format!(
            "the server became unreachable: {failures} connection attempts in a row failed ({})",
            cause.failure
        ),
        Some(health) => format!(
            "the server stopped answering: {failures} attempts in a row got no answer (last: \
             {}), nor did GET /health ({health})",
            cause.failure
        ),
    };
    let _ = write!(
        reason,
        "; {} requests not sent",
        group_thousands(never_sent)
    );
    if retries_dropped > 0 {
        let _ = write!(
            reason,
            ", {} retries dropped",
            group_thousands(retries_dropped)
        );
    }
    reason
}

/// The verdict reason for attempts the server logged as `timeout` but closed before the
/// client's timeout, so the client saw a transport error: those were draws, left out.
fn hung_closed_reason(count: u64) -> String {
    format!(
        "{count} attempts were hung requests the server closed before --timeout (its --hang is \
         shorter): the mix cannot be judged; raise the server's --hang or lower --timeout"
    )
}

/// Mismatches where the client gave up but the server answered (`client timeout, server 200`):
/// the answer came after the client's timeout.
fn late_answers(mismatches: &[Mismatch]) -> usize {
    mismatches
        .iter()
        .filter(|mismatch| {
            mismatch.client == Outcome::Timeout.name()
                && Outcome::from_name(&mismatch.server).is_some_and(|o| o.status().is_some())
        })
        .count()
}

/// Builds the report from the attempts, the server's stats and this run's entries.
fn build_report(options: &ClientOptions, run: &RunRecord<'_>, account: &ServerAccount) -> Report {
    let run_id = run.run_id;
    let attempts = run.sent.attempts.as_slice();
    let server = &account.stats;
    let no_entries = LogFetch {
        entries: Vec::new(),
        dropped: 0,
    };
    let (fetched, reconciliation_not_done) = match &account.log {
        Ok(fetched) => (fetched, None),
        Err(reason) => (&no_entries, Some(reason.clone())),
    };
    let mut attempt_counts = [0u64; Outcome::COUNT];
    let mut attempt_other = BTreeMap::new();
    let mut transport_details = BTreeMap::new();
    let mut transport_errors = 0u64;
    let mut finals: BTreeMap<u64, &AttemptOutcome> = BTreeMap::new();
    for attempt in attempts {
        match &attempt.outcome {
            AttemptOutcome::Server(outcome) => attempt_counts[outcome.index()] += 1,
            other => *attempt_other.entry(other.category()).or_insert(0) += 1,
        }
        if let AttemptOutcome::Transport(error) = &attempt.outcome {
            transport_errors += 1;
            if let Some(detail) = error.detail() {
                transport_details
                    .entry(error.name().to_string())
                    .or_insert_with(|| detail.to_string());
            }
        }
        // Attempts are sorted, so the last one seen per request is its final outcome.
        finals.insert(attempt.request, &attempt.outcome);
    }
    let mut request_counts = [0u64; Outcome::COUNT];
    let mut request_other = BTreeMap::new();
    // A request whose retry was given up has no final outcome: its last attempt's would count
    // as final a timeout that the theory expects to be retried.
    let dropped: HashSet<u64> = run.sent.retries_dropped.iter().copied().collect();
    for (request, outcome) in &finals {
        match outcome {
            _ if dropped.contains(request) => {
                *request_other.entry(RETRY_DROPPED.to_string()).or_insert(0) += 1
            }
            AttemptOutcome::Server(outcome) => request_counts[outcome.index()] += 1,
            other => *request_other.entry(other.category()).or_insert(0) += 1,
        }
    }
    let attempt_draws: u64 = attempt_counts.iter().sum();
    let request_draws: u64 = request_counts.iter().sum();
    let attempt_rows = distribution(&attempt_counts, &server.probabilities);
    let final_probabilities =
        final_outcome_probabilities(&server.probabilities, &options.retry_on, options.retries);
    let request_rows = distribution(&request_counts, &final_probabilities);
    let fit = stats::goodness_of_fit(&attempt_counts, &server.probabilities);
    let q = retried_probability(&server.probabilities, &options.retry_on);
    // Without the log every answered attempt would look missing: nothing is reconciled.
    let reconciliation = match reconciliation_not_done {
        None => reconcile(run_id, attempts, &fetched.entries),
        Some(_) => Reconciliation::default(),
    };
    let tolerance_violations: Vec<Outcome> = match options.tolerance {
        Some(tolerance) => attempt_rows
            .iter()
            .filter(|row| is_outside_tolerance(row, attempt_draws, tolerance))
            .map(|row| row.outcome)
            .collect(),
        None => Vec::new(),
    };
    let shown = match options.show_logs {
        ShowLogs::All => fetched.entries.len(),
        ShowLogs::Last(count) => count.min(fetched.entries.len()),
        ShowLogs::None => 0,
    };
    let mut verdict_reasons = Vec::new();
    // Without a draw every interval is [0%, 100%] and the chi-square is trivially 0, so neither
    // the fit nor the tolerance could fail: such a run proves nothing and must not pass.
    if attempt_draws == 0 {
        verdict_reasons.push(nothing_to_judge(
            attempts.len() as u64,
            transport_errors,
            &attempt_other,
        ));
    }
    // Not chance but an impossibility: the server gave what its own weights say it never
    // draws, so its weights (or its draws) are wrong, whatever the p-value says.
    for outcome in Outcome::ALL {
        let count = attempt_counts[outcome.index()];
        if count > 0 && server.probabilities[outcome.index()] == 0.0 {
            verdict_reasons.push(format!(
                "{} was the outcome of {count} attempts but its weight is 0",
                outcome.name()
            ));
        }
    }
    let requests = finals.len() as u64;
    let requests_never_sent = options.count.saturating_sub(requests);
    if let Some(cause) = &run.sent.stopped {
        verdict_reasons.push(unreachable_reason(
            cause,
            requests_never_sent,
            run.sent.retries_dropped.len() as u64,
        ));
    }
    if let Some(reason) = &reconciliation_not_done {
        verdict_reasons.push(format!("reconciliation not done ({reason})"));
    }
    if let Restart::Yes(reason) = &account.restart {
        verdict_reasons.push(reason.clone());
    }
    if !reconciliation.is_clean() {
        verdict_reasons.push("client and server logs disagree".to_string());
    }
    // Those attempts were draws (the server's log says `timeout`) that the client could only
    // count as transport errors, so the tables lack them and cannot pass for the weights.
    if let Some(&hung) = reconciliation
        .transport_logged_outcomes
        .get(Outcome::Timeout.name())
    {
        verdict_reasons.push(hung_closed_reason(hung));
    }
    if let Some(tolerance) = options.tolerance {
        for outcome in &tolerance_violations {
            verdict_reasons.push(format!(
                "{}: 95% interval outside expected ± {tolerance} points",
                outcome.name()
            ));
        }
    }
    let verdict = if verdict_reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Report {
        run_id: run_id.to_string(),
        target: run.target.to_string(),
        seed: server.seed,
        probabilities: server.probabilities,
        attempts: attempts.len() as u64,
        requests,
        precision: precision(&attempt_rows, attempt_draws),
        attempt_rows,
        attempt_draws,
        attempt_other,
        transport_details,
        fit,
        request_rows,
        request_draws,
        request_other,
        mean_attempts: if requests > 0 {
            attempts.len() as f64 / requests as f64
        } else {
            0.0
        },
        expected_mean_attempts: expected_attempts_per_request(q, options.retries),
        elapsed: run.elapsed,
        latency: latency_rows(attempts),
        requests_never_sent,
        stopped: run.sent.stopped.clone(),
        retries_dropped: run.sent.retries_dropped.len() as u64,
        reconciliation,
        reconciliation_not_done,
        restart: account.restart.clone(),
        dropped_by_server: fetched.dropped,
        shown_entries: fetched.entries[fetched.entries.len() - shown..].to_vec(),
        tolerance_violations,
        verdict_reasons,
        verdict,
    }
}

/// Why a run whose attempts include no draw cannot be judged, naming what they ended in:
/// `nothing to judge, all 20 attempts ended in transport errors: connection reset 20`.
fn nothing_to_judge(attempts: u64, transport_errors: u64, other: &BTreeMap<String, u64>) -> String {
    let kinds: Vec<String> = other
        .iter()
        .map(|(category, count)| format!("{category} {count}"))
        .collect();
    let kinds = kinds.join(", ");
    match attempts {
        0 => "nothing to judge, no attempt was made".into(),
        1 if transport_errors == 1 => {
            format!("nothing to judge, the only attempt ended in a transport error: {kinds}")
        }
        1 => format!("nothing to judge, the only attempt got no outcome of the weights: {kinds}"),
        _ if transport_errors == attempts => {
            format!("nothing to judge, all {attempts} attempts ended in transport errors: {kinds}")
        }
        _ => format!(
            "nothing to judge, none of the {attempts} attempts got an outcome of the weights: \
             {kinds}"
        ),
    }
}

/// Server-supplied text as the text report shows it (see [`visible`]).
#[derive(Debug, Clone, Copy)]
pub struct Visible<'a>(&'a str);

/// `text` with every control character (C0, DEL, C1) and every character of
/// [`INVISIBLE_CHARACTERS`] written as an escape like `\u{1b}`, and a backslash as `\\`, so
/// that text from the server can neither drive the terminal (colours, cursor moves, a fake
/// line after a CR or LF), nor reorder or hide what follows it, nor pass for an escape. The
/// JSON report has its own escaping and does not use this.
pub fn visible(text: &str) -> Visible<'_> {
    Visible(text)
}

fn needs_escape(character: char) -> bool {
    character.is_control()
        || INVISIBLE_CHARACTERS
            .binary_search_by(|&(first, last)| {
                if last < character {
                    std::cmp::Ordering::Less
                } else if first > character {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

impl std::fmt::Display for Visible<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        // Runs that need nothing are copied as slices, as nearly all text is such a run.
        let mut start = 0;
        for (index, character) in text.char_indices() {
            let escaped = character == '\\' || needs_escape(character);
            if !escaped {
                continue;
            }
            f.write_str(&text[start..index])?;
            if character == '\\' {
                f.write_str("\\\\")?;
            } else {
                write!(f, "\\u{{{:x}}}", u32::from(character))?;
            }
            start = index + character.len_utf8();
        }
        f.write_str(&text[start..])
    }
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

/// `2024-10-23T23:55:31.705Z` in the original tool's style `2024-10-23 23:55:31,705`; anything
/// not shaped like that is shown as sent.
pub fn log_style_time(rfc3339: &str) -> String {
    let bytes = rfc3339.as_bytes();
    if bytes.len() == 24 && bytes[10] == b'T' && bytes[19] == b'.' && bytes[23] == b'Z' {
        format!(
            "{} {},{}",
            &rfc3339[..10],
            &rfc3339[11..19],
            &rfc3339[20..23]
        )
    } else {
        rfc3339.to_string()
    }
}

/// One server entry in the original style plus its request id:
/// `2024-10-23 23:55:31,705 - 127.0.0.1 - 200 OK  [abc-1-1]`, its text made [`visible`].
pub fn format_log_entry(entry: &LogEntry) -> String {
    let label = Outcome::from_name(&entry.outcome)
        .map(Outcome::text_label)
        .unwrap_or(entry.outcome.as_str());
    format!(
        "{} - {} - {}  [{}]",
        visible(&log_style_time(&entry.time)),
        visible(&entry.client_ip),
        visible(label),
        visible(entry.request_id.as_deref().unwrap_or("-"))
    )
}

/// The sentence judging the chi-square p-value, whole: the report prints it as it is.
/// Only for a run with draws; one without has its `nothing to judge` reason instead.
pub fn fit_sentence(fit: &GoodnessOfFit) -> String {
    if fit.impossible_observed > 0 {
        "the mix is impossible under the configured weights: an outcome of weight 0 was seen \
         (the test is over the others)"
            .to_string()
    } else if fit.p_value >= SIGNIFICANCE {
        format!(
            "the mix is consistent with the configured weights (p = {:.3} >= {SIGNIFICANCE})",
            fit.p_value
        )
    } else {
        format!(
            "the mix is unlikely under the configured weights (p = {:.3e})",
            fit.p_value
        )
    }
}

/// Whether the chi-square found the mix consistent with the weights; never without a draw,
/// nor with an outcome the weights make impossible.
fn is_consistent(report: &Report) -> bool {
    report.attempt_draws > 0
        && report.fit.impossible_observed == 0
        && report.fit.p_value >= SIGNIFICANCE
}

fn write_distribution(
    text: &mut String,
    title: &str,
    rows: &[DistributionRow],
    other: &BTreeMap<String, u64>,
) -> std::fmt::Result {
    writeln!(text, "{title}")?;
    writeln!(
        text,
        "  {:<8} {:>9} {:>10} {:>8} {:>8}  {:<17}  # actual, | expected",
        "outcome", "expected", "exp.count", "count", "actual", "95% interval"
    )?;
    for row in rows {
        let interval = format!(
            "[{:.1}%, {:.1}%]",
            row.interval.0 * 100.0,
            row.interval.1 * 100.0
        );
        writeln!(
            text,
            "  {:<8} {:>8.1}% {:>10.1} {:>8} {:>7.1}%  {:<17}  {}",
            row.outcome.name(),
            row.expected_probability * 100.0,
            row.expected_count,
            row.actual_count,
            row.actual_proportion * 100.0,
            interval,
            bar(row.actual_proportion, row.expected_probability)
        )?;
    }
    for (category, count) in other {
        writeln!(
            text,
            "  {category:<28} {count:>8}  (not a draw from the weights)"
        )?;
    }
    Ok(())
}

/// Request ids, [`visible`]: some come from the server (entries the client never sent).
fn write_id_list(text: &mut String, label: &str, ids: &[String]) -> std::fmt::Result {
    if ids.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = ids
        .iter()
        .take(MAX_LISTED_IDS)
        .map(|id| visible(id).to_string())
        .collect();
    let more = ids.len().saturating_sub(MAX_LISTED_IDS);
    write!(text, "  {label}: {} ({}", ids.len(), listed.join(", "))?;
    if more > 0 {
        write!(text, ", … {more} more")?;
    }
    writeln!(text, ")")
}

/// The human report.
pub fn write_text_report(
    report: &Report,
    options: &ClientOptions,
    text: &mut String,
) -> std::fmt::Result {
    writeln!(
        text,
        "{USER_AGENT}: run {} against {}",
        report.run_id, report.target
    )?;
    let retry_on: Vec<&str> = options.retry_on.iter().map(|o| o.name()).collect();
    let retries = if retry_on.is_empty() {
        "no retries (--retry-on none)".to_string()
    } else {
        format!("retries {} on [{}]", options.retries, retry_on.join(", "))
    };
    writeln!(
        text,
        "  {} requests, concurrency {}, timeout {}, {retries}, backoff {} up to {}, interval {}",
        options.count,
        options.concurrency,
        format_duration(options.timeout),
        format_duration(options.backoff),
        format_duration(options.max_backoff),
        format_duration(options.interval)
    )?;
    let weights: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| {
            format!(
                "{} {:.1}%",
                o.name(),
                report.probabilities[o.index()] * 100.0
            )
        })
        .collect();
    let seed = report
        .seed
        .map(|seed| seed.to_string())
        .unwrap_or_else(|| "unknown".into());
    writeln!(text, "  server seed {seed}, weights {}", weights.join(", "))?;
    if let Some(cause) = &report.stopped {
        writeln!(
            text,
            "  stopped early: {}",
            unreachable_reason(cause, report.requests_never_sent, report.retries_dropped)
        )?;
    }

    if !report.shown_entries.is_empty() {
        writeln!(text)?;
        writeln!(
            text,
            "Server log (last {} of this run's {} entries)",
            report.shown_entries.len(),
            report.reconciliation.server_entries
        )?;
        for entry in &report.shown_entries {
            writeln!(text, "  {}", format_log_entry(entry))?;
        }
    }

    writeln!(text)?;
    write_distribution(
        text,
        &format!(
            "Per attempt (each attempt is one draw): {} attempts, {} draws",
            report.attempts, report.attempt_draws
        ),
        &report.attempt_rows,
        &report.attempt_other,
    )?;
    for (category, detail) in &report.transport_details {
        writeln!(text, "  first {category}: {detail}")?;
    }
    if report.attempt_draws == 0 {
        // The first reason (build_report puts it there) says what the attempts ended in.
        writeln!(text, "  no chi-square: there is no draw to test")?;
        if let Some(reason) = report.verdict_reasons.first() {
            writeln!(text, "  {reason}")?;
        }
    } else {
        writeln!(
            text,
            "  chi-square {}, {} degrees of freedom, p-value {:.4} ({})",
            statistic_text(report.fit.statistic),
            report.fit.degrees_of_freedom,
            report.fit.p_value,
            report.fit.method.name()
        )?;
        writeln!(text, "  {}", fit_sentence(&report.fit))?;
    }
    if let Some(precision) = &report.precision {
        writeln!(
            text,
            "  precision: with {} attempts each percentage is known to about ±{:.1} points; \
             ~{} attempts give ±1",
            group_thousands(precision.draws),
            precision.half_width_points,
            group_thousands(precision.draws_for_one_point)
        )?;
    }

    writeln!(text)?;
    let retries = if options.retry_on.is_empty() || options.retries == 0 {
        "final outcome (no retries)".to_string()
    } else {
        format!("final outcome after up to {} retries", options.retries)
    };
    let mut title = format!(
        "Per logical request ({retries}): {} requests",
        report.requests
    );
    if report.requests_never_sent > 0 {
        let _ = write!(
            title,
            ", {} more never sent",
            group_thousands(report.requests_never_sent)
        );
    }
    write_distribution(text, &title, &report.request_rows, &report.request_other)?;
    writeln!(
        text,
        "  mean attempts per request {:.3} (theory {:.3})",
        report.mean_attempts, report.expected_mean_attempts
    )?;
    let seconds = report.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        report.attempts as f64 / seconds
    } else {
        0.0
    };
    writeln!(
        text,
        "  wall time of all attempts {} (workers in parallel, backoffs included), {rate:.1} attempts/s",
        format_duration(report.elapsed)
    )?;

    writeln!(text)?;
    writeln!(
        text,
        "Latency per attempt (ms; its own connect, send and receive, no backoff)"
    )?;
    writeln!(
        text,
        "  {:<24} {:>8} {:>10} {:>10} {:>10}",
        "outcome", "count", "p50", "p90", "p99"
    )?;
    for row in &report.latency {
        writeln!(
            text,
            "  {:<24} {:>8} {:>10.2} {:>10.2} {:>10.2}",
            row.category, row.count, row.p50, row.p90, row.p99
        )?;
    }

    let reconciliation = &report.reconciliation;
    writeln!(text)?;
    match &report.reconciliation_not_done {
        Some(reason) => writeln!(
            text,
            "Reconciliation: {} attempts, not done ({reason})",
            report.attempts
        )?,
        None => {
            writeln!(
                text,
                "Reconciliation: {} attempts, {} server entries",
                report.attempts, reconciliation.server_entries
            )?;
            writeln!(
                text,
                "  matched {}, not sent {}, transport errors logged {} / not logged {}",
                reconciliation.matched,
                reconciliation.not_sent,
                reconciliation.transport_logged,
                reconciliation.transport_unlogged
            )?;
        }
    }
    if let Restart::Yes(reason) = &report.restart {
        // Named here because it explains the entries missing below.
        writeln!(
            text,
            "  note: {reason}: its log in memory started over, so attempts before the restart \
             have no entry there"
        )?;
    }
    if !reconciliation.transport_logged_outcomes.is_empty() {
        let outcomes: Vec<String> = reconciliation
            .transport_logged_outcomes
            .iter()
            .map(|(outcome, count)| format!("{} {count}", visible(outcome)))
            .collect();
        writeln!(
            text,
            "  the server logged those transport errors as: {}",
            outcomes.join(", ")
        )?;
        if reconciliation
            .transport_logged_outcomes
            .contains_key("timeout")
        {
            writeln!(
                text,
                "  hint: the server closed hung requests before the client's timeout; \
                 give the server a longer --hang than the client's --timeout"
            )?;
        }
    }
    write_id_list(
        text,
        "missing on the server",
        &reconciliation.missing_on_server,
    )?;
    write_id_list(
        text,
        "unknown to the client",
        &reconciliation.unknown_to_client,
    )?;
    write_id_list(text, "logged more than once", &reconciliation.duplicates)?;
    if !reconciliation.mismatches.is_empty() {
        writeln!(
            text,
            "  outcome mismatches: {}",
            reconciliation.mismatches.len()
        )?;
        for mismatch in reconciliation.mismatches.iter().take(MAX_LISTED_IDS) {
            writeln!(
                text,
                "    {}: client {}, server {}",
                visible(&mismatch.request_id),
                visible(&mismatch.client),
                visible(&mismatch.server)
            )?;
        }
        let late = late_answers(&reconciliation.mismatches);
        if late > 0 {
            writeln!(
                text,
                "  note: {late} attempts timed out here but the server answered them: the \
                 answers came after --timeout (network delay or loss?): raise --timeout"
            )?;
        }
    }
    if report.dropped_by_server > 0 {
        writeln!(
            text,
            "  note: the server's log ring dropped {} entries; missing entries may be among them",
            report.dropped_by_server
        )?;
    }
    // A server answers 503 without logging past its --max-connections or while its log file
    // cannot be written, so those attempts are "missing" for a reason worth naming.
    let busy = report
        .attempt_other
        .get(&AttemptOutcome::OtherStatus(503).category())
        .copied()
        .unwrap_or(0);
    if busy > 0 && !reconciliation.missing_on_server.is_empty() {
        writeln!(
            text,
            "  note: {busy} attempts got 503, which the server does not log: past its \
             --max-connections it refuses a connection (lower --concurrency or raise it), and \
             while its log file cannot be written it refuses /getbalance (see its stderr)"
        )?;
    }

    writeln!(text)?;
    match report.verdict {
        Verdict::Pass => writeln!(text, "verdict: PASS"),
        Verdict::Fail => writeln!(
            text,
            "verdict: FAIL ({})",
            report.verdict_reasons.join("; ")
        ),
    }
}

fn write_string_array(out: &mut String, items: &[String]) {
    let mut array = ArrayWriter::new(out);
    for item in items {
        array.string(item);
    }
    array.finish();
}

fn write_count_object(out: &mut String, counts: &BTreeMap<String, u64>) {
    let mut object = ObjectWriter::new(out);
    for (category, count) in counts {
        object.u64(category, *count);
    }
    object.finish();
}

fn write_outcome_counts(out: &mut String, rows: &[DistributionRow]) {
    let mut object = ObjectWriter::new(out);
    for row in rows {
        object.u64(row.outcome.name(), row.actual_count);
    }
    object.finish();
}

fn write_rows(out: &mut String, rows: &[DistributionRow]) {
    let mut array = ArrayWriter::new(out);
    for row in rows {
        let mut object = ObjectWriter::new(array.item());
        object
            .string("outcome", row.outcome.name())
            .f64("expected_probability", row.expected_probability)
            .f64("expected_count", row.expected_count)
            .u64("actual_count", row.actual_count)
            .f64("actual_proportion", row.actual_proportion)
            .f64("interval_low", row.interval.0)
            .f64("interval_high", row.interval.1);
        object.finish();
    }
    array.finish();
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The `--json` document: one object with these members.
///
/// - `version`: the client's version.
/// - `run_id`: the hex run id; every request id is `<run_id>-<request>-<attempt>`.
/// - `target`: the address connected to, e.g. `127.0.0.1:8080`.
/// - `configuration`: `host`, `port`, `count`, `concurrency`, `timeout_ms`, `retries`,
///   `retry_on` (outcome names), `backoff_ms`, `max_backoff_ms`, `interval_ms`,
///   `tolerance_points` (number or null).
/// - `server`: `seed` (number or null) and `probabilities` (outcome name → probability, from
///   `/stats` before the run), `restarted` (whether `/stats` after the run says the server
///   restarted meanwhile; null when it could not be read).
/// - `attempts`: `total`, `counts` (outcome name → count), `other` (category → count, for other
///   statuses like `status 404` and transport errors like `connection refused`), `draws` (the
///   attempts that are outcomes), `rows` (see below), `chi_square` (`statistic`,
///   `degrees_of_freedom`, `p_value`, `method`), `consistent` (p-value ≥ 0.05 and at least
///   one draw; false without a draw, whose chi-square is a trivial 0 with p-value 1),
///   `precision_points` (± half-width of the largest outcome's interval, or null).
/// - `requests`: `total` (requests with an attempt), `never_sent` (without one: the run stopped
///   early), `counts`, `other` (final outcomes; `retry dropped` for a request whose retry the
///   early stop gave up), `draws`, `rows` (expected from the retry theory), `mean_attempts`,
///   `expected_mean_attempts`.
/// - rows are objects: `outcome`, `expected_probability`, `expected_count`, `actual_count`,
///   `actual_proportion`, `interval_low`, `interval_high` (95% Wilson interval, proportions).
/// - `latency_ms`: array of `category`, `count`, `p50`, `p90`, `p99`.
/// - `elapsed_seconds` (wall time of all attempts, backoffs included), `attempts_per_second`.
/// - `stopped_early`: null, or, when the server became unreachable or stopped answering
///   mid-run, `cause` (`unreachable` or `stopped answering`), `failures_in_a_row`, `failure`
///   (the last: `connection refused`, `connect timeout`, `no route to host`, …, `timeout`),
///   `health_check` (why `/health` did not answer, or null), `requests_not_sent`,
///   `retries_dropped`.
/// - `reconciliation`: `server_entries`, `matched`, `not_sent`, `transport_logged`,
///   `transport_unlogged`, `transport_logged_outcomes` (server outcome → count for the logged
///   transport errors), `missing_on_server`, `unknown_to_client`, `duplicates` (arrays of
///   request ids), `mismatches` (array of `request_id`, `client`, `server`), `dropped_by_server`,
///   `clean` (bool; false when not done), `done` (bool: the log could be read after the run),
///   `not_done_because` (why not, or null).
/// - `logs`: the shown server entries: `id`, `time`, `client_ip`, `outcome`, `status` (or null),
///   `request_id` (or null).
/// - `tolerance_violations`: outcome names whose interval lies outside expected ± tolerance.
/// - `verdict_reasons`: why the verdict failed, one line each as in the text report (nothing
///   to judge without a draw, a server that became unreachable, a reconciliation not done, a
///   restart, logs that disagree, hung requests closed by the server, tolerance violations);
///   empty on a pass.
/// - `verdict`: `pass` or `fail`.
pub fn write_json_report(report: &Report, options: &ClientOptions, out: &mut String) {
    let mut document = ObjectWriter::new(out);
    document
        .string("version", env!("CARGO_PKG_VERSION"))
        .string("run_id", &report.run_id)
        .string("target", &report.target);
    {
        let mut configuration = ObjectWriter::new(document.key("configuration"));
        configuration
            .string("host", &options.host)
            .u64("port", u64::from(options.port))
            .u64("count", options.count)
            .u64("concurrency", options.concurrency as u64)
            .f64("timeout_ms", milliseconds(options.timeout))
            .u64("retries", u64::from(options.retries));
        let names: Vec<String> = options
            .retry_on
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        write_string_array(configuration.key("retry_on"), &names);
        configuration
            .f64("backoff_ms", milliseconds(options.backoff))
            .f64("max_backoff_ms", milliseconds(options.max_backoff))
            .f64("interval_ms", milliseconds(options.interval));
        match options.tolerance {
            Some(tolerance) => configuration.f64("tolerance_points", tolerance),
            None => configuration.null("tolerance_points"),
        };
        configuration.finish();
    }
    {
        let mut server = ObjectWriter::new(document.key("server"));
        match report.seed {
            Some(seed) => server.u64("seed", seed),
            None => server.null("seed"),
        };
        {
            let mut probabilities = ObjectWriter::new(server.key("probabilities"));
            for outcome in Outcome::ALL {
                probabilities.f64(outcome.name(), report.probabilities[outcome.index()]);
            }
            probabilities.finish();
        }
        match &report.restart {
            Restart::Unknown => server.null("restarted"),
            Restart::No => server.bool("restarted", false),
            Restart::Yes(_) => server.bool("restarted", true),
        };
        server.finish();
    }
    {
        let mut attempts = ObjectWriter::new(document.key("attempts"));
        attempts.u64("total", report.attempts);
        write_outcome_counts(attempts.key("counts"), &report.attempt_rows);
        write_count_object(attempts.key("other"), &report.attempt_other);
        attempts.u64("draws", report.attempt_draws);
        write_rows(attempts.key("rows"), &report.attempt_rows);
        {
            let mut fit = ObjectWriter::new(attempts.key("chi_square"));
            fit.f64("statistic", report.fit.statistic)
                .u64(
                    "degrees_of_freedom",
                    u64::from(report.fit.degrees_of_freedom),
                )
                .f64("p_value", report.fit.p_value)
                .string("method", report.fit.method.name());
            fit.finish();
        }
        attempts.bool("consistent", is_consistent(report));
        match &report.precision {
            Some(precision) => attempts.f64("precision_points", precision.half_width_points),
            None => attempts.null("precision_points"),
        };
        attempts.finish();
    }
    {
        let mut requests = ObjectWriter::new(document.key("requests"));
        requests
            .u64("total", report.requests)
            .u64("never_sent", report.requests_never_sent);
        write_outcome_counts(requests.key("counts"), &report.request_rows);
        write_count_object(requests.key("other"), &report.request_other);
        requests.u64("draws", report.request_draws);
        write_rows(requests.key("rows"), &report.request_rows);
        requests
            .f64("mean_attempts", report.mean_attempts)
            .f64("expected_mean_attempts", report.expected_mean_attempts);
        requests.finish();
    }
    {
        let mut latency = ArrayWriter::new(document.key("latency_ms"));
        for row in &report.latency {
            let mut object = ObjectWriter::new(latency.item());
            object
                .string("category", &row.category)
                .u64("count", row.count)
                .f64("p50", row.p50)
                .f64("p90", row.p90)
                .f64("p99", row.p99);
            object.finish();
        }
        latency.finish();
    }
    let seconds = report.elapsed.as_secs_f64();
    document.f64("elapsed_seconds", seconds).f64(
        "attempts_per_second",
        if seconds > 0.0 {
            report.attempts as f64 / seconds
        } else {
            0.0
        },
    );
    match &report.stopped {
        Some(cause) => {
            let mut stopped = ObjectWriter::new(document.key("stopped_early"));
            stopped
                .string(
                    "cause",
                    match cause.health_failure {
                        None => "unreachable",
                        Some(_) => "stopped answering",
                    },
                )
                .u64("failures_in_a_row", cause.failures_in_a_row)
                .string("failure", cause.failure)
                .optional_string("health_check", cause.health_failure.as_deref())
                .u64("requests_not_sent", report.requests_never_sent)
                .u64("retries_dropped", report.retries_dropped);
            stopped.finish();
        }
        None => {
            document.null("stopped_early");
        }
    }
    {
        let reconciliation = &report.reconciliation;
        let mut object = ObjectWriter::new(document.key("reconciliation"));
        object
            .u64("server_entries", reconciliation.server_entries)
            .u64("matched", reconciliation.matched)
            .u64("not_sent", reconciliation.not_sent)
            .u64("transport_logged", reconciliation.transport_logged)
            .u64("transport_unlogged", reconciliation.transport_unlogged);
        write_count_object(
            object.key("transport_logged_outcomes"),
            &reconciliation.transport_logged_outcomes,
        );
        write_string_array(
            object.key("missing_on_server"),
            &reconciliation.missing_on_server,
        );
        write_string_array(
            object.key("unknown_to_client"),
            &reconciliation.unknown_to_client,
        );
        write_string_array(object.key("duplicates"), &reconciliation.duplicates);
        {
            let mut mismatches = ArrayWriter::new(object.key("mismatches"));
            for mismatch in &reconciliation.mismatches {
                let mut item = ObjectWriter::new(mismatches.item());
                item.string("request_id", &mismatch.request_id)
                    .string("client", &mismatch.client)
                    .string("server", &mismatch.server);
                item.finish();
            }
            mismatches.finish();
        }
        let done = report.reconciliation_not_done.is_none();
        object
            .u64("dropped_by_server", report.dropped_by_server)
            .bool("clean", done && reconciliation.is_clean())
            .bool("done", done)
            .optional_string(
                "not_done_because",
                report.reconciliation_not_done.as_deref(),
            );
        object.finish();
    }
    {
        let mut logs = ArrayWriter::new(document.key("logs"));
        for entry in &report.shown_entries {
            let mut object = ObjectWriter::new(logs.item());
            object
                .u64("id", entry.id)
                .string("time", &entry.time)
                .string("client_ip", &entry.client_ip)
                .string("outcome", &entry.outcome);
            match entry.status {
                Some(status) => object.u64("status", u64::from(status)),
                None => object.null("status"),
            };
            object.optional_string("request_id", entry.request_id.as_deref());
            object.finish();
        }
        logs.finish();
    }
    let violations: Vec<String> = report
        .tolerance_violations
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    write_string_array(document.key("tolerance_violations"), &violations);
    write_string_array(document.key("verdict_reasons"), &report.verdict_reasons);
    document.string(
        "verdict",
        match report.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        },
    );
    document.finish();
    out.push('\n');
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
    // weights to judge the attempts by, and a restart shows as a changed seed or uptime.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;

    // ---- classification, retry policy, ids -------------------------------------------------

    #[test]
    fn statuses_classify_into_outcomes_or_other() {
        let cases = [
            (200, AttemptOutcome::Server(Outcome::Balance)),
            (403, AttemptOutcome::Server(Outcome::Forbidden)),
            (500, AttemptOutcome::Server(Outcome::ServerError)),
            (404, AttemptOutcome::OtherStatus(404)),
            (503, AttemptOutcome::OtherStatus(503)),
        ];
        for (status, expected) in cases {
            assert_eq!(classify_status(status), expected, "status {status}");
        }
        assert_eq!(classify_status(404).category(), "status 404");
        assert_eq!(
            AttemptOutcome::Server(Outcome::Timeout).category(),
            "timeout"
        );
        assert_eq!(
            AttemptOutcome::Transport(TransportError::ConnectionRefused).category(),
            "connection refused"
        );
    }

    #[test]
    fn retry_policy_follows_retry_on_and_retries_transport_errors_unless_none() {
        let timeout_only = [Outcome::Timeout];
        let cases = [
            (AttemptOutcome::Server(Outcome::Timeout), true),
            (AttemptOutcome::Server(Outcome::ServerError), false),
            (AttemptOutcome::Server(Outcome::Balance), false),
            (AttemptOutcome::OtherStatus(404), false),
            (
                AttemptOutcome::Transport(TransportError::ConnectionReset),
                true,
            ),
        ];
        for (outcome, expected) in cases {
            assert_eq!(is_retried(&outcome, &timeout_only), expected, "{outcome:?}");
        }
        let with_500 = [Outcome::Timeout, Outcome::ServerError];
        assert!(is_retried(
            &AttemptOutcome::Server(Outcome::ServerError),
            &with_500
        ));
        assert!(!is_retried(&AttemptOutcome::Server(Outcome::Timeout), &[]));
        // `--retry-on none`: nothing is retried, transport errors included.
        for error in [
            TransportError::ConnectionReset,
            TransportError::ClosedBeforeResponse,
            TransportError::Malformed("garbage".into()),
        ] {
            assert!(!is_retried(&AttemptOutcome::Transport(error), &[]));
        }
        // Retries on, for any outcome: transport errors are retried like timeouts.
        assert!(is_retried(
            &AttemptOutcome::Transport(TransportError::ConnectionRefused),
            &[Outcome::ServerError]
        ));
    }

    #[test]
    fn backoff_is_full_jitter_under_a_capped_exponential() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let cases = [
            // (attempt, uniform draw, expected delay in ms)
            (1, 0.0, 0.0),
            (1, 0.5, 50.0),
            (2, 0.5, 100.0),
            (3, 0.999, 399.6),
            (5, 1.0, 1600.0),
            (6, 1.0, 2000.0),
            (200, 0.5, 1000.0),
            (u32::MAX, 0.25, 500.0),
            (1, f64::NAN, 0.0),
        ];
        for (attempt, uniform, expected) in cases {
            let delay = backoff_delay(attempt, base, cap, uniform).as_secs_f64() * 1000.0;
            assert!(
                (delay - expected).abs() < 1e-6,
                "attempt {attempt}: {delay}"
            );
        }
        let mut rng = Rng::with_seed(42);
        for attempt in 1..=10 {
            let ceiling = (100.0 * 2f64.powi(attempt as i32 - 1)).min(2000.0);
            let delay = backoff_delay(attempt, base, cap, rng.next_f64()).as_secs_f64() * 1000.0;
            assert!(
                (0.0..=ceiling).contains(&delay),
                "attempt {attempt}: {delay}"
            );
        }
        assert_eq!(backoff_delay(3, Duration::ZERO, cap, 0.7), Duration::ZERO);
    }

    #[test]
    fn request_ids_are_run_request_attempt() {
        assert_eq!(request_id("0a1b2c3d", 17, 2), "0a1b2c3d-17-2");
        assert_eq!(format_run_id(0x0123_4567_89ab_cdef), "01234567");
        let run = fresh_run_id();
        assert_eq!(run.len(), RUN_ID_DIGITS);
        assert!(run
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn host_header_brackets_ipv6_and_leaves_out_a_zone_id() {
        let cases = [
            ("127.0.0.1", 8080, "127.0.0.1:8080"),
            ("localhost", 80, "localhost:80"),
            ("::1", 8080, "[::1]:8080"),
            ("[::1]", 8080, "[::1]:8080"),
            ("fe80::1", 1, "[fe80::1]:1"),
            // A zone id is this machine's business: a raw '%' makes a strict server say 400.
            ("fe80::1%eth0", 8080, "[fe80::1]:8080"),
            ("[fe80::1%eth0]", 8080, "[fe80::1]:8080"),
            ("fe80::a:b%2", 80, "[fe80::a:b]:80"),
        ];
        for (host, port, expected) in cases {
            assert_eq!(host_header(host, port), expected);
        }
    }

    #[test]
    fn an_unreachable_server_gets_a_hint_by_the_kind_of_failure() {
        let remote = SocketAddr::from(([192, 0, 2, 10], 8080));
        let link_local: SocketAddr = "[fe80::1]:8080".parse().unwrap();
        let refused = unreachable_hint(&io::ErrorKind::ConnectionRefused.into(), &remote);
        assert_eq!(
            refused,
            Some(
                "is a server running on that port, and listening on this address? \
                 (a server on another machine needs 'serve --host 0.0.0.0')"
            )
        );
        let refused_v6 = unreachable_hint(&io::ErrorKind::ConnectionRefused.into(), &link_local);
        assert!(
            refused_v6.is_some_and(|hint| hint.ends_with("needs 'serve --host ::')")),
            "{refused_v6:?}"
        );
        let silent = Some(
            "no answer: a wrong address, a firewall dropping packets, or a server that is hung \
             (its accept queue full)?",
        );
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::WouldBlock] {
            assert_eq!(unreachable_hint(&kind.into(), &remote), silent, "{kind:?}");
        }
        for kind in [
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
        ] {
            let hint = unreachable_hint(&kind.into(), &link_local);
            assert!(
                hint.is_some_and(|hint| hint.starts_with("no route to the server")),
                "{kind:?}: {hint:?}"
            );
        }
        let invalid = io::Error::from(io::ErrorKind::InvalidInput);
        assert!(unreachable_hint(&invalid, &link_local)
            .is_some_and(|hint| hint.contains("fe80::1%eth0")));
        assert_eq!(unreachable_hint(&invalid, &remote), None);
        // The hint is the second line under main's `unreliable: error: `.
        let error = ClientError::Unreachable {
            address: remote.to_string(),
            reason: "timed out".into(),
            hint: silent,
        };
        assert_eq!(
            error.to_string(),
            "cannot reach 192.0.2.10:8080: timed out\n\
             hint: no answer: a wrong address, a firewall dropping packets, or a server that is \
             hung (its accept queue full)?"
        );
    }

    #[test]
    fn getbalance_request_is_exactly_the_documented_bytes() {
        let expected = format!(
            "GET /getbalance HTTP/1.1\r\nHost: [::1]:8080\r\nX-Request-Id: ab-1-1\r\n\
             Accept: text/html\r\nUser-Agent: unreliable-client/{}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        let mut request = String::from("left over from the previous attempt");
        let id = RequestId {
            run_id: "ab",
            request: 1,
            attempt: 1,
        };
        write_getbalance_request(&mut request, "[::1]:8080", id);
        assert_eq!(request, expected);
    }

    #[test]
    fn idle_connections_past_the_reuse_limit_are_replaced() {
        let now = Instant::now() + Duration::from_secs(60);
        assert!(is_fresh(now - MAX_IDLE_REUSE, now));
        assert!(!is_fresh(
            now - MAX_IDLE_REUSE - Duration::from_millis(1),
            now
        ));
        assert!(is_fresh(now, now - Duration::from_secs(1)));
    }

    // ---- scheduling a worker -----------------------------------------------------------------

    fn retry(due: Instant, request: u64, attempt: u32) -> PendingRetry {
        PendingRetry {
            due,
            request,
            attempt,
        }
    }

    #[test]
    fn a_worker_sends_a_due_retry_first_then_fresh_work_and_sleeps_only_when_none_is_left() {
        let now = Instant::now() + Duration::from_secs(60);
        let ms = Duration::from_millis;
        let queue = [
            retry(now + ms(30), 4, 2),
            retry(now - ms(5), 7, 3),
            retry(now - ms(20), 9, 2),
            retry(now + ms(10), 2, 4),
        ];
        let cases: [(&[PendingRetry], bool, NextStep); 9] = [
            // The earliest due retry wins, fresh requests left or not.
            (&queue, true, NextStep::Retry(2)),
            (&queue, false, NextStep::Retry(2)),
            // Due exactly now counts as due.
            (&[retry(now, 5, 2)], true, NextStep::Retry(0)),
            // Equal due times: the lower request, whatever the queue order.
            (
                &[retry(now - ms(1), 8, 2), retry(now - ms(1), 3, 2)],
                true,
                NextStep::Retry(1),
            ),
            // Nothing due: fresh work instead of waiting out the backoff.
            (&queue[..1], true, NextStep::Fresh),
            (&[queue[0], queue[3]], true, NextStep::Fresh),
            (&[], true, NextStep::Fresh),
            // No fresh work left: sleep until the earliest retry falls due.
            (
                &[queue[0], queue[3]],
                false,
                NextStep::SleepUntil(now + ms(10)),
            ),
            (&[], false, NextStep::Finished),
        ];
        for (pending, fresh_left, expected) in cases {
            assert_eq!(
                next_step(pending, fresh_left, now),
                expected,
                "{pending:?} fresh left {fresh_left}"
            );
        }
    }

    #[test]
    fn the_read_timeout_is_set_only_when_it_changes() {
        let timeout = Duration::from_millis(200);
        let ms = Duration::from_millis;
        let cases = [
            // A new connection gets the whole timeout.
            (None, timeout, Some(timeout)),
            // The first read of an attempt: what is left is within the slack of the whole.
            (Some(timeout), timeout, None),
            (Some(timeout), timeout - READ_TIMEOUT_SLACK, None),
            // A later read gets exactly what is left, so the deadline holds.
            (Some(timeout), ms(150), Some(ms(150))),
            (Some(ms(150)), ms(150), None),
            (Some(ms(150)), ms(120), Some(ms(120))),
            // The next attempt on the same connection restores the whole timeout once.
            (Some(ms(120)), timeout, Some(timeout)),
            // A socket timeout of zero would mean "block forever": never asked for.
            (Some(ms(3)), Duration::ZERO, None),
        ];
        for (current, remaining, expected) in cases {
            assert_eq!(
                read_timeout_change(current, remaining, timeout),
                expected,
                "current {current:?}, remaining {remaining:?}"
            );
        }
    }

    // ---- assembling responses ---------------------------------------------------------------

    fn assemble(chunks: &[&[u8]], keep_body: bool) -> Result<Option<Assembled>, AssemblyError> {
        let mut assembler = ResponseAssembler::new(MAX_RESPONSE_BYTES, keep_body);
        for chunk in chunks {
            if let Some(done) = assembler.push(chunk)? {
                return Ok(Some(done));
            }
        }
        Ok(None)
    }

    #[test]
    fn content_length_response_completes_only_with_its_whole_body() {
        let response = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!";
        for split in 0..response.len() {
            let result = assemble(&[&response[..split]], true);
            assert_eq!(result, Ok(None), "prefix of {split} bytes");
        }
        let done = assemble(&[&response[..20], &response[20..]], true)
            .unwrap()
            .unwrap();
        assert_eq!(done.status, 403);
        assert!(done.keep_alive);
        assert_eq!(done.body, b"nope!");
        assert!(!done.trailing_bytes);
        let dropped = assemble(&[response], false).unwrap().unwrap();
        assert!(dropped.body.is_empty());
    }

    #[test]
    fn chunked_and_close_delimited_bodies_are_decoded() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let done = assemble(&[&chunked[..50], &chunked[50..]], true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (done.status, done.body.as_slice()),
            (200, &b"hello world"[..])
        );
        assert!(!done.trailing_bytes);

        let mut assembler = ResponseAssembler::new(MAX_RESPONSE_BYTES, true);
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nsome body";
        assert_eq!(assembler.push(until_close), Ok(None));
        let done = assembler.finish_at_close().unwrap();
        assert_eq!(done.body, b"some body");
        assert!(!done.keep_alive);
    }

    #[test]
    fn closes_malformed_bytes_and_extra_bytes_are_named() {
        let mut empty = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
        assert_eq!(
            empty.finish_at_close(),
            Err(AssemblyError::ClosedBeforeResponse)
        );

        let mut half = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
        assert_eq!(half.push(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(
            half.finish_at_close(),
            Err(AssemblyError::ClosedMidResponse)
        );

        let mut short_body = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
        assert_eq!(
            short_body.push(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            Ok(None)
        );
        assert_eq!(
            short_body.finish_at_close(),
            Err(AssemblyError::ClosedMidResponse)
        );

        let garbage = assemble(&[b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], false);
        assert!(
            matches!(garbage, Err(AssemblyError::Malformed(_))),
            "{garbage:?}"
        );

        let two = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200";
        let done = assemble(&[two], false).unwrap().unwrap();
        assert_eq!(done.status, 500);
        assert!(done.trailing_bytes);

        let closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(!assemble(&[closing], false).unwrap().unwrap().keep_alive);
    }

    #[test]
    fn a_reset_assembler_reads_the_next_response_as_a_new_one_would() {
        let responses: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbad!",
        ];
        let mut reused = ResponseAssembler::new(MAX_RESPONSE_BYTES, true);
        // Left mid-response by an attempt that timed out.
        assert_eq!(reused.push(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        for response in responses {
            reused.reset();
            let (head, tail) = response.split_at(20);
            assert_eq!(reused.push(head), Ok(None));
            let again = reused.push(tail).unwrap();
            assert_eq!(again, assemble(&[response], true).unwrap());
        }
    }

    #[test]
    fn interim_responses_are_skipped_and_the_final_one_classified() {
        let early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n";
        let final_answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!";
        let mut both = early_hints.to_vec();
        both.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        both.extend_from_slice(final_answer);
        // Every prefix is incomplete, whichever response it ends in.
        for split in 0..both.len() {
            assert_eq!(assemble(&[&both[..split]], true), Ok(None), "{split} bytes");
        }
        for split in 0..both.len() {
            let done = assemble(&[&both[..split], &both[split..]], true)
                .unwrap()
                .unwrap();
            assert_eq!((done.status, done.body.as_slice()), (403, &b"no!"[..]));
            assert!(done.keep_alive && !done.trailing_bytes, "{split}");
        }

        // As many as MAX_INTERIM_RESPONSES are skipped; one more is an endless stream.
        let hundred = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut most = hundred.repeat(MAX_INTERIM_RESPONSES);
        most.extend_from_slice(final_answer);
        assert_eq!(assemble(&[&most], false).unwrap().unwrap().status, 403);
        let endless = hundred.repeat(MAX_INTERIM_RESPONSES + 1);
        let mut assembler = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
        let error = assembler.push(&endless).unwrap_err();
        assert_eq!(
            error,
            AssemblyError::Malformed(format!(
                "more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
            ))
        );
        // Interim responses count towards the size limit of the whole.
        let mut small = ResponseAssembler::new(hundred.len() * 2, false);
        assert_eq!(small.push(&hundred.repeat(2)), Ok(None));
        assert_eq!(small.push(b"H"), Err(AssemblyError::TooLarge));

        // 101 switches protocols, which a plain GET never asks for.
        let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert!(
            matches!(assemble(&[switching], false), Err(AssemblyError::Malformed(detail))
                if detail.contains("101")),
        );
    }

    #[test]
    fn an_attempt_answered_with_early_hints_gets_the_final_answer_on_a_kept_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = loopback(listener.local_addr().unwrap().port());
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut buffer = Vec::new();
            while read_head(&mut stream, &mut buffer).is_some() {
                let reply = "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n\
                             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        });
        let mut connection = None;
        let mut scratch = Scratch::new();
        for attempt in 1..=3 {
            let id = RequestId {
                run_id: "ab",
                request: 1,
                attempt,
            };
            let timeout = Duration::from_secs(2);
            let outcome = exchange(&target, timeout, &mut connection, &mut scratch, id);
            assert_eq!(outcome, (AttemptOutcome::Server(Outcome::Balance), true));
            // Kept: the 200 was read to its end, nothing of it is left for the next attempt.
            assert!(connection.is_some(), "attempt {attempt}");
        }
    }

    #[test]
    fn responses_past_the_size_limit_are_refused() {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MAX_RESPONSE_BYTES}\r\n\r\n");
        let mut assembler = ResponseAssembler::new(MAX_RESPONSE_BYTES, false);
        assert_eq!(assembler.push(head.as_bytes()), Ok(None));
        let body = vec![b'x'; MAX_RESPONSE_BYTES - head.len()];
        assert_eq!(assembler.push(&body), Ok(None));
        assert_eq!(assembler.push(b"x"), Err(AssemblyError::TooLarge));
        assert!(matches!(
            AssemblyError::TooLarge.into_transport(MAX_RESPONSE_BYTES),
            TransportError::Malformed(detail) if detail.contains("1048576")
        ));
    }

    // ---- theory ------------------------------------------------------------------------------

    const OWNER: [f64; Outcome::COUNT] = [0.2, 0.2, 0.1, 0.5];

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "{what}: {actual} != {expected}"
        );
    }

    #[test]
    fn final_outcomes_with_timeout_retries_follow_the_closed_form() {
        let finals = final_outcome_probabilities(&OWNER, &[Outcome::Timeout], 3);
        assert_close(finals[Outcome::Timeout.index()], 0.2f64.powi(4), "timeout");
        let reach = (1.0 - 0.2f64.powi(4)) / 0.8;
        assert_close(finals[Outcome::Forbidden.index()], 0.2 * reach, "403");
        assert_close(finals[Outcome::ServerError.index()], 0.1 * reach, "500");
        assert_close(finals[Outcome::Balance.index()], 0.5 * reach, "200");
        assert_close(finals.iter().sum(), 1.0, "sum");
        assert_close(
            expected_attempts_per_request(0.2, 3),
            1.248,
            "mean attempts",
        );
    }

    #[test]
    fn final_outcomes_generalise_to_any_retried_set() {
        let retried = [Outcome::Timeout, Outcome::ServerError];
        let finals = final_outcome_probabilities(&OWNER, &retried, 2);
        assert_close(retried_probability(&OWNER, &retried), 0.3, "q");
        assert_close(finals[Outcome::Timeout.index()], 0.2 * 0.09, "timeout");
        assert_close(finals[Outcome::ServerError.index()], 0.1 * 0.09, "500");
        assert_close(finals[Outcome::Forbidden.index()], 0.2 * 0.973 / 0.7, "403");
        assert_close(finals.iter().sum(), 1.0, "sum");
        // Nothing retried: one attempt, the weights themselves.
        assert_eq!(final_outcome_probabilities(&OWNER, &[], 5), OWNER);
        assert_close(expected_attempts_per_request(0.0, 5), 1.0, "q = 0");
        // Everything retried: every request uses all its attempts.
        assert_close(expected_attempts_per_request(1.0, 4), 5.0, "q = 1");
        let all = final_outcome_probabilities(&OWNER, &Outcome::ALL, 4);
        for outcome in Outcome::ALL {
            assert_close(all[outcome.index()], OWNER[outcome.index()], outcome.name());
        }
    }

    // ---- reconciliation ----------------------------------------------------------------------

    fn attempt(request: u64, attempt: u32, outcome: AttemptOutcome, sent: bool) -> AttemptRecord {
        AttemptRecord {
            request,
            attempt,
            outcome,
            sent,
            latency: Duration::from_millis(u64::from(attempt) * 10 + request),
        }
    }

    fn entry(id: u64, request_id: Option<&str>, outcome: &str) -> LogEntry {
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

    #[test]
    fn reconciliation_sorts_every_attempt_and_entry_into_one_bucket() {
        use AttemptOutcome::{Server, Transport};
        let attempts = [
            attempt(1, 1, Server(Outcome::Timeout), true),
            attempt(1, 2, Server(Outcome::Balance), true),
            attempt(2, 1, Transport(TransportError::ConnectionRefused), false),
            attempt(2, 2, Server(Outcome::Forbidden), true),
            attempt(3, 1, Server(Outcome::ServerError), true),
            attempt(4, 1, Server(Outcome::Balance), true),
            attempt(5, 1, Transport(TransportError::ClosedBeforeResponse), true),
            attempt(5, 2, Transport(TransportError::ConnectionReset), true),
            attempt(5, 3, Server(Outcome::Balance), true),
            attempt(6, 1, Server(Outcome::Balance), true),
            attempt(7, 1, Transport(TransportError::ConnectTimeout), false),
        ];
        let entries = [
            entry(1, Some("r-1-1"), "timeout"),
            entry(2, Some("r-1-2"), "200"),
            entry(3, Some("r-2-2"), "403"),
            entry(4, Some("r-3-1"), "200"),
            // r-4-1 missing
            entry(5, Some("r-5-2"), "timeout"),
            entry(6, Some("r-5-3"), "200"),
            entry(7, Some("r-6-1"), "200"),
            entry(8, Some("r-6-1"), "200"),
            entry(9, Some("r-9-1"), "200"),
            entry(10, Some("r-7-1"), "403"),
            entry(11, Some("other-1-1"), "200"),
            entry(12, None, "200"),
        ];
        let result = reconcile("r", &attempts, &entries);
        assert_eq!(result.server_entries, 10);
        assert_eq!(result.matched, 4);
        assert_eq!(result.not_sent, 1);
        assert_eq!(result.transport_logged, 1);
        assert_eq!(
            result.transport_logged_outcomes,
            BTreeMap::from([("timeout".to_string(), 1)])
        );
        assert_eq!(result.transport_unlogged, 1);
        assert_eq!(result.missing_on_server, ["r-4-1"]);
        assert_eq!(result.unknown_to_client, ["r-9-1"]);
        assert_eq!(result.duplicates, ["r-6-1"]);
        assert_eq!(
            result.mismatches,
            [
                Mismatch {
                    request_id: "r-3-1".into(),
                    client: "500".into(),
                    server: "200".into()
                },
                Mismatch {
                    request_id: "r-7-1".into(),
                    client: "not sent (connect timeout)".into(),
                    server: "403".into()
                },
            ]
        );
        assert!(!result.is_clean());
        let total = result.matched
            + result.not_sent
            + result.transport_logged
            + result.transport_unlogged
            + (result.missing_on_server.len() + result.mismatches.len() + result.duplicates.len())
                as u64;
        assert_eq!(total, attempts.len() as u64);
    }

    #[test]
    fn a_faithful_log_reconciles_clean() {
        let attempts = [
            attempt(1, 1, AttemptOutcome::Server(Outcome::Balance), true),
            attempt(2, 1, AttemptOutcome::OtherStatus(404), true),
        ];
        let mut not_found = entry(2, Some("r-2-1"), "200");
        not_found.status = Some(404);
        let entries = [entry(1, Some("r-1-1"), "200"), not_found];
        let result = reconcile("r", &attempts, &entries);
        assert!(result.is_clean(), "{result:?}");
        assert_eq!(result.matched, 2);
        assert!(reconcile("r", &[], &[]).is_clean());
    }

    // ---- rendering ---------------------------------------------------------------------------

    #[test]
    fn bars_show_every_cell_of_the_actual_share_with_the_marker_between_cells() {
        let cases = [
            // The audit's case: 10.0% and 13.4% against 10% drew the same `####|`.
            (0.100, 0.1, "####|".to_string()),
            (0.134, 0.1, "####|#".to_string()),
            (0.05, 0.1, "##  |".to_string()),
            (0.0, 0.25, format!("{}|", " ".repeat(BAR_WIDTH / 4))),
            (0.1, 0.0, format!("|{}", "#".repeat(BAR_WIDTH / 10))),
            (
                1.0,
                0.5,
                format!(
                    "{}|{}",
                    "#".repeat(BAR_WIDTH / 2),
                    "#".repeat(BAR_WIDTH / 2)
                ),
            ),
            (1.0, 1.0, format!("{}|", "#".repeat(BAR_WIDTH))),
            (2.0, 2.0, format!("{}|", "#".repeat(BAR_WIDTH))),
            (f64::NAN, 0.5, format!("{}|", " ".repeat(BAR_WIDTH / 2))),
        ];
        for (actual, expected, drawn) in cases {
            assert_eq!(bar(actual, expected), drawn, "{actual} against {expected}");
        }
        // Whatever the expectation, each cell of the actual share shows: bars one cell apart
        // differ, and there is exactly one marker.
        for marker in 0..=BAR_WIDTH {
            let expected = marker as f64 / BAR_WIDTH as f64;
            for filled in 0..=BAR_WIDTH {
                let drawn = bar(filled as f64 / BAR_WIDTH as f64, expected);
                assert_eq!(drawn.matches('#').count(), filled, "{drawn:?}");
                assert_eq!(drawn.matches('|').count(), 1, "{drawn:?}");
                assert!(drawn.chars().count() <= BAR_WIDTH + 1, "{drawn:?}");
            }
        }
    }

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

    #[test]
    fn precision_asks_for_the_worst_case_draws_even_when_one_outcome_took_every_draw() {
        // The 1.96² · ¼ / 0.01² = 9,604 draws of the README, whatever the observed mix; before,
        // a 0% or 100% share gave "~0 attempts give ±1".
        let cases: [([u64; Outcome::COUNT], f64); 4] = [
            ([0, 0, 0, 20], 8.1),
            ([20, 0, 0, 0], 8.1),
            ([5, 5, 0, 10], 20.1),
            ([2000, 2000, 1000, 5000], 1.0),
        ];
        for (counts, half_width) in cases {
            let draws: u64 = counts.iter().sum();
            let rows = distribution(&counts, &OWNER);
            let found = precision(&rows, draws).unwrap();
            assert_eq!(found.draws, draws);
            assert_eq!(found.draws_for_one_point, 9600, "{counts:?}");
            assert!(
                (found.half_width_points - half_width).abs() < 0.05,
                "{counts:?}: ±{}",
                found.half_width_points
            );
        }
        assert_eq!(precision(&distribution(&[0; 4], &OWNER), 0), None);
    }

    #[test]
    fn server_text_shows_controls_and_invisible_format_characters_as_escapes() {
        let cases = [
            ("127.0.0.1", "127.0.0.1"),
            ("ab12cd34-7-1", "ab12cd34-7-1"),
            ("Grüße, 世界 😀 ﬁ", "Grüße, 世界 😀 ﬁ"),
            ("\x1b[31mRED\x1b[0m", "\\u{1b}[31mRED\\u{1b}[0m"),
            (
                "\0\x01\x07\t\n\r\x1f",
                "\\u{0}\\u{1}\\u{7}\\u{9}\\u{a}\\u{d}\\u{1f}",
            ),
            ("del\x7f", "del\\u{7f}"),
            // C1 controls, CSI among them.
            (
                "\u{80}\u{85}\u{9b}31m\u{9f}",
                "\\u{80}\\u{85}\\u{9b}31m\\u{9f}",
            ),
            // Bidi marks, embeddings, overrides and isolates.
            ("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}"),
            ("a\u{202a}b\u{202e}c", "a\\u{202a}b\\u{202e}c"),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
            // Invisible: zero widths, joiners, separators, BOM, soft hyphen, tags, fillers.
            (
                "\u{200b}\u{200d}\u{2060}\u{feff}\u{ad}",
                "\\u{200b}\\u{200d}\\u{2060}\\u{feff}\\u{ad}",
            ),
            ("\u{2028}\u{2029}", "\\u{2028}\\u{2029}"),
            (
                "\u{e0041}\u{e007f}\u{3164}\u{fe0f}",
                "\\u{e0041}\\u{e007f}\\u{3164}\\u{fe0f}",
            ),
            // A backslash is doubled, so no text can pass for an escape.
            ("\\u{1b}", "\\\\u{1b}"),
            ("", ""),
        ];
        for (raw, shown) in cases {
            assert_eq!(visible(raw).to_string(), shown, "{raw:?}");
        }
        for code in (0..0x20).chain(0x7f..0xa0) {
            let control = char::from_u32(code).unwrap().to_string();
            assert_eq!(visible(&control).to_string(), format!("\\u{{{code:x}}}"));
        }
        // Sorted and apart, as the binary search needs.
        for pair in INVISIBLE_CHARACTERS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        for range in INVISIBLE_CHARACTERS {
            for character in [range.0, range.1] {
                let raw = character.to_string();
                assert!(visible(&raw).to_string().starts_with("\\u{"), "{raw:?}");
            }
        }
    }

    #[test]
    fn the_text_report_escapes_every_server_string_and_json_keeps_them_exact() {
        use AttemptOutcome::{Server, Transport};
        let hostile_time = "2024\n\r\x07\u{1b}[2J";
        let hostile_ip = "\u{1}\u{2029}\u{202e}";
        let injected = "feed0123-\u{9b}31mINJECT\u{9b}0m\u{202e}-1";
        let attempts = [
            attempt(1, 1, Server(Outcome::Balance), true),
            attempt(2, 1, Transport(TransportError::ClosedBeforeResponse), true),
            attempt(3, 1, Transport(TransportError::ConnectionRefused), false),
        ];
        let mut entries = vec![
            entry(1, Some("feed0123-1-1"), "2\u{1b}[0m00"),
            entry(2, Some("feed0123-2-1"), "time\u{200f}out\x7f"),
            entry(3, Some(injected), "200"),
        ];
        entries[2].time = hostile_time.into();
        entries[2].client_ip = hostile_ip.into();
        let options = ClientOptions {
            show_logs: ShowLogs::All,
            ..ClientOptions::default()
        };
        let report = report_of(&options, &attempts, entries);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        let escaped_id = "feed0123-\\u{9b}31mINJECT\\u{9b}0m\\u{202e}-1";
        for expected in [
            // The shown log: time, address, outcome and request id.
            format!(
                "  2024\\u{{a}}\\u{{d}}\\u{{7}}\\u{{1b}}[2J - \\u{{1}}\\u{{2029}}\\u{{202e}} - \
                 200 OK  [{escaped_id}]\n"
            ),
            "- 127.0.0.1 - 2\\u{1b}[0m00  [feed0123-1-1]\n".into(),
            // Entries the client never sent, mismatches, and what the server logged.
            format!("unknown to the client: 1 ({escaped_id})\n"),
            "feed0123-1-1: client 200, server 2\\u{1b}[0m00\n".into(),
            "logged those transport errors as: time\\u{200f}out\\u{7f} 1\n".into(),
        ] {
            assert!(text.contains(&expected), "no {expected:?} in\n{text}");
        }
        let raw = ['\0', '\r', '\x07', '\x1b', '\x7f', '\u{1}', '\u{9b}'];
        let invisible = ['\u{200f}', '\u{202e}', '\u{2029}'];
        for character in raw.iter().chain(&invisible) {
            assert!(!text.contains(*character), "raw {character:?} in\n{text}");
        }

        // The JSON document escapes by its own rules and keeps every string exact.
        let mut json_text = String::new();
        write_json_report(&report, &options, &mut json_text);
        let value = json::decode(&json_text).unwrap();
        let logs = value.get("logs").and_then(Value::as_array).unwrap();
        let injected_entry = &logs[2];
        assert_eq!(
            injected_entry.get("time").and_then(Value::as_str),
            Some(hostile_time)
        );
        assert_eq!(
            injected_entry.get("client_ip").and_then(Value::as_str),
            Some(hostile_ip)
        );
        assert_eq!(
            injected_entry.get("request_id").and_then(Value::as_str),
            Some(injected)
        );
    }

    #[test]
    fn id_lists_stop_at_the_listing_limit() {
        let ids: Vec<String> = (1..=MAX_LISTED_IDS + 3)
            .map(|n| format!("r-{n}-1"))
            .collect();
        let mut text = String::new();
        write_id_list(&mut text, "missing", &ids).unwrap();
        assert!(text.contains(&format!("r-{MAX_LISTED_IDS}-1")));
        assert!(!text.contains(&format!("r-{}-1", MAX_LISTED_IDS + 1)));
        assert!(text.contains("… 3 more"), "{text}");
    }

    fn synthetic_report(options: &ClientOptions) -> Report {
        let attempts = synthetic_attempts();
        let entries = faithful_entries(&attempts);
        report_of(options, &attempts, entries)
    }

    /// 100 requests; request k's first attempt follows a fixed 20/20/10/50 cycle, and
    /// timeouts are retried once into a 200.
    fn synthetic_attempts() -> Vec<AttemptRecord> {
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
    fn faithful_entries(attempts: &[AttemptRecord]) -> Vec<LogEntry> {
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
    fn owner_stats() -> ServerStats {
        ServerStats {
            seed: Some(123),
            probabilities: OWNER,
            total: Some(0),
            uptime_seconds: Some(1.0),
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
    fn report_from(options: &ClientOptions, sent: &Sent, account: &ServerAccount) -> Report {
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
    fn report_of(
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

    #[test]
    fn text_report_has_the_expected_rows() {
        let options = ClientOptions {
            show_logs: ShowLogs::Last(2),
            ..ClientOptions::default()
        };
        let report = synthetic_report(&options);
        assert_eq!(report.verdict, Verdict::Pass);
        assert_eq!(report.attempts, 120);
        assert_eq!(report.attempt_draws, 120);
        assert_eq!(report.reconciliation.matched, 120);
        assert_eq!(report.shown_entries.len(), 2);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        for expected in [
            "run feed0123 against 127.0.0.1:8080",
            "server seed 123",
            "Per attempt (each attempt is one draw): 120 attempts, 120 draws",
            "Per logical request",
            "mean attempts per request 1.200 (theory 1.248)",
            "matched 120, not sent 0",
            "- 127.0.0.1 - Timeout occurred  [feed0123-100-1]",
            "- 127.0.0.1 - 200 OK  [feed0123-100-2]",
            "the mix is consistent with the configured weights",
            "precision: with 120 attempts each percentage is known to about ±",
            "points; ~9,600 attempts give ±1",
            "verdict: PASS",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // Per attempt: 20 timeouts of 120 draws against an expected 24.
        let row = text
            .lines()
            .find(|line| line.trim_start().starts_with("timeout "))
            .unwrap();
        assert!(
            row.contains("20.0%") && row.contains("24.0") && row.contains("16.7%"),
            "{row}"
        );
    }

    #[test]
    fn tolerance_and_mismatches_fail_the_verdict() {
        let strict = ClientOptions {
            tolerance: Some(0.5),
            ..ClientOptions::default()
        };
        // 60 of 120 draws are 200 (50%); the 403 share is 16.7% against 20%.
        let report = synthetic_report(&strict);
        assert_eq!(report.tolerance_violations, Vec::<Outcome>::new());
        let row = DistributionRow {
            outcome: Outcome::Balance,
            expected_probability: 0.5,
            expected_count: 500.0,
            actual_count: 700,
            actual_proportion: 0.7,
            interval: stats::wilson_interval(700, 1000, CONFIDENCE),
        };
        assert!(is_outside_tolerance(&row, 1000, 5.0));
        assert!(!is_outside_tolerance(&row, 1000, 25.0));
        assert!(!is_outside_tolerance(&row, 0, 0.0));

        let attempts = synthetic_attempts();
        let mut entries = faithful_entries(&attempts);
        entries.retain(|entry| entry.request_id.as_deref() != Some("feed0123-1-1"));
        let report = report_of(&ClientOptions::default(), &attempts, entries);
        assert_eq!(report.verdict, Verdict::Fail);
        let mut text = String::new();
        write_text_report(&report, &ClientOptions::default(), &mut text).unwrap();
        assert!(
            text.contains("missing on the server: 1 (feed0123-1-1)"),
            "{text}"
        );
        assert!(
            text.contains("verdict: FAIL (client and server logs disagree)"),
            "{text}"
        );
    }

    #[test]
    fn a_run_without_a_draw_fails_and_names_what_its_attempts_ended_in() {
        use AttemptOutcome::{OtherStatus, Transport};
        let reset = || Transport(TransportError::ConnectionReset);
        let closed = || Transport(TransportError::ClosedBeforeResponse);
        let all = "nothing to judge, all 4 attempts ended in transport errors: \
                   closed before a response 1, connection reset 3";
        let cases: [(Vec<AttemptOutcome>, &str); 4] = [
            (vec![reset(), reset(), closed(), reset()], all),
            (
                vec![OtherStatus(404), reset()],
                "nothing to judge, none of the 2 attempts got an outcome of the weights: \
                 connection reset 1, status 404 1",
            ),
            (
                vec![reset()],
                "nothing to judge, the only attempt ended in a transport error: \
                 connection reset 1",
            ),
            (
                vec![OtherStatus(404)],
                "nothing to judge, the only attempt got no outcome of the weights: status 404 1",
            ),
        ];
        // A tolerance cannot catch it: every interval is [0%, 100%] without a draw.
        let options = ClientOptions {
            tolerance: Some(1.0),
            ..ClientOptions::default()
        };
        for (outcomes, reason) in cases {
            let attempts: Vec<AttemptRecord> = outcomes
                .into_iter()
                .enumerate()
                .map(|(index, outcome)| attempt(index as u64 + 1, 1, outcome, true))
                .collect();
            // The server logged the answered attempts with their status, and none of the
            // transport errors (which a reset after sending may leave unlogged).
            let entries: Vec<LogEntry> = attempts
                .iter()
                .filter_map(|a| match a.outcome {
                    OtherStatus(status) => {
                        let id = request_id("feed0123", a.request, a.attempt);
                        let mut logged = entry(a.request, Some(&id), "200");
                        logged.status = Some(status);
                        Some(logged)
                    }
                    _ => None,
                })
                .collect();
            let report = report_of(&options, &attempts, entries);
            assert_eq!(report.attempt_draws, 0);
            assert!(report.tolerance_violations.is_empty());
            assert!(
                report.reconciliation.is_clean(),
                "{:?}",
                report.reconciliation
            );
            assert_eq!(report.verdict, Verdict::Fail, "{reason}");
            assert_eq!(report.verdict_reasons, [reason]);

            let mut text = String::new();
            write_text_report(&report, &options, &mut text).unwrap();
            assert!(text.contains(&format!("\n  {reason}\n")), "{text}");
            assert!(
                text.contains(&format!("verdict: FAIL ({reason})")),
                "{text}"
            );
            assert!(!text.contains("the mix is"), "{text}");

            let mut json_text = String::new();
            write_json_report(&report, &options, &mut json_text);
            let value = json::decode(&json_text).unwrap();
            let attempts = value.get("attempts").unwrap();
            assert_eq!(attempts.get("consistent"), Some(&Value::Bool(false)));
            assert_eq!(value.get("verdict").and_then(Value::as_str), Some("fail"));
            let reasons = value.get("verdict_reasons").and_then(Value::as_array);
            assert_eq!(reasons, Some(&[Value::String(reason.into())][..]));
        }
        assert_eq!(
            nothing_to_judge(0, 0, &BTreeMap::new()),
            "nothing to judge, no attempt was made"
        );
    }

    #[test]
    fn hung_requests_the_server_closed_first_fail_the_verdict() {
        use AttemptOutcome::{Server, Transport};
        // Two more requests that hung on the server, which closed them before the client's
        // timeout and logged them as timeouts: draws the tables could not count.
        let mut attempts = synthetic_attempts();
        for request in [101, 102] {
            let closed = Transport(TransportError::ClosedBeforeResponse);
            attempts.push(attempt(request, 1, closed, true));
            attempts.push(attempt(request, 2, Server(Outcome::Balance), true));
        }
        let mut entries = faithful_entries(&attempts);
        for entry in &mut entries {
            if matches!(
                entry.request_id.as_deref(),
                Some("feed0123-101-1" | "feed0123-102-1")
            ) {
                entry.outcome = "timeout".into();
                entry.status = None;
            }
        }
        let options = ClientOptions::default();
        let report = report_of(&options, &attempts, entries);
        assert!(
            report.reconciliation.is_clean(),
            "{:?}",
            report.reconciliation
        );
        let reason = "2 attempts were hung requests the server closed before --timeout (its \
                      --hang is shorter): the mix cannot be judged; raise the server's --hang \
                      or lower --timeout";
        assert_eq!(report.verdict, Verdict::Fail);
        assert_eq!(report.verdict_reasons, [reason]);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        assert!(
            text.contains(&format!("verdict: FAIL ({reason})")),
            "{text}"
        );
    }

    #[test]
    fn timeouts_the_server_answered_get_a_note_to_raise_the_timeout() {
        use AttemptOutcome::Server;
        let attempts = [
            attempt(1, 1, Server(Outcome::Timeout), true),
            attempt(2, 1, Server(Outcome::Timeout), true),
            attempt(3, 1, Server(Outcome::Timeout), true),
            attempt(4, 1, Server(Outcome::ServerError), true),
        ];
        // The server answered two of the client's timeouts (late), logged the third as a
        // timeout too, and the 500 as a 200: that one is no late answer.
        let entries = vec![
            entry(1, Some("feed0123-1-1"), "200"),
            entry(2, Some("feed0123-2-1"), "403"),
            entry(3, Some("feed0123-3-1"), "timeout"),
            entry(4, Some("feed0123-4-1"), "200"),
        ];
        let options = ClientOptions::default();
        let report = report_of(&options, &attempts, entries);
        assert_eq!(late_answers(&report.reconciliation.mismatches), 2);
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        assert!(
            text.contains(
                "\n  note: 2 attempts timed out here but the server answered them: the answers \
                 came after --timeout (network delay or loss?): raise --timeout\n"
            ),
            "{text}"
        );
        let faithful = synthetic_report(&options);
        let mut text = String::new();
        write_text_report(&faithful, &options, &mut text).unwrap();
        assert!(!text.contains("timed out here"), "{text}");
    }

    #[test]
    fn the_request_table_says_no_retries_when_there_are_none() {
        let cases = [
            (
                vec![],
                3,
                "Per logical request (final outcome (no retries)): 100 requests",
            ),
            (
                vec![Outcome::Timeout],
                0,
                "Per logical request (final outcome (no retries)): 100 requests",
            ),
            (
                vec![Outcome::Timeout],
                3,
                "Per logical request (final outcome after up to 3 retries): 100 requests",
            ),
        ];
        for (retry_on, retries, title) in cases {
            let options = ClientOptions {
                retry_on,
                retries,
                ..ClientOptions::default()
            };
            let mut text = String::new();
            write_text_report(&synthetic_report(&options), &options, &mut text).unwrap();
            assert!(
                text.contains(&format!("\n{title}\n")),
                "no {title:?} in\n{text}"
            );
        }
    }

    #[test]
    fn a_restart_shows_in_the_seed_the_requests_logged_or_the_uptime() {
        let before = owner_stats();
        let stats = |seed, total, uptime| ServerStats {
            seed: Some(seed),
            total: Some(total),
            uptime_seconds: Some(uptime),
            ..owner_stats()
        };
        let before = ServerStats {
            total: Some(50),
            uptime_seconds: Some(100.0),
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
        // What a server does not say proves nothing.
        let silent = ServerStats {
            seed: None,
            total: None,
            uptime_seconds: None,
            ..owner_stats()
        };
        assert_eq!(restart_evidence(&before, &silent, minute), None);
        assert_eq!(restart_evidence(&silent, &stats(1, 0, 0.0), minute), None);
        let text = r#"{"seed":7,"total":12,"uptime_seconds":3.25,"weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let parsed = parse_server_stats(text, &json::decode(text).unwrap()).unwrap();
        assert_eq!(
            (parsed.total, parsed.uptime_seconds),
            (Some(12), Some(3.25))
        );
    }

    #[test]
    fn json_report_is_valid_json_with_the_documented_fields() {
        let options = ClientOptions::default();
        let report = synthetic_report(&options);
        let mut text = String::new();
        write_json_report(&report, &options, &mut text);
        let value = json::decode(&text).unwrap();
        for key in [
            "version",
            "run_id",
            "target",
            "configuration",
            "server",
            "attempts",
            "requests",
            "latency_ms",
            "elapsed_seconds",
            "attempts_per_second",
            "reconciliation",
            "logs",
            "tolerance_violations",
            "verdict_reasons",
            "verdict",
        ] {
            assert!(value.get(key).is_some(), "no {key} in {text}");
        }
        assert_eq!(value.get("verdict").and_then(Value::as_str), Some("pass"));
        assert_eq!(
            value.get("verdict_reasons").and_then(Value::as_array),
            Some(&[][..])
        );
        let consistent = value.get("attempts").and_then(|a| a.get("consistent"));
        assert_eq!(consistent, Some(&Value::Bool(true)));
        let attempts = value.get("attempts").unwrap();
        assert_eq!(attempts.get("total").and_then(Value::as_u64), Some(120));
        let counts = attempts.get("counts").unwrap();
        assert_eq!(counts.get("timeout").and_then(Value::as_u64), Some(20));
        assert_eq!(counts.get("200").and_then(Value::as_u64), Some(70));
        let rows = attempts.get("rows").and_then(Value::as_array).unwrap();
        assert_eq!(rows.len(), Outcome::COUNT);
        assert_eq!(
            attempts
                .get("chi_square")
                .and_then(|c| c.get("degrees_of_freedom"))
                .and_then(Value::as_u64),
            Some(3)
        );
        let configuration = value.get("configuration").unwrap();
        assert!(configuration.get("tolerance_points") == Some(&Value::Null));
        assert_eq!(
            value
                .get("reconciliation")
                .and_then(|r| r.get("matched"))
                .and_then(Value::as_u64),
            Some(120)
        );
    }

    #[test]
    fn server_answers_parse_into_stats_and_log_pages() {
        let stats = json::decode(
            r#"{"seed":123,"weights":{"timeout":20,"403":20,"500":10,"200":50},
                "probabilities":{"timeout":0.2,"403":0.2,"500":0.1,"200":0.5},"total":0}"#,
        )
        .unwrap();
        let parsed = parse_server_stats("", &stats).unwrap();
        assert_eq!(parsed.seed, Some(123));
        assert_eq!(parsed.probabilities, OWNER);
        let big = r#"{"nested":{"seed":5},"seed" : 8824335353481052954,
            "probabilities":{"timeout":0.2,"403":0.2,"500":0.1,"200":0.5}}"#;
        let parsed = parse_server_stats(big, &json::decode(big).unwrap()).unwrap();
        assert_eq!(parsed.seed, Some(8_824_335_353_481_052_954));
        // Both decode to the f64 2^53: only the digits tell them apart.
        for seed in [1u64 << 53, (1 << 53) + 1] {
            let text =
                format!(r#"{{"seed":{seed},"weights":{{"timeout":1,"403":1,"500":1,"200":1}}}}"#);
            let parsed = parse_server_stats(&text, &json::decode(&text).unwrap()).unwrap();
            assert_eq!(parsed.seed, Some(seed), "{text}");
        }
        let quoted =
            r#"{"seed":"18446744073709551615","weights":{"timeout":1,"403":1,"500":1,"200":1}}"#;
        let parsed = parse_server_stats(quoted, &json::decode(quoted).unwrap()).unwrap();
        assert_eq!(parsed.seed, Some(u64::MAX));
        assert_eq!(parsed.probabilities, [0.25; Outcome::COUNT]);
        let weights_only =
            json::decode(r#"{"weights":{"timeout":1,"403":1,"500":0,"200":2}}"#).unwrap();
        assert_eq!(
            parse_server_stats("", &weights_only).unwrap().probabilities,
            [0.25, 0.25, 0.0, 0.5]
        );
        assert!(parse_server_stats("", &json::decode(r#"{"seed":1}"#).unwrap()).is_err());
        // Each value finite, the sum not: before, every probability became 0 and the run
        // passed against a table of zeros.
        let overflowing = json::decode(
            r#"{"probabilities":{"timeout":1e308,"403":1e308,"500":1e308,"200":1e308}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_server_stats("", &overflowing),
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
        assert!(
            parse_log_page(&json::decode(r#"{"entries":[{"outcome":"200"}]}"#).unwrap()).is_err()
        );
    }

    // ---- against a fake server on loopback ---------------------------------------------------

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

    fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
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

    fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
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

    fn loopback(port: u16) -> Target {
        Target {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            host_header: host_header("127.0.0.1", port),
        }
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
        let (port, _) = serve_log_pages(|since, _| {
            if since == 0 {
                let other = page_entry(2, 8).replace("\"ab-", "\"zz-");
                vec![page_entry(1, 8), other, page_entry(3, 8)]
            } else {
                Vec::new()
            }
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
        let (port, _) = serve_log_pages(|since, _| {
            if since == 0 {
                vec![page_entry(1, 10_000), page_entry(2, 10_000)]
            } else {
                Vec::new()
            }
        });
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
        let (port, _) = serve_log_pages(|since, _| {
            if since == 0 {
                (1..=4).map(|id| page_entry(id, 200)).collect()
            } else {
                Vec::new()
            }
        });
        let fetched =
            fetch_run_entries(&loopback(port), "ab-", 1000, MAX_LOG_PAGES, (4, 0), timeout)
                .unwrap();
        assert_eq!(fetched.entries.len(), 4);
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

    fn number_in(value: &Value, path: &[&str]) -> Option<u64> {
        path.iter()
            .try_fold(value, |value, key| value.get(key))
            .and_then(Value::as_u64)
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
    fn the_unreachable_streak_grows_with_the_workers_from_a_floor() {
        let cases = [(1, 10), (2, 10), (3, 10), (4, 12), (64, 192), (1024, 3072)];
        for (workers, streak) in cases {
            assert_eq!(unreachable_streak(workers), streak, "{workers} workers");
        }
        assert_eq!(unreachable_streak(usize::MAX), u64::MAX);
    }

    #[test]
    fn an_early_stop_counts_requests_never_sent_and_retries_dropped_apart() {
        use AttemptOutcome::{Server, Transport};
        let refused = || Transport(TransportError::ConnectionRefused);
        // Of 10 requests: one answered, one timed out and its retry was dropped, one refused
        // twice, and seven never started.
        let sent = Sent {
            attempts: vec![
                attempt(1, 1, Server(Outcome::Balance), true),
                attempt(2, 1, Server(Outcome::Timeout), true),
                attempt(3, 1, refused(), false),
                attempt(3, 2, refused(), false),
            ],
            stopped: Some(StopCause {
                failures_in_a_row: 10,
                failure: "connection refused",
                health_failure: None,
            }),
            retries_dropped: vec![2],
        };
        let account = ServerAccount {
            stats: owner_stats(),
            restart: Restart::Unknown,
            log: Err("GET /stats after the run failed: connection refused".into()),
        };
        let options = ClientOptions {
            count: 10,
            ..ClientOptions::default()
        };
        let report = report_from(&options, &sent, &account);
        assert_eq!((report.requests, report.requests_never_sent), (3, 7));
        assert_eq!(report.request_draws, 1);
        assert_eq!(
            report.request_rows[Outcome::Timeout.index()].actual_count,
            0
        );
        assert_eq!(
            report.request_other,
            BTreeMap::from([
                ("connection refused".to_string(), 1),
                (RETRY_DROPPED.to_string(), 1)
            ])
        );
        // Attempts are all counted, the dropped retry's timeout among the draws.
        assert_eq!((report.attempts, report.attempt_draws), (4, 2));
        let unreachable = "the server became unreachable: 10 connection attempts in a row \
                           failed (connection refused); 7 requests not sent, 1 retries dropped";
        assert_eq!(
            report.verdict_reasons,
            [
                unreachable,
                "reconciliation not done (GET /stats after the run failed: connection refused)"
            ]
        );
        let mut text = String::new();
        write_text_report(&report, &options, &mut text).unwrap();
        for expected in [
            format!("\n  stopped early: {unreachable}\n"),
            "\nPer logical request (final outcome after up to 3 retries): 3 requests, 7 more \
             never sent\n"
                .to_string(),
            format!(
                "\n  {RETRY_DROPPED:<28} {:>8}  (not a draw from the weights)\n",
                1
            ),
        ] {
            assert!(text.contains(&expected), "no {expected:?} in\n{text}");
        }
        let mut json_text = String::new();
        write_json_report(&report, &options, &mut json_text);
        let value = json::decode(&json_text).unwrap();
        let stopped = value.get("stopped_early").unwrap();
        for (key, expected) in [
            ("failures_in_a_row", 10),
            ("requests_not_sent", 7),
            ("retries_dropped", 1),
        ] {
            assert_eq!(number_in(stopped, &[key]), Some(expected), "{key}");
        }
        assert_eq!(number_in(&value, &["requests", "never_sent"]), Some(7));
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
    fn unreachable_routes_are_connect_failures_with_their_own_names() {
        // Before, these were "I/O error"s, which reset the streak: a firewalled server was
        // tried for every request instead of stopping the run.
        let cases = [
            (io::ErrorKind::HostUnreachable, "no route to host"),
            (io::ErrorKind::NetworkUnreachable, "network unreachable"),
            (io::ErrorKind::AddrNotAvailable, "address not available"),
            (io::ErrorKind::ConnectionRefused, "connection refused"),
        ];
        for (kind, name) in cases {
            let error = io_failure(&kind.into());
            assert!(error.is_connect_failure(), "{kind:?}");
            assert_eq!(error.name(), name);
            let outcome = AttemptOutcome::Transport(error);
            assert_eq!(no_answer_name(&outcome), Some(name));
        }
        assert_eq!(
            no_answer_name(&AttemptOutcome::Server(Outcome::Timeout)),
            Some("timeout")
        );
        for answered in [
            AttemptOutcome::Server(Outcome::Forbidden),
            AttemptOutcome::OtherStatus(503),
            AttemptOutcome::Transport(TransportError::ConnectionReset),
            AttemptOutcome::Transport(io_failure(&io::ErrorKind::PermissionDenied.into())),
        ] {
            assert_eq!(no_answer_name(&answered), None, "{answered:?}");
        }
    }

    #[test]
    fn huge_statistics_are_written_with_an_exponent() {
        assert_eq!(statistic_text(7.81473), "7.815");
        assert_eq!(statistic_text(123_456_789.0), "123456789.000");
        assert_eq!(statistic_text(2.5e300), "2.500e300");
        assert_eq!(statistic_text(f64::INFINITY), "inf");
    }

    #[test]
    fn a_streak_stops_the_run_only_when_long_enough_in_count_and_in_time() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let refused = Some("connection refused");
        // One worker: a bound of 10, and a span of at least MIN_STREAK_SPAN (1 s > 200 ms).
        let mut streak = NoAnswerStreak::new(1, Duration::from_millis(200));
        // A restart's gap: twenty refusals within a millisecond do not stop the run.
        for _ in 0..20 {
            assert_eq!(streak.note(refused, at(1)), StreakStep::Continue);
        }
        // An answer ends the streak; the span starts again with the next failure.
        assert_eq!(streak.note(None, at(2)), StreakStep::Continue);
        for millis in 3..12 {
            assert_eq!(streak.note(refused, at(millis)), StreakStep::Continue);
        }
        // Ten in a row, but spanning 9 ms; then one a second after the first: stop.
        assert_eq!(streak.note(refused, at(500)), StreakStep::Continue);
        let unreachable = Some("no route to host");
        assert_eq!(
            streak.note(unreachable, at(1003)),
            StreakStep::Stop(StopCause {
                failures_in_a_row: 11,
                failure: "no route to host",
                health_failure: None,
            })
        );

        // A timeout among them: /health decides, asked by one worker at a time.
        let mut streak = NoAnswerStreak::new(4, Duration::from_secs(2));
        assert_eq!(
            (streak.bound, streak.min_span),
            (12, Duration::from_secs(2))
        );
        let timeout = Some("timeout");
        for millis in 0..12 {
            assert_eq!(streak.note(timeout, at(millis)), StreakStep::Continue);
        }
        let ended_before = streak.ended;
        assert_eq!(streak.note(refused, at(2000)), StreakStep::Probe);
        assert_eq!(streak.note(timeout, at(2001)), StreakStep::Continue);
        assert_eq!(streak.probe_finished(Ok(()), ended_before, "timeout"), None);
        assert_eq!(streak.count, 0);
        // The next probe only after another full streak.
        for millis in 0..12 {
            assert_eq!(
                streak.note(timeout, at(3000 + millis)),
                StreakStep::Continue
            );
        }
        let ended_before = streak.ended;
        assert_eq!(streak.note(timeout, at(5000)), StreakStep::Probe);
        // The probe failed, but an attempt was answered while it ran (a server frozen for a
        // moment): the run goes on, and a later streak may probe again.
        assert_eq!(streak.note(None, at(5100)), StreakStep::Continue);
        assert_eq!(streak.note(timeout, at(5200)), StreakStep::Continue);
        let lost = Err("timed out".to_string());
        assert_eq!(
            streak.probe_finished(lost.clone(), ended_before, "timeout"),
            None
        );
        assert!(!streak.probing);
        // A probe that fails with nothing answered meanwhile stops the run.
        for millis in 0..12 {
            streak.note(timeout, at(6000 + millis));
        }
        let ended_before = streak.ended;
        assert_eq!(streak.note(timeout, at(8000)), StreakStep::Probe);
        assert_eq!(
            streak.probe_finished(lost, ended_before, "timeout"),
            Some(StopCause {
                failures_in_a_row: 13,
                failure: "timeout",
                health_failure: Some("timed out".into()),
            })
        );
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

    #[test]
    fn a_server_that_never_answers_admin_requests_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = Target {
            address: listener.local_addr().unwrap(),
            host_header: "127.0.0.1".into(),
        };
        let started = Instant::now();
        let error = fetch_json(&target, "/stats", Duration::from_millis(100)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            error.to_string(),
            "GET /stats failed: no complete answer within 100ms"
        );
        drop(listener);
    }
}
