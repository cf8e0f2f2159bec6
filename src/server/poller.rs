//! The pollers: one thread per core, each with its own epoll set, holding the parked connections
//! (idle, partly received, hung, lingering, sending, turned away, flushing) and answering the
//! requests that need no worker in place: one read and one write per request, no hand-off.
//!
//! Invariants: nothing in a poller blocks; every parked connection has a deadline in the heap,
//! and a token's generation tells an event or deadline of a connection that already left from a
//! live one; a connection is closed only once the kernel holds nothing more for its client.

use super::{
    lock, send_without_waiting, settle_answer, write_busy, write_short_response, AfterSent,
    Connection, DateCache, ErrorReporter, KernelQueueNote, Shared, UnsentAnswer,
    ACCEPT_RESOURCE_BACKOFF, HUNG_READS_PER_EVENT, LINGERING_CLOSE, MIN_QUEUE_PROGRESS,
    POLL_WAIT_CAP, QUEUE_PATIENCE, READ_BUFFER_INITIAL, REQUESTS_PER_TURN, WAKE_TOKEN,
};
use crate::clock;
use crate::http::{self, BodyFraming, Parsed};
use crate::routes::{self, Exchange};
use crate::sys::{self, Epoll, Event, Watch, MAX_EVENTS_PER_WAIT};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, PipeReader, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

/// Why a connection is parked, which decides what readiness and the deadline mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ParkKind {
    /// Between requests: readable means a new request; the deadline closes it quietly.
    Idle,
    /// Part of a head has arrived: readable means more of it; the deadline answers 408.
    PartialRequest,
    /// A head has arrived and part of its body: readable means more of it; the deadline closes
    /// the connection.
    PartialBody,
    /// A request that gets no answer: input is read and dropped until the client leaves or the
    /// deadline closes it.
    Hung,
    /// The last response is written and the write side shut: input is read and dropped until
    /// the client closes or the deadline does (a lingering close).
    Closing,
    /// A response (or `100 Continue`) that did not fit in the send buffer: the rest goes out as
    /// room opens up, and input waits. The deadline, moved on by every write that makes
    /// progress, closes a client that stopped reading. No thread waits for it.
    Sending,
    /// Past `max_connections`: readable means its request line may be in, to be answered 503
    /// (see [`super::turn_away`]); the deadline closes it quietly, as an idle connection.
    TurnedAway,
    /// Done on both sides (the client closed, a hang or a body deadline ended) but answers are
    /// still queued in the kernel: closed plainly, the socket would keep them, orphaned and
    /// outside `max_connections`, for as long as the client keeps its end. It waits while they
    /// go out and is reset once they stop (see `Poller::close_when_sent`).
    Flushing,
}

impl ParkKind {
    /// Connections that may send a request are watched by edge, so one that is answered in
    /// place needs no system call to be watched again; drained ones by level, so input that
    /// one drain left behind is reported again.
    fn watch(self) -> Watch {
        match self {
            ParkKind::Idle | ParkKind::PartialRequest | ParkKind::PartialBody => Watch::Edge,
            // Its peer's close was read: by level, that close would be reported forever.
            ParkKind::Flushing => Watch::Edge,
            ParkKind::Hung | ParkKind::Closing | ParkKind::TurnedAway => Watch::Level,
            ParkKind::Sending => Watch::EdgeAndWritable,
        }
    }
}

pub(super) struct Parked {
    pub(super) connection: Connection,
    pub(super) kind: ParkKind,
    pub(super) deadline: Instant,
}

/// The parked connections, addressed by token: slot index in the low 32 bits, the slot's
/// generation in the high 32, so an event or deadline for a connection that already left is
/// recognised and ignored.
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    occupied: usize,
}

struct Slot {
    generation: u32,
    parked: Option<Parked>,
}

impl Slab {
    fn new() -> Slab {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            occupied: 0,
        }
    }

    fn token(index: u32, generation: u32) -> u64 {
        (u64::from(generation) << 32) | u64::from(index)
    }

    fn split(token: u64) -> (usize, u32) {
        ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
    }

    fn insert(&mut self, parked: Parked) -> u64 {
        self.occupied += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.parked = Some(parked);
            return Slab::token(index, slot.generation);
        }
        // More than 2^32 - 1 parked connections cannot exist (each is a file descriptor).
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX - 1);
        self.slots.push(Slot {
            generation: 0,
            parked: Some(parked),
        });
        Slab::token(index, 0)
    }

    fn get(&self, token: u64) -> Option<&Parked> {
        let (index, generation) = Slab::split(token);
        let slot = self.slots.get(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.parked.as_ref()
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut Parked> {
        let (index, generation) = Slab::split(token);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        slot.parked.as_mut()
    }

    fn remove(&mut self, token: u64) -> Option<Parked> {
        let (index, generation) = Slab::split(token);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let parked = slot.parked.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.occupied -= 1;
        Some(parked)
    }

    fn len(&self) -> usize {
        self.occupied
    }
}

/// The poller's own state.
struct Poller<'a> {
    shared: &'a Shared,
    epoll: &'a Epoll,
    parked: Slab,
    /// Earliest deadline first; entries of connections that already left stay until they
    /// surface (or a compaction) and are skipped then.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    date: DateCache,
    /// Connections that had more requests waiting when their turn ended: served again after the
    /// next (non-waiting) poll, as no new report may come for input already read.
    again: Vec<u64>,
    /// When the last wait returned. This one clock read per turn dates the first bytes of the
    /// requests read in the turn and the idle deadlines after them, to within the turn
    /// (milliseconds at most, against deadlines of seconds): reading the clock for each cost
    /// about 1% of a `/getbalance`.
    woke: Instant,
}

pub(super) fn run_poller(shared: &Shared, index: usize, epoll: &Epoll, wake_reader: PipeReader) {
    let Some(inbox) = shared.inboxes.get(index) else {
        return;
    };
    let mut poller = Poller {
        shared,
        epoll,
        parked: Slab::new(),
        deadlines: BinaryHeap::new(),
        scratch: vec![0u8; READ_BUFFER_INITIAL],
        out: Vec::with_capacity(256),
        date: DateCache::new(),
        again: Vec::new(),
        woke: Instant::now(),
    };
    let mut arrivals = Vec::new();
    let mut again = Vec::new();
    let mut events = Vec::with_capacity(MAX_EVENTS_PER_WAIT);
    let mut reporter = ErrorReporter::new();
    while !shared.is_shutting_down() {
        std::mem::swap(&mut arrivals, &mut *lock(&inbox.parking));
        for parked in arrivals.drain(..) {
            poller.register(parked);
        }
        let now = Instant::now();
        poller.expire(now);
        let timeout = poller
            .deadlines
            .peek()
            .map_or(POLL_WAIT_CAP, |Reverse((deadline, _))| {
                deadline.saturating_duration_since(now)
            })
            .min(POLL_WAIT_CAP);
        let timeout = if poller.again.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        if let Err(error) = epoll.wait(&mut events, Some(timeout)) {
            reporter.report("epoll wait failed", &error);
            thread::sleep(ACCEPT_RESOURCE_BACKOFF);
            continue;
        }
        poller.woke = Instant::now();
        for event in &events {
            if event.token == WAKE_TOKEN {
                // Drained first, cleared second, the list taken last: a parker that still saw
                // the flag set has already pushed its connection, and the flag is never left
                // set with an empty pipe (which would silence every later wake).
                let _ = (&wake_reader).read(&mut poller.scratch);
                inbox.wake_pending.swap(false, Ordering::AcqRel);
            } else {
                poller.handle(*event);
            }
        }
        // After the reports, so a long pipeline takes its turn behind everyone else.
        std::mem::swap(&mut again, &mut poller.again);
        for token in again.drain(..) {
            poller.handle(Event {
                token,
                readable: true,
                writable: false,
                closed: false,
            });
        }
    }
    // Dropping the poller closes every parked connection.
}

impl Poller<'_> {
    fn register(&mut self, mut parked: Parked) {
        let fd = parked.connection.stream.as_raw_fd();
        let watch = parked.kind.watch();
        let deadline = parked.deadline;
        if parked.kind == ParkKind::Sending {
            parked.connection.note_kernel_queue(deadline);
        }
        let registered = parked.connection.registered;
        parked.connection.registered = true;
        let token = self.parked.insert(parked);
        let watched = if registered {
            self.epoll.modify(fd, token, watch)
        } else {
            self.epoll.add(fd, token, watch)
        };
        if watched.is_err() {
            self.parked.remove(token);
            return;
        }
        self.schedule(deadline, token);
    }

    /// Makes sure the poller looks at `token` at `deadline`. A deadline that moves later needs
    /// no new entry: the old one surfaces first and is pushed back then (see [`Poller::expire`]).
    fn schedule(&mut self, deadline: Instant, token: u64) {
        self.deadlines.push(Reverse((deadline, token)));
        if self.deadlines.len() > 2 * self.parked.len() + 1024 {
            let parked = &self.parked;
            self.deadlines
                .retain(|Reverse((_, token))| parked.get(*token).is_some());
        }
    }

    fn handle(&mut self, event: Event) {
        let token = event.token;
        let Some(parked) = self.parked.get_mut(token) else {
            return;
        };
        parked.connection.peer_closed |= event.closed;
        let event = Event {
            closed: parked.connection.peer_closed,
            ..event
        };
        match parked.kind {
            ParkKind::Idle | ParkKind::PartialRequest | ParkKind::Sending => {
                let watched = parked.kind.watch();
                let shared = self.shared;
                let (out, date, woke) = (&mut self.out, &mut self.date, self.woke);
                // A bug in a handler costs its connection, not the poller and everything parked.
                let served = panic::catch_unwind(AssertUnwindSafe(|| {
                    if parked.kind == ParkKind::Sending {
                        resume_sending(shared, out, date, parked, event, woke)
                    } else {
                        serve_in_place(shared, out, date, parked, event.closed, woke)
                    }
                }));
                match served {
                    Ok(InPlace::Waiting) => {
                        self.watch_as(token, watched, Watch::Edge);
                    }
                    Ok(InPlace::ToWorker) => {
                        // A worker's reads and writes must not wake this poller over and over.
                        if self.watch_as(token, watched, Watch::Edge) {
                            self.hand_to_worker(token);
                        }
                    }
                    Ok(InPlace::Sending) => self.start_sending(token, watched),
                    Ok(InPlace::NoProgress) => {}
                    Ok(InPlace::Again) => {
                        if self.watch_as(token, watched, Watch::Edge) {
                            self.again.push(token);
                        }
                    }
                    Ok(InPlace::Drain(kind, deadline)) => {
                        self.start_draining(token, kind, deadline)
                    }
                    Ok(InPlace::Close) | Err(_) => self.close_when_sent(token),
                }
            }
            ParkKind::PartialBody => self.hand_to_worker(token),
            ParkKind::TurnedAway => self.answer_turned_away(token, event.closed, false),
            ParkKind::Hung | ParkKind::Closing => {
                // Drained first: closing with unread input would send a reset.
                let finished =
                    drain(&mut parked.connection.stream, &mut self.scratch) || event.closed;
                if finished {
                    self.close_when_sent(token);
                }
            }
            ParkKind::Flushing => self.close_when_sent(token),
        }
    }

    /// Answers 503 to a connection past the limit once its request line is in (or its buffer
    /// full, the client done sending, or its time up), then lingers.
    fn answer_turned_away(&mut self, token: u64, peer_closed: bool, out_of_time: bool) {
        let Some(parked) = self.parked.get_mut(token) else {
            return;
        };
        let connection = &mut parked.connection;
        let mut ended = peer_closed;
        while connection.filled < connection.buffer.len() {
            match connection.read_some_without_waiting(None) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.parked.remove(token);
                    return;
                }
            }
        }
        let input = &connection.buffer[..connection.filled];
        if input.is_empty() && ended {
            self.parked.remove(token);
            return;
        }
        let line_in = input.contains(&b'\n') || connection.filled == connection.buffer.len();
        if !line_in && !ended && !out_of_time {
            return;
        }
        let head_only = http::is_head_request(input);
        // Nonblocking: a client that stopped reading must not stall the poller.
        if connection.stream.set_nonblocking(true).is_err() {
            self.parked.remove(token);
            return;
        }
        write_busy(
            &mut connection.stream,
            &mut self.out,
            &mut self.date,
            head_only,
        );
        self.start_draining(token, ParkKind::Closing, Instant::now() + LINGERING_CLOSE);
    }

    fn hand_to_worker(&mut self, token: u64) {
        if let Some(mut parked) = self.parked.remove(token) {
            // Its watch stays in the set under the old token, whose reports are now ignored.
            parked.connection.readable = true;
            self.shared.enqueue(parked.connection);
        }
    }

    /// Changes the connection's watch from `current` to `wanted` if they differ; `false` (and
    /// the connection closed) if that failed.
    fn watch_as(&mut self, token: u64, current: Watch, wanted: Watch) -> bool {
        if current == wanted {
            return true;
        }
        let Some(parked) = self.parked.get(token) else {
            return false;
        };
        if self
            .epoll
            .modify(parked.connection.stream.as_raw_fd(), token, wanted)
            .is_err()
        {
            self.parked.remove(token);
            return false;
        }
        true
    }

    /// A stall: what the socket did not take waits for room. Also a new stall of a connection
    /// that was sending already (its last answer went out, the next did not fit): the write
    /// timeout counts from here, as that was progress.
    fn start_sending(&mut self, token: u64, current: Watch) {
        let Some(parked) = self.parked.get_mut(token) else {
            return;
        };
        let earlier = parked.deadline;
        parked.kind = ParkKind::Sending;
        parked.deadline = Instant::now() + self.shared.timeouts.write;
        let deadline = parked.deadline;
        parked.connection.note_kernel_queue(deadline);
        // A later deadline is found by the earlier entry when it surfaces (see `expire`).
        if self.watch_as(token, current, Watch::EdgeAndWritable) && deadline < earlier {
            self.schedule(deadline, token);
        }
    }

    /// Closes a connection the server and the client are done with, unless answers are still
    /// queued in the kernel for it: then it waits as [`ParkKind::Flushing`] for them to go out.
    fn close_when_sent(&mut self, token: u64) {
        let Some(parked) = self.parked.get_mut(token) else {
            return;
        };
        if parked.kind == ParkKind::Flushing {
            // Its deadline decides, unless all is out; noting the queue again would restart its
            // patience.
            if sys::unsent_bytes(&parked.connection.stream).unwrap_or(0) == 0 {
                self.parked.remove(token);
            }
            return;
        }
        match parked.connection.start_flushing(self.shared.timeouts.write) {
            Some(deadline) => self.start_draining(token, ParkKind::Flushing, deadline),
            None => {
                self.parked.remove(token);
            }
        }
    }

    fn start_draining(&mut self, token: u64, kind: ParkKind, deadline: Instant) {
        let Some(parked) = self.parked.get_mut(token) else {
            return;
        };
        parked.kind = kind;
        parked.deadline = deadline;
        parked.connection.shrink_for_parking(kind);
        let fd = parked.connection.stream.as_raw_fd();
        if self.epoll.modify(fd, token, kind.watch()).is_err() {
            self.parked.remove(token);
            return;
        }
        self.schedule(deadline, token);
    }

    /// At the deadline of a sending, idle or closing connection: whether answers it was sent
    /// are still queued in the kernel, and going out. All of an answer may fit in the send
    /// buffer, so the server never saw a stall; closed plainly, the kernel would keep the unread
    /// bytes (up to [`UNSENT_LIMIT`](crate::server::UNSENT_LIMIT) plus the client's window) for
    /// as long as the client keeps its end, outside `max_connections`. And a stalled write may
    /// see no room for longer than the write timeout while a slow client reads steadily: what
    /// it reads first empties its own receive buffer, not the queue here. The connection is
    /// kept (its deadline moved by the write timeout) while the queue shrinks by
    /// [`MIN_QUEUE_PROGRESS`] within [`QUEUE_PATIENCE`] write timeouts of the last time it did;
    /// once it does not, it is reset.
    fn await_kernel_queue(&mut self, token: u64, now: Instant) -> KernelQueue {
        let Some(parked) = self.parked.get_mut(token) else {
            return KernelQueue::Empty;
        };
        if !matches!(
            parked.kind,
            ParkKind::Sending | ParkKind::Idle | ParkKind::Closing | ParkKind::Flushing
        ) {
            return KernelQueue::Empty;
        }
        let queued = sys::unsent_bytes(&parked.connection.stream).unwrap_or(0);
        if queued == 0 {
            return KernelQueue::Empty;
        }
        let connection = &mut parked.connection;
        // Only a note made for exactly this deadline is compared with; an older one is stale.
        let noted = connection
            .kernel_queue_note
            .filter(|note| note.deadline == parked.deadline)
            .map(|note| (note.queued, note.quiet_deadlines));
        let Some((baseline, quiet_deadlines)) = next_queue_note(noted, queued) else {
            return KernelQueue::Stuck;
        };
        let deadline = now + self.shared.timeouts.write;
        connection.kernel_queue_note = Some(KernelQueueNote {
            deadline,
            queued: baseline,
            quiet_deadlines,
        });
        parked.deadline = deadline;
        self.deadlines.push(Reverse((deadline, token)));
        KernelQueue::Moving
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, token))) = self.deadlines.peek() {
            if deadline > now {
                return;
            }
            self.deadlines.pop();
            let Some(parked) = self.parked.get(token) else {
                continue;
            };
            // Answered in place since this entry was made: its deadline moved on.
            if parked.deadline > now {
                self.deadlines.push(Reverse((parked.deadline, token)));
                continue;
            }
            if matches!(parked.kind, ParkKind::Hung | ParkKind::PartialBody) {
                self.close_when_sent(token);
                continue;
            }
            if parked.kind == ParkKind::TurnedAway {
                // Its request line never came: the 503 goes out anyway, rather than a bare close.
                self.answer_turned_away(token, false, true);
                continue;
            }
            let kernel_queue = self.await_kernel_queue(token, now);
            if kernel_queue == KernelQueue::Moving {
                continue;
            }
            let Some(mut parked) = self.parked.remove(token) else {
                continue;
            };
            if parked.kind == ParkKind::Sending || kernel_queue == KernelQueue::Stuck {
                // It stopped reading: a plain close would leave its unread answers queued in
                // the kernel for as long as the client keeps its end, past any limit here.
                let _ = sys::reset_on_close(&parked.connection.stream);
            }
            if parked.kind == ParkKind::PartialRequest {
                // Nonblocking: a client that stopped reading must not stall the poller.
                if parked.connection.stream.set_nonblocking(true).is_ok() {
                    let connection = &mut parked.connection;
                    let head_only = http::is_head_request(&connection.buffer[..connection.filled]);
                    write_short_response(
                        &mut connection.stream,
                        &mut self.out,
                        self.date.current(),
                        408,
                        b"request timeout\n",
                        &[],
                        head_only,
                    );
                    parked.connection.shrink_for_parking(ParkKind::Closing);
                    self.register(Parked {
                        connection: parked.connection,
                        kind: ParkKind::Closing,
                        deadline: now + LINGERING_CLOSE,
                    });
                }
            }
        }
    }
}

/// At a deadline where the kernel holds `queued` bytes for the client: the baseline and count of
/// quiet deadlines to note for the next one, or `None` once [`QUEUE_PATIENCE`] deadlines in a
/// row passed without [`MIN_QUEUE_PROGRESS`] going out since the baseline. The baseline stays
/// put through quiet deadlines, so progress spread over them adds up; a trickle never resets
/// the count, or a client reading a few bytes now and then would hold its slot for hours.
fn next_queue_note(noted: Option<(usize, u32)>, queued: usize) -> Option<(usize, u32)> {
    match noted {
        None => Some((queued, 0)),
        Some((before, _)) if kernel_queue_moved(before, queued) => Some((queued, 0)),
        Some((before, quiet)) if quiet + 1 < QUEUE_PATIENCE => Some((before, quiet + 1)),
        Some(_) => None,
    }
}

/// Whether a kernel send queue of `before` bytes that holds `queued` a write timeout later went
/// out fast enough to keep the connection: [`MIN_QUEUE_PROGRESS`], or all of it when less.
fn kernel_queue_moved(before: usize, queued: usize) -> bool {
    before.saturating_sub(queued) >= MIN_QUEUE_PROGRESS.min(before)
}

/// Answers of an idle or closing connection still in the kernel at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelQueue {
    Empty,
    /// Going out, or quiet for fewer than [`QUEUE_PATIENCE`] deadlines: the connection is kept
    /// a while longer.
    Moving,
    /// Not going out for [`QUEUE_PATIENCE`] write timeouts: the client stopped reading.
    Stuck,
}

/// What became of a connection the poller served where it was parked.
enum InPlace {
    /// Everything that arrived is answered or is part of the next request: it waits for more
    /// (its kind and deadline are updated).
    Waiting,
    /// Needs a thread that may block: a request with a body, a slow route, a request to refuse,
    /// or a long pipeline.
    ToWorker,
    /// Part of a response is still to be sent ([`Connection::unsent`]): a new stall, or
    /// progress; the write deadline starts again.
    Sending,
    /// Still sending and nothing went out: the write deadline stays where it is, so a client
    /// that keeps sending but never reads is still given up on.
    NoProgress,
    /// It had its share ([`REQUESTS_PER_TURN`]) and more may be waiting: another turn after
    /// the other connections.
    Again,
    /// A hang or a lingering close: from now on its input is drained until the deadline.
    Drain(ParkKind, Instant),
    Close,
}

/// Answers what a readable parked connection sent, on the poller's thread and without ever
/// waiting. This is the keep-alive hot path: no hand-off to a worker, no thread switch, and no
/// system call besides one read and one write per request (the edge watch stays armed).
///
/// Under an edge watch everything that arrived must be read before waiting again: a short read
/// took all of it. After the peer's close no further report may come, so it reads on to EOF.
fn serve_in_place(
    shared: &Shared,
    out: &mut Vec<u8>,
    date: &mut DateCache,
    parked: &mut Parked,
    peer_closed: bool,
    woke: Instant,
) -> InPlace {
    let mut answered = 0;
    let mut drained = false;
    loop {
        if answered == REQUESTS_PER_TURN {
            // Busy, not idle: its deadline starts again, and it is watched as any waiting
            // connection is (it may have come from Sending), until its next turn.
            wait_for_more(shared, parked, woke);
            return InPlace::Again;
        }
        let connection = &mut parked.connection;
        if connection.filled > 0 {
            match http::parse_request(&connection.buffer[..connection.filled]) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Complete(head))
                    if matches!(head.body, BodyFraming::None | BodyFraming::Length(0))
                        && routes::answers_at_once(&head) =>
                {
                    answered += 1;
                    let (keep_alive, head_length) = (head.keep_alive, head.head_length);
                    out.clear();
                    let unix_millis = clock::now_unix_millis();
                    let exchange = Exchange {
                        request: &head,
                        peer: connection.peer,
                        started: connection.request_started.unwrap_or(woke),
                        unix_millis,
                        date: date.at(unix_millis),
                    };
                    let answered = routes::respond(&shared.app, &exchange, out);
                    let disposition = answered.disposition;
                    let Ok(written) = send_without_waiting(&connection.stream, out) else {
                        return InPlace::Close;
                    };
                    if written < out.len() || answered.rest.is_some() {
                        connection.unsent = Some(UnsentAnswer {
                            bytes: out[written..].to_vec(),
                            rest: answered.rest,
                            then: AfterSent::Answer {
                                disposition,
                                keep_alive,
                                head_length,
                            },
                        });
                        // Further pieces of a long answer are formatted by a worker.
                        return if written < out.len() {
                            InPlace::Sending
                        } else {
                            InPlace::ToWorker
                        };
                    }
                    if let Some((kind, deadline)) =
                        settle_answer(shared, connection, disposition, keep_alive, head_length)
                    {
                        return InPlace::Drain(kind, deadline);
                    }
                    continue;
                }
                _ => return InPlace::ToWorker,
            }
        }
        if drained {
            break;
        }
        if !connection.make_room() {
            // The worker answers 431.
            return InPlace::ToWorker;
        }
        let room = connection.buffer.len() - connection.filled;
        match connection.read_some_without_waiting(Some(woke)) {
            // EOF: between requests a normal goodbye; mid-request nobody is left to answer.
            Ok(0) => return InPlace::Close,
            Ok(read) => drained = read < room && !peer_closed,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return InPlace::Close,
        }
    }
    wait_for_more(shared, parked, woke);
    InPlace::Waiting
}

/// A connection with nothing to answer now: idle, or part of its next request in; its kind and
/// deadline say which.
fn wait_for_more(shared: &Shared, parked: &mut Parked, now: Instant) {
    if parked.connection.filled == 0 {
        parked.kind = ParkKind::Idle;
        parked.deadline = now + shared.timeouts.idle;
    } else {
        parked.kind = ParkKind::PartialRequest;
        parked.deadline = parked.connection.header_deadline(shared.timeouts.header);
    }
}

/// Writes more of a response that did not fit, when the socket has room; once it is out, goes
/// on as after any answer, with the requests that arrived meanwhile.
fn resume_sending(
    shared: &Shared,
    out: &mut Vec<u8>,
    date: &mut DateCache,
    parked: &mut Parked,
    event: Event,
    woke: Instant,
) -> InPlace {
    let connection = &mut parked.connection;
    let Some(unsent) = connection.unsent.as_mut() else {
        return serve_in_place(shared, out, date, parked, event.closed, woke);
    };
    // Input alone changes nothing: it waits until the response is out.
    if !event.writable && !event.closed {
        return InPlace::NoProgress;
    }
    let Ok(written) = send_without_waiting(&connection.stream, &unsent.bytes) else {
        return InPlace::Close;
    };
    unsent.bytes.drain(..written);
    if !unsent.bytes.is_empty() {
        return if written > 0 {
            InPlace::Sending
        } else {
            InPlace::NoProgress
        };
    }
    if unsent.rest.is_some() {
        // A worker formats the next pieces (`Connection::unsent` stays for it).
        return InPlace::ToWorker;
    }
    let Some(sent) = connection.unsent.take() else {
        return InPlace::Close;
    };
    let AfterSent::Answer {
        disposition,
        keep_alive,
        head_length,
    } = sent.then
    else {
        // `100 Continue` is out: a worker reads the body.
        return InPlace::ToWorker;
    };
    if let Some((kind, deadline)) =
        settle_answer(shared, connection, disposition, keep_alive, head_length)
    {
        return InPlace::Drain(kind, deadline);
    }
    // Input that arrived while sending was reported and ignored: read it now.
    serve_in_place(shared, out, date, parked, event.closed, woke)
}

/// Reads and drops what a hung connection sent; `true` when it is finished (EOF or error).
fn drain(stream: &mut TcpStream, scratch: &mut [u8]) -> bool {
    for _ in 0..HUNG_READS_PER_EVENT {
        match sys::receive_without_waiting(stream, scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ConnectionSlot;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn a_kernel_queue_is_given_up_on_after_its_patience_and_progress_adds_up() {
        let queued = 100_000;
        // A first look only notes.
        assert_eq!(next_queue_note(None, queued), Some((queued, 0)));
        // Quiet deadlines keep the baseline; the one that reaches the patience gives up.
        let mut noted = Some((queued, 0));
        for quiet in 1..QUEUE_PATIENCE {
            noted = next_queue_note(noted, queued);
            assert_eq!(noted, Some((queued, quiet)));
        }
        assert_eq!(next_queue_note(noted, queued), None);
        // Two steps below the minimum add up to it, against the baseline kept between them.
        let step = MIN_QUEUE_PROGRESS / 2 + 1;
        let after_one = next_queue_note(Some((queued, 0)), queued - step);
        assert_eq!(after_one, Some((queued, 1)));
        let after_two = next_queue_note(after_one, queued - 2 * step);
        assert_eq!(after_two, Some((queued - 2 * step, 0)));
    }

    #[test]
    fn a_kernel_queue_must_shrink_by_enough_to_count_as_moving() {
        assert!(kernel_queue_moved(
            3_000_000,
            3_000_000 - MIN_QUEUE_PROGRESS
        ));
        assert!(
            !kernel_queue_moved(3_000_000, 2_990_000),
            "10 KB in a write timeout"
        );
        assert!(!kernel_queue_moved(3_000_000, 3_000_000));
        // Less than the minimum left: all of it must go.
        assert!(kernel_queue_moved(5_000, 0));
        assert!(!kernel_queue_moved(5_000, 100));
        // Grown (a new answer went in since): not progress.
        assert!(!kernel_queue_moved(5_000, 6_000));
    }

    #[test]
    fn slab_tokens_of_departed_connections_are_stale() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let counter = Arc::new(AtomicUsize::new(0));
        let parked = || Parked {
            connection: Connection::new(
                TcpStream::connect(listener.local_addr().unwrap()).unwrap(),
                listener.local_addr().unwrap(),
                0,
                ConnectionSlot::take(&counter),
            ),
            kind: ParkKind::Idle,
            deadline: Instant::now(),
        };
        let mut slab = Slab::new();
        let first = slab.insert(parked());
        let second = slab.insert(parked());
        assert_eq!(counter.load(Ordering::Acquire), 2);
        assert_eq!(slab.len(), 2);
        assert!(slab.remove(first).is_some());
        assert_eq!(
            counter.load(Ordering::Acquire),
            1,
            "the slot guard counted the drop"
        );
        assert!(slab.get(first).is_none());
        assert!(slab.remove(first).is_none());
        let reused = slab.insert(parked());
        assert_eq!(reused & 0xFFFF_FFFF, first & 0xFFFF_FFFF, "slot reused");
        assert_ne!(reused, first, "with a new generation");
        assert!(slab.get(first).is_none());
        assert!(slab.get(reused).is_some());
        assert!(slab.get(second).is_some());
        assert_eq!(slab.len(), 2);
        assert_ne!(reused, WAKE_TOKEN);
    }
}
