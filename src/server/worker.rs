//! The workers: a fixed pool of threads that take connections from the shared queue and do what
//! may take a while: request bodies (and `100 Continue`), `/getlogs` piece by piece, `/stats`,
//! refusals.
//!
//! Invariants: a worker never waits for a client. It reads only what has already arrived (the
//! keep-alive linger is zero) and writes without blocking; what the send buffer does not take,
//! and a connection that goes quiet, go back to the connection's poller.

use super::poller::ParkKind;
use super::{
    is_timeout, send_without_waiting, settle_answer, AfterSent, BodyRemaining, Connection,
    DateCache, PendingBody, Shared, UnsentAnswer, CONTINUE, LINGERING_CLOSE, OUT_BUFFER_RETAINED,
    READ_BUFFER_INITIAL, TEXT_PLAIN,
};
use crate::clock;
use crate::http::{self, BodyFraming, ChunkedDecoder, Parsed, RequestHead, Response, MAX_BODY};
use crate::routes::{self, App, Disposition, Exchange, LogStream};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

/// What a worker keeps between connections: reused buffers and the date.
struct WorkerState {
    out: Vec<u8>,
    date: DateCache,
}

/// Where a connection goes when a worker lets go of it.
enum Next {
    Close,
    Park(ParkKind, Instant),
    /// More pipelined requests are waiting, but so are other connections: back of the queue.
    Requeue,
}

pub(super) fn run_worker(shared: &Shared) {
    let mut worker = WorkerState {
        out: Vec::with_capacity(READ_BUFFER_INITIAL * 4),
        date: DateCache::new(),
    };
    while let Some(mut connection) = shared.next_connection() {
        // A bug in a handler costs its connection, not the worker.
        let next = panic::catch_unwind(AssertUnwindSafe(|| {
            serve(shared, &mut worker, &mut connection)
        }));
        match next {
            Ok(Next::Park(kind, deadline)) => {
                connection.shrink_for_parking(kind);
                shared.park(connection, kind, deadline);
            }
            Ok(Next::Requeue) => shared.enqueue(connection),
            Ok(Next::Close) | Err(_) => {
                // Answers still queued in the kernel wait in a poller rather than outlive the
                // socket's descriptor.
                if let Some(deadline) = connection.start_flushing(shared.timeouts.write) {
                    connection.shrink_for_parking(ParkKind::Flushing);
                    shared.park(connection, ParkKind::Flushing, deadline);
                }
            }
        }
        if worker.out.capacity() > OUT_BUFFER_RETAINED {
            worker.out = Vec::with_capacity(READ_BUFFER_INITIAL * 4);
        }
    }
}

/// Reads and answers requests on `connection` until it must close or wait elsewhere.
///
/// A worker never blocks on a client for longer than the linger (reads) or one write poll
/// (writes) at a time: a request head or body that stops arriving is parked in the poller with
/// its deadline, so slow senders cost a socket, not a worker.
fn serve(shared: &Shared, worker: &mut WorkerState, connection: &mut Connection) -> Next {
    // Handed back by the poller to format the next pieces of a long answer.
    if let Some(unsent) = connection.unsent.take() {
        if let Some(next) = continue_answer(shared, worker, connection, unsent) {
            return next;
        }
    }
    loop {
        if shared.is_shutting_down() {
            return Next::Close;
        }
        // (what the handler did, keep-alive, head length) once a request has been answered.
        let answered = if connection.body.is_some() {
            match advance_body(connection) {
                Err(error) => {
                    return refuse(shared, worker, connection, error.status(), error.reason())
                }
                Ok(false) => None,
                Ok(true) => {
                    let head_length = connection.body.take().map_or(0, |body| body.head_length);
                    // The body is gone and the head is untouched at the front of the buffer.
                    let Ok(Parsed::Complete(head)) =
                        http::parse_request(&connection.buffer[..head_length])
                    else {
                        return Next::Close;
                    };
                    let facts = (head.keep_alive, head_length);
                    let disposition = answer(
                        shared,
                        worker,
                        &head,
                        connection.peer,
                        connection.request_started,
                        &connection.stream,
                    );
                    Some((disposition, facts))
                }
            }
        } else if connection.filled == 0 {
            None
        } else {
            match http::parse_request(&connection.buffer[..connection.filled]) {
                Err(error) => {
                    return refuse(shared, worker, connection, error.status(), error.reason())
                }
                Ok(Parsed::Partial) => None,
                Ok(Parsed::Complete(head))
                    if matches!(head.body, BodyFraming::None | BodyFraming::Length(0)) =>
                {
                    let facts = (head.keep_alive, head.head_length);
                    let disposition = answer(
                        shared,
                        worker,
                        &head,
                        connection.peer,
                        connection.request_started,
                        &connection.stream,
                    );
                    Some((disposition, facts))
                }
                Ok(Parsed::Complete(head)) => {
                    let (head_length, framing) = (head.head_length, head.body);
                    let expect_continue = head.expect_continue;
                    if let Some(next) = start_body(
                        shared,
                        worker,
                        connection,
                        head_length,
                        framing,
                        expect_continue,
                    ) {
                        return next;
                    }
                    continue;
                }
            }
        };
        let next = match answered {
            Some((Some((disposition, Some(pending))), (keep_alive, head_length))) => {
                let then = AfterSent::Answer {
                    disposition,
                    keep_alive,
                    head_length,
                };
                return finish_in_poller(shared, worker, connection, pending, then);
            }
            Some((answer, (keep_alive, head_length))) => after_answer(
                shared,
                connection,
                answer.map(|(disposition, _)| disposition),
                keep_alive,
                head_length,
            ),
            None => wait_for_input(shared, worker, connection),
        };
        if let Some(next) = next {
            return next;
        }
    }
}

/// What happens to the connection once a response was written; `None` to go on serving it.
fn after_answer(
    shared: &Shared,
    connection: &mut Connection,
    disposition: Option<Disposition>,
    keep_alive: bool,
    head_length: usize,
) -> Option<Next> {
    let Some(disposition) = disposition else {
        return Some(Next::Close);
    };
    if let Some((kind, deadline)) =
        settle_answer(shared, connection, disposition, keep_alive, head_length)
    {
        return Some(Next::Park(kind, deadline));
    }
    // Others are waiting: an idle connection goes to the poller, and a long pipeline must not
    // keep everybody else waiting.
    if !shared.others_waiting() {
        return None;
    }
    Some(if connection.filled == 0 {
        Next::Park(ParkKind::Idle, Instant::now() + shared.timeouts.idle)
    } else {
        Next::Requeue
    })
}

/// Reads more of a request, waiting at most the linger (with none: only what has arrived);
/// `None` when bytes arrived.
fn wait_for_input(
    shared: &Shared,
    worker: &mut WorkerState,
    connection: &mut Connection,
) -> Option<Next> {
    let timeouts = shared.timeouts;
    // What is in progress: a body (its own deadline, then a silent close), part of a head (the
    // header deadline, then 408), or nothing (idle).
    let pending = match &connection.body {
        Some(body) => Some((ParkKind::PartialBody, body.deadline)),
        None if connection.filled > 0 => Some((
            ParkKind::PartialRequest,
            connection.header_deadline(timeouts.header),
        )),
        None => None,
    };
    if let Some((kind, deadline)) = pending {
        if Instant::now() >= deadline {
            return Some(if kind == ParkKind::PartialRequest {
                refuse(shared, worker, connection, 408, "request timeout")
            } else {
                Next::Close
            });
        }
        if shared.others_waiting() && !connection.readable {
            return Some(Next::Park(kind, deadline));
        }
    }
    connection.readable = false;
    if !connection.make_room() {
        // Only a head can fill the buffer: body bytes are dropped as they arrive.
        return Some(refuse(
            shared,
            worker,
            connection,
            431,
            "request header section too large",
        ));
    }
    let parked = match pending {
        Some((kind, deadline)) => Next::Park(kind, deadline),
        None => Next::Park(ParkKind::Idle, Instant::now() + timeouts.idle),
    };
    // What has already arrived is taken without waiting and without touching the socket's
    // timeout; only a nonzero linger then waits for more.
    match connection.read_some_without_waiting(None) {
        Ok(0) => return Some(Next::Close),
        Ok(_) => return None,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        Err(error) if error.kind() == io::ErrorKind::Interrupted => return None,
        Err(_) => return Some(Next::Close),
    }
    if timeouts.linger.is_zero() {
        return Some(parked);
    }
    if connection.set_read_timeout(timeouts.linger).is_err() {
        return Some(Next::Close);
    }
    match connection.read_some() {
        // EOF: between requests it is a normal goodbye; mid-request nobody is left to read a
        // 400.
        Ok(0) => Some(Next::Close),
        Ok(_) => None,
        Err(error) if is_timeout(&error) => Some(parked),
        Err(error) if error.kind() == io::ErrorKind::Interrupted => None,
        Err(_) => Some(Next::Close),
    }
}

/// What of an answer the send buffer did not take: `worker.out[written..]`, then `rest`.
struct Pending {
    written: usize,
    rest: Option<LogStream>,
}

/// Runs the handler and sends its response without waiting. `None` when the connection failed;
/// otherwise what the handler decided and, if the socket is full, what is still to be sent.
fn answer(
    shared: &Shared,
    worker: &mut WorkerState,
    head: &RequestHead<'_>,
    peer: SocketAddr,
    started: Option<Instant>,
    stream: &TcpStream,
) -> Option<(Disposition, Option<Pending>)> {
    worker.out.clear();
    let unix_millis = clock::now_unix_millis();
    let exchange = Exchange {
        request: head,
        peer,
        started: started.unwrap_or_else(Instant::now),
        unix_millis,
        date: worker.date.at(unix_millis),
    };
    let answered = routes::respond(&shared.app, &exchange, &mut worker.out);
    let pending = send_pieces(&shared.app, worker, stream, answered.rest).ok()?;
    Some((answered.disposition, pending))
}

/// Sends `worker.out` and, for a long answer, the pieces after it, all without waiting: `None`
/// once everything is out, or what is left when the socket is full.
fn send_pieces(
    app: &App,
    worker: &mut WorkerState,
    stream: &TcpStream,
    mut rest: Option<LogStream>,
) -> io::Result<Option<Pending>> {
    loop {
        let written = send_without_waiting(stream, &worker.out)?;
        if written < worker.out.len() {
            return Ok(Some(Pending { written, rest }));
        }
        let Some(logs) = rest.as_mut() else {
            return Ok(None);
        };
        worker.out.clear();
        if !logs.next_piece(app, &mut worker.out) {
            rest = None;
        }
    }
}

/// Goes on with an answer the poller handed back for its next pieces.
fn continue_answer(
    shared: &Shared,
    worker: &mut WorkerState,
    connection: &mut Connection,
    unsent: UnsentAnswer,
) -> Option<Next> {
    let UnsentAnswer { bytes, rest, then } = unsent;
    worker.out.clear();
    worker.out.extend_from_slice(&bytes);
    match send_pieces(&shared.app, worker, &connection.stream, rest) {
        Err(_) => Some(Next::Close),
        Ok(Some(pending)) => Some(finish_in_poller(shared, worker, connection, pending, then)),
        Ok(None) => match then {
            AfterSent::Answer {
                disposition,
                keep_alive,
                head_length,
            } => after_answer(
                shared,
                connection,
                Some(disposition),
                keep_alive,
                head_length,
            ),
            AfterSent::Body => None,
        },
    }
}

/// Parks a connection whose response did not fit in the send buffer: its poller sends the rest
/// of `worker.out` as the client reads (handing it back to a worker for any further pieces),
/// then goes on as after any answer.
fn finish_in_poller(
    shared: &Shared,
    worker: &WorkerState,
    connection: &mut Connection,
    pending: Pending,
    then: AfterSent,
) -> Next {
    connection.unsent = Some(UnsentAnswer {
        bytes: worker.out[pending.written..].to_vec(),
        rest: pending.rest,
        then,
    });
    Next::Park(ParkKind::Sending, Instant::now() + shared.timeouts.write)
}

/// Answers `status` with `reason` as a plain-text body, half-closes, and leaves the connection
/// to a lingering close.
fn refuse(
    shared: &Shared,
    worker: &mut WorkerState,
    connection: &mut Connection,
    status: u16,
    reason: &str,
) -> Next {
    let mut body = Vec::with_capacity(reason.len() + 1);
    body.extend_from_slice(reason.as_bytes());
    body.push(b'\n');
    worker.out.clear();
    http::write_response(
        &mut worker.out,
        &Response {
            status,
            content_type: TEXT_PLAIN,
            extra_headers: &[],
            body: &body,
            keep_alive: false,
            request_minor_version: 1,
            // Even a refused HEAD gets no content (RFC 9110 §9.3.2): a client that sent more
            // would read it as the next response.
            head_only: http::is_head_request(&connection.buffer[..connection.filled]),
        },
        worker.date.current(),
    );
    let Ok(written) = send_without_waiting(&connection.stream, &worker.out) else {
        return Next::Close;
    };
    if written < worker.out.len() {
        let pending = Pending {
            written,
            rest: None,
        };
        let then = AfterSent::Answer {
            disposition: Disposition::Close,
            keep_alive: false,
            head_length: 0,
        };
        return finish_in_poller(shared, worker, connection, pending, then);
    }
    let _ = connection.stream.shutdown(Shutdown::Write);
    lingering_close()
}

/// RFC 9112 §9.6: after the last response, read and drop what the client still sends until it
/// closes (or [`LINGERING_CLOSE`] passes), so closing with unread input does not turn into a
/// reset that can destroy the response before the client has read it.
fn lingering_close() -> Next {
    Next::Park(ParkKind::Closing, Instant::now() + LINGERING_CLOSE)
}

/// Sets up the body that follows the head at `buffer[..head_length]` (and sends `100 Continue`
/// when asked); `Some` when the connection is done instead.
fn start_body(
    shared: &Shared,
    worker: &mut WorkerState,
    connection: &mut Connection,
    head_length: usize,
    framing: BodyFraming,
    expect_continue: bool,
) -> Option<Next> {
    let remaining = match framing {
        BodyFraming::Length(length) if length > MAX_BODY => {
            return Some(refuse(
                shared,
                worker,
                connection,
                413,
                "request body too large",
            ));
        }
        BodyFraming::Length(length) => BodyRemaining::Length(length),
        BodyFraming::None => BodyRemaining::Length(0),
        BodyFraming::Chunked => BodyRemaining::Chunked(ChunkedDecoder::new(MAX_BODY)),
    };
    connection.body = Some(PendingBody {
        head_length,
        remaining,
        deadline: Instant::now() + shared.timeouts.body,
    });
    if expect_continue {
        // Sent without waiting like any answer: if a client that stopped reading left no room
        // for it, the rest waits in the poller and no worker is held.
        let Ok(written) = send_without_waiting(&connection.stream, CONTINUE) else {
            return Some(Next::Close);
        };
        if written < CONTINUE.len() {
            connection.unsent = Some(UnsentAnswer {
                bytes: CONTINUE[written..].to_vec(),
                rest: None,
                then: AfterSent::Body,
            });
            return Some(Next::Park(
                ParkKind::Sending,
                Instant::now() + shared.timeouts.write,
            ));
        }
    }
    None
}

/// Drops the body bytes already read; `Ok(true)` when the body is complete, leaving the head at
/// the front of the buffer and any pipelined bytes right after it.
fn advance_body(connection: &mut Connection) -> Result<bool, http::RequestError> {
    let Some(body) = connection.body.as_mut() else {
        return Ok(true);
    };
    let head_length = body.head_length;
    let input = &connection.buffer[head_length..connection.filled];
    let (consumed, finished) = match &mut body.remaining {
        BodyRemaining::Length(remaining) => {
            let taken = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
            *remaining -= taken as u64;
            (taken, *remaining == 0)
        }
        BodyRemaining::Chunked(decoder) => {
            let progress = decoder.decode(input, None)?;
            (progress.consumed, progress.finished)
        }
    };
    connection.remove_after(head_length, consumed);
    Ok(finished)
}
