//! Speaking HTTP/1.1 to the server over TCP: resolving and connecting, the bytes of a request and
//! its `X-Request-Id`, assembling a response as it arrives and reading it within a deadline, and
//! naming what an exchange got ([`AttemptOutcome`], [`TransportError`]).
//!
//! Invariants: no read is asked to block past its deadline (by more than [`READ_TIMEOUT_SLACK`]),
//! nor longer than [`MAX_READ_WAIT`], so the kernel's tick is all it may overrun by; a response
//! is complete only with its whole body, bounded in bytes and in interim responses; every I/O
//! failure maps to one named category.

use super::{ClientError, USER_AGENT};
use crate::chaos::{mix64, Outcome};
use crate::http::{self, ChunkedDecoder, Parsed, ResponseFraming};
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Interim (1xx) responses skipped before a final one at most (RFC 9110 §15.2 sets no limit; a
/// server sends one or two): an endless stream of `100 Continue` must end the attempt, not
/// fill its time.
pub const MAX_INTERIM_RESPONSES: usize = 16;
/// Hex digits in a run id.
pub const RUN_ID_DIGITS: usize = 8;
/// How far past its deadline a read may block. It spares a `setsockopt` per attempt: the first
/// read keeps the full timeout the socket already has when the time left is within this of it,
/// as it is unless the thread was held up between starting the clock and reading.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(1);
/// The longest one read waits; a longer timeout is waited out in reads of this length. The
/// kernel keeps a socket timeout on its coarse timer wheel, whose precision falls as the wait
/// grows: measured here (250 Hz), a 3 s read timeout returned after 3.15 to 3.23 s, a 1 s one
/// after 1.024 s. Up to 63 ticks the wheel is exact to one tick, which 50 ms is at up to 1000 Hz.
const MAX_READ_WAIT: Duration = Duration::from_millis(50);

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
    /// Part of a response arrived, but not all of it within the attempt timeout (a slow body):
    /// the server answered, so this is no draw of `timeout`, which is an answer never begun.
    TimeoutMidResponse,
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
            TransportError::TimeoutMidResponse => "timed out mid-response",
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
pub(super) struct RequestId<'a> {
    pub(super) run_id: &'a str,
    pub(super) request: u64,
    pub(super) attempt: u32,
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

pub(super) fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

/// Replaces `out` with the bytes of one `/getbalance` attempt; a worker reuses one `out`, so
/// an attempt allocates nothing for its request.
pub(super) fn write_getbalance_request(
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

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub status: u16,
    /// The server allows another request on this connection.
    pub keep_alive: bool,
    /// The decoded body (empty unless the assembler keeps bodies).
    pub body: Vec<u8>,
    /// Bytes came after the response's end in the reads that completed it: the connection is
    /// out of step and must not be reused. Bytes that come later are caught before the next use
    /// (`send::is_quiet`).
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

    /// The bytes of a head that did not parse (none once a final head has), to show what
    /// answered instead of an HTTP server.
    pub fn unparsed_head(&self) -> &[u8] {
        if self.head.is_some() {
            &[]
        } else {
            &self.pending
        }
    }

    /// Whether any byte of a response (an interim one included) has arrived since the reset.
    fn has_started(&self) -> bool {
        self.received > 0
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
pub(super) enum ReceiveFailure {
    /// Not one byte of a response within the timeout.
    Timeout,
    Transport(TransportError),
}

pub(super) fn is_timeout(error: &io::Error) -> bool {
    // Platforms disagree on which kind an expired socket timeout reports.
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub(super) fn io_failure(error: &io::Error) -> TransportError {
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
pub(super) fn describe_io_error(error: &io::Error) -> String {
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
/// attempt gets exactly what is left, so a slow response never overruns the deadline. Neither
/// is more than [`MAX_READ_WAIT`].
fn read_timeout_change(
    current: Option<Duration>,
    remaining: Duration,
    timeout: Duration,
) -> Option<Duration> {
    let wanted = if timeout.saturating_sub(remaining) <= READ_TIMEOUT_SLACK {
        timeout
    } else {
        remaining
    }
    .min(MAX_READ_WAIT);
    (current != Some(wanted) && !wanted.is_zero()).then_some(wanted)
}

/// Reads until the assembler has a complete response or `timeout` has passed since the call
/// (`Timeout` when no byte came, `TimeoutMidResponse` when part of a response did).
/// `chunk` is the read buffer (a worker reuses one); `read_timeout` is the socket's current
/// read timeout, changed only when it must be.
pub(super) fn receive(
    stream: &mut TcpStream,
    assembler: &mut ResponseAssembler,
    timeout: Duration,
    chunk: &mut [u8],
    read_timeout: &mut Option<Duration>,
) -> Result<Assembled, ReceiveFailure> {
    let deadline = Instant::now() + timeout;
    let limit = assembler.max_bytes;
    let failure = |error: AssemblyError| ReceiveFailure::Transport(error.into_transport(limit));
    let too_late = |assembler: &ResponseAssembler| {
        if assembler.has_started() {
            ReceiveFailure::Transport(TransportError::TimeoutMidResponse)
        } else {
            ReceiveFailure::Timeout
        }
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(too_late(assembler));
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
            Err(error) if is_timeout(&error) => return Err(too_late(assembler)),
            Err(error) => return Err(ReceiveFailure::Transport(io_failure(&error))),
        }
    }
}

/// Where the server is.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) address: SocketAddr,
    pub(super) host_header: String,
}

pub(super) fn connect(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
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
pub(super) fn reach(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(Target, TcpStream), ClientError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::MAX_RESPONSE_BYTES;

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
    fn the_read_timeout_is_set_only_when_it_changes() {
        let timeout = Duration::from_millis(40);
        let ms = Duration::from_millis;
        let cases = [
            // A new connection gets the whole timeout.
            (None, timeout, Some(timeout)),
            // The first read of an attempt: what is left is within the slack of the whole.
            (Some(timeout), timeout, None),
            (Some(timeout), timeout - READ_TIMEOUT_SLACK, None),
            // A later read gets exactly what is left, so the deadline holds.
            (Some(timeout), ms(30), Some(ms(30))),
            (Some(ms(30)), ms(30), None),
            (Some(ms(30)), ms(12), Some(ms(12))),
            // The next attempt on the same connection restores the whole timeout once.
            (Some(ms(12)), timeout, Some(timeout)),
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
        // A timeout longer than one read may wait is waited out in reads of MAX_READ_WAIT, set
        // once, and the last of them gets what is left.
        let timeout = Duration::from_secs(3);
        let cases = [
            (None, timeout, Some(MAX_READ_WAIT)),
            (Some(MAX_READ_WAIT), timeout, None),
            (Some(MAX_READ_WAIT), ms(1_000), None),
            (Some(MAX_READ_WAIT), ms(20), Some(ms(20))),
            (Some(ms(20)), timeout, Some(MAX_READ_WAIT)),
        ];
        for (current, remaining, expected) in cases {
            assert_eq!(
                read_timeout_change(current, remaining, timeout),
                expected,
                "current {current:?}, remaining {remaining:?}"
            );
        }
    }

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
}
