//! The request log: every `/getbalance` request becomes exactly one entry, held in a bounded
//! in-memory ring (served by `/getlogs`) and appended to a log file by a writer thread.
//!
//! Invariants: ids are 1, 2, 3 … in arrival order and the ring is ordered by id with no gaps; the
//! id and the outcome are fixed together under one lock, so the k-th entry carries
//! `Chaos::outcome(k)`. An entry that drops out of memory before the writer saw it is kept aside
//! for the writer, so the file never misses or repeats an entry. A failed write is retried, not
//! dropped.

use crate::chaos::Outcome;
use crate::clock::UtcTime;
use crate::json::ObjectWriter;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the writer appends what has arrived: every entry reaches the file within about this.
/// Short, because the writer shares the cores with the threads answering requests and preempts
/// them while it formats: at 80k requests/s a 50 ms round is 4,000 entries and about 1.3 ms of
/// work in one piece, which showed up as the p99. wrk -c64 on one core, p99 medians of 9 runs:
/// 2.26 ms at 50 ms, 2.23 ms at 10 ms, 1.78 ms at 10 ms with the ring taken in [`WRITE_CHUNK`]s.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(10);
/// Most entries the writer takes from the ring per lock: recording a request takes the same lock,
/// so it is never held for long.
pub const WRITE_CHUNK: usize = 256;
/// The writer appends to the file once this much is formatted, even within a round.
const WRITE_BUFFER: usize = 1 << 20;
/// The most formatted text the writer holds while the file refuses it (a full disk, say): about
/// 5 s of the fastest load. Past it `/getbalance` is refused with 503 rather than drawing
/// outcomes that could not be logged, so a failing disk costs bounded memory and no entry.
pub const MAX_UNWRITTEN_BYTES: usize = 32 << 20;
/// The most entries that may leave memory before the writer took them: past it the writer is
/// stalled (a write that does not return: a frozen file system, a pipe nobody reads), and
/// `/getbalance` is refused as for [`MAX_UNWRITTEN_BYTES`]. About 15 MB of entries.
pub const MAX_EVICTED_UNWRITTEN: usize = 100_000;
/// The most entries one `page` call inspects, so a reader never holds the lock for long.
pub const MAX_SCAN_PER_PAGE: usize = 4096;
/// How far behind the newest entry's time a new entry's clock reading may be and still be taken
/// for a thread that read the clock first but took its id second (a preempted thread: a few
/// milliseconds), rather than for the system clock set back.
const CLOCK_SET_BACK_MILLIS: u64 = 1000;

/// What the server knows of a request before its outcome is drawn.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub unix_millis: u64,
    pub client: SocketAddr,
    /// `GET` or `HEAD`.
    pub method: &'a str,
    /// The request target as sent.
    pub target: &'a str,
    /// The client's `X-Request-Id`, if any (bytes as sent).
    pub request_id: Option<&'a [u8]>,
    /// From the request's first byte to its answer being ready.
    pub duration_micros: u64,
    /// The client forced the outcome (`X-Unreliable-Outcome`) instead of taking the draw.
    pub forced: bool,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub unix_millis: u64,
    /// IPv4-mapped IPv6 addresses are stored as IPv4, so `client=` filters match either way.
    pub client: SocketAddr,
    pub method: &'static str,
    /// Borrowed for the usual `/getbalance`, so most entries are taken out of memory (by the
    /// file writer, by `/getlogs`) without an allocation.
    pub target: Cow<'static, str>,
    pub outcome: Outcome,
    pub request_id: Option<Box<str>>,
    /// `None` for a timeout (nothing was answered).
    pub duration_micros: Option<u64>,
    /// The outcome was forced by the request, not drawn.
    pub forced: bool,
}

/// Totals since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Entries ever recorded (= the last id).
    pub total: u64,
    /// Entries that dropped out of memory (still in the file).
    pub dropped: u64,
    /// Drawn outcomes, indexed by [`Outcome::index`]: what the weights are tested against.
    pub by_outcome: [u64; Outcome::COUNT],
    /// Forced outcomes, indexed by [`Outcome::index`]; not draws, so not part of any test.
    pub forced_by_outcome: [u64; Outcome::COUNT],
}

/// Which entries `/getlogs` returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only entries with an id greater than this.
    pub since: u64,
    pub outcome: Option<Outcome>,
    pub client: Option<IpAddr>,
    pub request_id_prefix: Option<String>,
}

/// One slice of a scan: the matching entries, and how far the scan got (the `since` for the next).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub scanned_through: u64,
}

/// The file format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `2024-10-23 23:55:31,705 - 192.168.100.59 - 200 OK`, as the original tool wrote.
    Text,
    /// One JSON object per line, the same fields as `/getlogs`.
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The bytes of one entry's request id and target live in blocks of this size. A text never
/// spans two blocks (the longest is a target under 8 KiB plus a request id under 1 KiB).
const TEXT_BLOCK: usize = 64 * 1024;
/// The most text bytes held in memory; past it the oldest entries drop out even before
/// `--log-capacity` is reached, so positions fit in 32 bits and memory stays bounded.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;
/// Text bytes (request ids, unusual targets) held per entry of `--log-capacity`, on average.
/// Client-shaped ids are 20 to 40 bytes, so this only bites for a client that sends long
/// targets on purpose: each 8 KiB request line would otherwise keep 8 KiB, and the default
/// 100,000 entries 800 MB.
pub const TEXT_BYTES_PER_ENTRY: u64 = 512;
/// The least text limit, so a small `--log-capacity` still holds its long entries.
const MIN_TEXT_BYTES: u64 = 16 << 20;

/// How much text a log of `capacity` entries holds at most.
fn text_limit_for(capacity: usize) -> u64 {
    (capacity as u64)
        .saturating_mul(TEXT_BYTES_PER_ENTRY)
        .clamp(MIN_TEXT_BYTES, MAX_TEXT_BYTES)
}
/// `Stored::duration_micros` for "no answer" (a timeout).
const NO_DURATION: u32 = u32::MAX;
const FLAG_FORCED: u8 = 1;
const FLAG_HEAD: u8 = 2;
const FLAG_HAS_REQUEST_ID: u8 = 4;
/// The common target `/getbalance` is implied rather than stored.
const FLAG_USUAL_TARGET: u8 = 8;
const USUAL_TARGET: &str = "/getbalance";

/// One entry as held in memory: 40 bytes, no pointers. The id is implied by the position in the
/// ring, the request id and an unusual target live in the [`TextArena`]. A million entries with
/// 20-byte request ids take about 60 MB.
#[derive(Debug, Clone, Copy)]
struct Stored {
    unix_millis: u64,
    /// IPv4 addresses are stored IPv4-mapped.
    ip: [u8; 16],
    /// Position of the text in the arena, modulo 2^32.
    text_at: u32,
    duration_micros: u32,
    port: u16,
    target_length: u16,
    request_id_length: u16,
    outcome: u8,
    flags: u8,
}

/// Append-only text storage in fixed blocks, freed from the front as entries drop out.
#[derive(Debug, Default)]
struct TextArena {
    blocks: VecDeque<Vec<u8>>,
    /// Absolute position of the first byte of `blocks[0]`.
    first_block_at: u64,
    /// A freed block kept for reuse, so a steady log does not allocate.
    spare: Option<Vec<u8>>,
}

impl TextArena {
    /// Appends `parts` contiguously and returns the absolute position of the first byte.
    fn push(&mut self, parts: [&[u8]; 2]) -> u64 {
        let length = parts[0].len() + parts[1].len();
        let fits = self
            .blocks
            .back()
            .is_some_and(|block| block.len() + length <= TEXT_BLOCK);
        if !fits {
            let block = self
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(TEXT_BLOCK));
            self.blocks.push_back(block);
        }
        let last = self.blocks.len() - 1;
        let Some(block) = self.blocks.back_mut() else {
            return self.first_block_at;
        };
        let at = self.first_block_at + (last * TEXT_BLOCK + block.len()) as u64;
        block.extend_from_slice(parts[0]);
        block.extend_from_slice(parts[1]);
        at
    }

    /// The `length` bytes at the position whose low 32 bits are `text_at`.
    fn get(&self, text_at: u32, length: usize) -> &[u8] {
        let offset = text_at.wrapping_sub(self.first_block_at as u32) as usize;
        let (index, within) = (offset / TEXT_BLOCK, offset % TEXT_BLOCK);
        self.blocks
            .get(index)
            .and_then(|block| block.get(within..within + length))
            .unwrap_or(&[])
    }

    /// Frees the blocks that hold only text before the position whose low bits are `text_at`.
    fn release_before(&mut self, text_at: u32) {
        let offset = text_at.wrapping_sub(self.first_block_at as u32) as usize;
        for _ in 0..offset / TEXT_BLOCK {
            if let Some(mut block) = self.blocks.pop_front() {
                block.clear();
                self.spare = Some(block);
                self.first_block_at += TEXT_BLOCK as u64;
            }
        }
    }

    /// Frees every block: nothing refers to the text any more.
    fn release_all(&mut self) {
        while let Some(mut block) = self.blocks.pop_front() {
            block.clear();
            self.spare = Some(block);
            self.first_block_at += TEXT_BLOCK as u64;
        }
    }

    fn live_bytes(&self) -> u64 {
        (self.blocks.len() * TEXT_BLOCK) as u64
    }
}

#[derive(Debug)]
struct Ring {
    entries: VecDeque<Stored>,
    text: TextArena,
    capacity: usize,
    counts: Counts,
    /// Whether a file writer will collect entries; without one nothing is set aside.
    keeps_file: bool,
    /// The last id the file writer has taken.
    written_through: u64,
    /// Entries that left memory before the writer took them, oldest first.
    evicted_unwritten: Vec<Entry>,
    /// [`text_limit_for`] the capacity, smaller in tests.
    text_limit: u64,
    /// The time of the newest entry: times do not go back from one id to the next.
    last_unix_millis: u64,
}

impl Ring {
    /// The id of `entries[0]`.
    fn first_id(&self) -> u64 {
        self.counts.total + 1 - self.entries.len() as u64
    }

    /// The position in `entries` of the first entry with an id above `since`.
    fn index_after(&self, since: u64) -> usize {
        usize::try_from(since.saturating_add(1).saturating_sub(self.first_id()))
            .unwrap_or(usize::MAX)
    }

    fn request_id(&self, stored: &Stored) -> Option<&[u8]> {
        (stored.flags & FLAG_HAS_REQUEST_ID != 0).then(|| {
            self.text
                .get(stored.text_at, usize::from(stored.request_id_length))
        })
    }

    fn target(&self, stored: &Stored) -> &[u8] {
        if stored.flags & FLAG_USUAL_TARGET != 0 {
            return USUAL_TARGET.as_bytes();
        }
        let skip = usize::from(stored.request_id_length);
        let whole = self
            .text
            .get(stored.text_at, skip + usize::from(stored.target_length));
        whole.get(skip..).unwrap_or(&[])
    }

    fn client(stored: &Stored) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(stored.ip)).to_canonical(),
            stored.port,
        )
    }

    fn matches(&self, filter: &Filter, stored: &Stored) -> bool {
        filter
            .outcome
            .is_none_or(|outcome| stored.outcome == outcome.index() as u8)
            && filter
                .client
                .is_none_or(|ip| Ring::client(stored).ip() == ip.to_canonical())
            && filter.request_id_prefix.as_deref().is_none_or(|prefix| {
                self.request_id(stored)
                    .is_some_and(|id| id.starts_with(prefix.as_bytes()))
            })
    }

    /// The public form of the entry at `index`.
    fn entry(&self, index: usize, stored: &Stored) -> Entry {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned().into_boxed_str();
        Entry {
            id: self.first_id() + index as u64,
            unix_millis: stored.unix_millis,
            client: Ring::client(stored),
            method: if stored.flags & FLAG_HEAD != 0 {
                "HEAD"
            } else {
                "GET"
            },
            target: if stored.flags & FLAG_USUAL_TARGET != 0 {
                Cow::Borrowed(USUAL_TARGET)
            } else {
                Cow::Owned(String::from_utf8_lossy(self.target(stored)).into_owned())
            },
            outcome: Outcome::ALL
                .get(usize::from(stored.outcome))
                .copied()
                .unwrap_or(Outcome::Timeout),
            request_id: self.request_id(stored).map(text),
            duration_micros: (stored.duration_micros != NO_DURATION)
                .then_some(u64::from(stored.duration_micros)),
            forced: stored.flags & FLAG_FORCED != 0,
        }
    }

    /// Drops the oldest entry, keeping it for the file writer if it has not taken it yet.
    fn evict_oldest(&mut self) {
        let first_id = self.first_id();
        let Some(oldest) = self.entries.front().copied() else {
            return;
        };
        if self.keeps_file && first_id > self.written_through {
            let entry = self.entry(0, &oldest);
            self.evicted_unwritten.push(entry);
        }
        self.entries.pop_front();
        self.counts.dropped += 1;
        match self.entries.front() {
            Some(next) => self.text.release_before(next.text_at),
            None => self.text.release_all(),
        }
    }
}

/// The in-memory log, shared by every worker and the file writer.
#[derive(Debug)]
pub struct RequestLog {
    ring: Mutex<Ring>,
    /// Set by the file writer while it holds [`MAX_UNWRITTEN_BYTES`] it cannot write. Outside
    /// the lock: every `/getbalance` reads it.
    file_stalled: AtomicBool,
    /// The last write to the file failed (a full disk, a read-only file system): entries wait
    /// in memory, and `/health` says so long before the backlog stalls the log.
    file_failing: AtomicBool,
    /// `/getbalance` requests refused while the file was stalled.
    refused_while_stalled: AtomicU64,
    /// Entries 1..=this are whole in the log file: how far a stop that cannot wait got.
    in_file: AtomicU64,
}

/// What [`RequestLog::record`] decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: u64,
    pub outcome: Outcome,
}

impl RequestLog {
    /// `capacity` entries are kept in memory (at least one); `keeps_file` when a [`LogWriter`]
    /// will collect every entry.
    pub fn new(capacity: usize, keeps_file: bool) -> Result<RequestLog, LogError> {
        RequestLog::with_text_limit(capacity, keeps_file, text_limit_for(capacity))
    }

    fn with_text_limit(
        capacity: usize,
        keeps_file: bool,
        text_limit: u64,
    ) -> Result<RequestLog, LogError> {
        let capacity = capacity.max(1);
        // Reserved whole: untouched pages cost no memory, and the ring never doubles. Asked
        // for, not assumed: a large capacity under a memory limit is an error, not an abort.
        let mut entries = VecDeque::new();
        entries
            .try_reserve_exact(capacity)
            .map_err(|error| LogError::Capacity { capacity, error })?;
        Ok(RequestLog {
            ring: Mutex::new(Ring {
                entries,
                text: TextArena::default(),
                capacity,
                counts: Counts::default(),
                keeps_file,
                written_through: 0,
                evicted_unwritten: Vec::new(),
                text_limit,
                last_unix_millis: 0,
            }),
            file_stalled: AtomicBool::new(false),
            file_failing: AtomicBool::new(false),
            refused_while_stalled: AtomicU64::new(0),
            in_file: AtomicU64::new(0),
        })
    }

    /// Whether a new entry can be promised to reach the log file: false while the file writer
    /// is stalled (see [`MAX_UNWRITTEN_BYTES`]). A refused request is counted here.
    pub fn takes_entries(&self) -> bool {
        let stalled = self.file_stalled.load(Ordering::Relaxed);
        if stalled {
            self.refused_while_stalled.fetch_add(1, Ordering::Relaxed);
        }
        !stalled
    }

    /// Whether the file writer is stalled, for `/health`.
    pub fn file_stalled(&self) -> bool {
        self.file_stalled.load(Ordering::Relaxed)
    }

    /// Whether the last write to the log file failed (not merely a pipe's slow reader).
    pub fn file_failing(&self) -> bool {
        self.file_failing.load(Ordering::Relaxed)
    }

    /// Set by the file writer after each write that failed or succeeded.
    pub fn set_file_failing(&self, failing: bool) {
        self.file_failing.store(failing, Ordering::Relaxed);
    }

    /// Marks the file writer stalled or not; returns whether it was, and the requests refused
    /// meanwhile.
    pub fn set_file_stalled(&self, stalled: bool) -> (bool, u64) {
        let was = self.file_stalled.swap(stalled, Ordering::Relaxed);
        (was, self.refused_while_stalled.load(Ordering::Relaxed))
    }

    /// A panic elsewhere while the lock was held leaves the ring consistent (every mutation is a
    /// single push or pop), so a poisoned lock is used as it is rather than losing the log.
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Assigns the next id, lets `choose` pick the outcome for it, and appends the entry. Nothing
    /// here allocates in the steady state.
    pub fn record(&self, new: &NewEntry<'_>, choose: impl FnOnce(u64) -> Outcome) -> Recorded {
        let request_id = new.request_id.map(String::from_utf8_lossy);
        let request_id = request_id.as_deref().unwrap_or("").as_bytes();
        let usual_target = new.target == USUAL_TARGET;
        let target = if usual_target {
            &[][..]
        } else {
            new.target.as_bytes()
        };
        let ip = match new.client.ip().to_canonical() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut flags = 0;
        for (set, flag) in [
            (new.forced, FLAG_FORCED),
            (new.method == "HEAD", FLAG_HEAD),
            (new.request_id.is_some(), FLAG_HAS_REQUEST_ID),
            (usual_target, FLAG_USUAL_TARGET),
        ] {
            if set {
                flags |= flag;
            }
        }
        let mut stored = Stored {
            unix_millis: new.unix_millis,
            ip: ip.octets(),
            text_at: 0,
            duration_micros: u32::try_from(new.duration_micros)
                .unwrap_or(NO_DURATION - 1)
                .min(NO_DURATION - 1),
            port: new.client.port(),
            // The server's limits keep both far below 64 KiB; the clamp only guards the format.
            target_length: u16::try_from(target.len()).unwrap_or(u16::MAX),
            request_id_length: u16::try_from(request_id.len()).unwrap_or(u16::MAX),
            outcome: 0,
            flags,
        };
        let target = &target[..usize::from(stored.target_length)];
        let request_id = &request_id[..usize::from(stored.request_id_length)];

        let mut ring = self.lock();
        let mut writer_stalled = false;
        while ring.entries.len() >= ring.capacity
            || (!ring.entries.is_empty() && ring.text.live_bytes() >= ring.text_limit)
        {
            ring.evict_oldest();
            writer_stalled = ring.evicted_unwritten.len() >= MAX_EVICTED_UNWRITTEN;
        }
        // The clock was read before the lock: a thread that read it earlier may take its id
        // after one that read it later. It gets that one's time, which still lies between its
        // request and its recording. A clock set back by [`CLOCK_SET_BACK_MILLIS`] or more is
        // believed.
        let behind = ring.last_unix_millis.saturating_sub(stored.unix_millis);
        if behind < CLOCK_SET_BACK_MILLIS {
            stored.unix_millis += behind;
        }
        ring.last_unix_millis = stored.unix_millis;
        ring.counts.total += 1;
        let id = ring.counts.total;
        let outcome = choose(id);
        stored.outcome = outcome.index() as u8;
        if outcome == Outcome::Timeout {
            stored.duration_micros = NO_DURATION;
        }
        let tally = if new.forced {
            &mut ring.counts.forced_by_outcome
        } else {
            &mut ring.counts.by_outcome
        };
        tally[outcome.index()] += 1;
        stored.text_at = ring.text.push([request_id, target]) as u32;
        ring.entries.push_back(stored);
        drop(ring);
        if writer_stalled && !self.file_stalled.swap(true, Ordering::Relaxed) {
            say!(
                "unreliable: the log writer is {MAX_EVICTED_UNWRITTEN} entries behind (a write \
                 that does not return?): /getbalance is refused with 503 until it catches up"
            );
        }
        Recorded { id, outcome }
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts
    }

    /// Up to `max` entries matching `filter` with ids up to `up_to`, oldest first. At most
    /// [`MAX_SCAN_PER_PAGE`] entries are inspected per call: continue from `scanned_through`.
    pub fn page(&self, filter: &Filter, up_to: u64, max: usize) -> Page {
        let ring = self.lock();
        let mut page = Page {
            entries: Vec::new(),
            scanned_through: filter.since.max(ring.counts.dropped).min(up_to),
        };
        if ring.entries.is_empty() {
            page.scanned_through = up_to.max(filter.since).min(ring.counts.total);
            return page;
        }
        let first_id = ring.first_id();
        let start = ring.index_after(filter.since);
        for (index, stored) in ring
            .entries
            .iter()
            .enumerate()
            .skip(start)
            .take(MAX_SCAN_PER_PAGE)
        {
            let id = first_id + index as u64;
            if id > up_to || page.entries.len() >= max {
                break;
            }
            page.scanned_through = id;
            if ring.matches(filter, stored) {
                page.entries.push(ring.entry(index, stored));
            }
        }
        page
    }

    /// Everything recorded since the last call, oldest first, for the file writer.
    /// The next entries the file writer has not taken, oldest first: every entry that left
    /// memory unwritten, then at most `limit` from the ring.
    fn take_unwritten(&self, limit: usize) -> Vec<Entry> {
        let mut ring = self.lock();
        let mut batch = std::mem::take(&mut ring.evicted_unwritten);
        // Entries only leave memory unwritten while the writer is behind, and then all of
        // them up to the ring's first entry are in `batch`.
        let before_ring = ring.first_id().saturating_sub(1);
        ring.written_through = ring.written_through.max(before_ring);
        let start = ring.index_after(ring.written_through);
        let evicted = batch.len();
        batch.extend(
            ring.entries
                .iter()
                .enumerate()
                .skip(start)
                .take(limit)
                .map(|(index, stored)| ring.entry(index, stored)),
        );
        ring.written_through += (batch.len() - evicted) as u64;
        batch
    }
}

/// Writes an entry as the JSON object `/getlogs` and the JSON log format use.
pub fn write_entry_json(out: &mut String, entry: &Entry) {
    let mut object = ObjectWriter::new(out);
    object.u64("id", entry.id);
    // The time and the addresses are written straight into the object, quoted: digits and
    // `-:.TZ[]%` need no escaping, and `/getlogs` writes up to a whole log of these.
    let time = object.key("time");
    time.push('"');
    UtcTime::from_unix_millis(entry.unix_millis).write_rfc3339(time);
    time.push('"');
    let client = object.key("client");
    client.push('"');
    match entry.client {
        SocketAddr::V4(v4) => {
            push_ip(client, IpAddr::V4(*v4.ip()));
            client.push(':');
            let _ = write!(client, "{}", v4.port());
        }
        SocketAddr::V6(_) => {
            let _ = write!(client, "{}", entry.client);
        }
    }
    client.push('"');
    let client_ip = object.key("client_ip");
    client_ip.push('"');
    push_ip(client_ip, entry.client.ip());
    client_ip.push('"');
    object.string("method", entry.method);
    object.string("path", &entry.target);
    object.string("outcome", entry.outcome.name());
    match entry.outcome.status() {
        Some(status) => object.u64("status", u64::from(status)),
        None => object.null("status"),
    };
    object.optional_string("request_id", entry.request_id.as_deref());
    match entry.duration_micros {
        Some(micros) => object.f64("duration_ms", micros as f64 / 1000.0),
        None => object.null("duration_ms"),
    };
    object.bool("forced", entry.forced);
    object.finish();
}

/// Writes an entry in the original text style (no newline).
pub fn write_entry_text(out: &mut String, entry: &Entry) {
    UtcTime::from_unix_millis(entry.unix_millis).write_log_style(out);
    out.push_str(" - ");
    push_ip(out, entry.client.ip());
    out.push_str(" - ");
    out.push_str(entry.outcome.text_label());
}

/// Appends `ip` as `Display` writes it. The writer formats every entry, and nearly every client
/// is IPv4 (mapped addresses are stored as IPv4), whose dotted quad is written digit by digit:
/// `fmt` machinery cost more than the rest of the line. IPv6 goes through `Display`, which also
/// compresses zeros the RFC 5952 way.
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        let _ = write!(out, "{ip}");
        return;
    };
    for (position, octet) in v4.octets().into_iter().enumerate() {
        if position > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// Why the log cannot be kept as asked.
#[derive(Debug)]
pub enum LogError {
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A FIFO no process opened for reading within [`FIFO_READER_WAIT`].
    FifoWithoutReader {
        path: PathBuf,
    },
    /// Another process holds the file's lock: another server writes to it.
    InUse {
        path: PathBuf,
    },
    /// The ring for `--log-capacity` could not be reserved.
    Capacity {
        capacity: usize,
        error: std::collections::TryReserveError,
    },
    /// At the stop, entries `first..=last` could not be written; they are not in the file.
    Unwritten {
        path: PathBuf,
        error: std::io::Error,
        first: u64,
        last: u64,
    },
    WriterPanicked,
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Open { path, error } => {
                // The kernel's EISDIR for `file.log/` would send the user looking for a directory.
                let slash = if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
                    "; a path ending in '/' names a directory"
                } else {
                    ""
                };
                write!(
                    f,
                    "cannot open log file '{}': {error}{slash} (choose another --log-file, or \
                     --no-log-file)",
                    path.display()
                )
            }
            LogError::FifoWithoutReader { path } => write!(
                f,
                "cannot open log file '{}': it is a FIFO and nothing opened it for reading \
                 within {} s (start its reader first, or choose another --log-file)",
                path.display(),
                FIFO_READER_WAIT.as_secs()
            ),
            LogError::InUse { path } => write!(
                f,
                "log file '{}' is being written by another process (another unreliable server?): \
                 two runs in one file would mix their entries (choose another --log-file, or \
                 --no-log-file)",
                path.display()
            ),
            LogError::Capacity { capacity, error } => write!(
                f,
                "cannot reserve {} MiB for --log-capacity {capacity}: {error} (choose a smaller \
                 --log-capacity)",
                (*capacity as u64).saturating_mul(std::mem::size_of::<Stored>() as u64) >> 20
            ),
            LogError::Unwritten {
                path,
                error,
                first,
                last,
            } => write!(
                f,
                "cannot write log file '{}': {error}; entries {first} to {last} ({} of them) \
                 are not in it",
                path.display(),
                last.saturating_sub(*first) + 1
            ),
            LogError::WriterPanicked => write!(f, "the log writer thread panicked"),
        }
    }
}

/// How long a stop waits for a log write that makes no progress (a frozen file system, a pipe
/// nobody reads) before it names the entries not written and gives up.
pub const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// How long a stop waits for the log writer before it says so (and that a second signal ends the
/// wait): a backlog for a slow disk or a pipe's slow reader, not the usual last round.
pub const STOP_NOTICE: Duration = Duration::from_secs(1);
/// How long a writer told to give up may take to finish the line it is in the middle of, for a
/// pipe's reader (a file takes a cut line back instead): half an entry at the end of what it
/// reads would be neither in the log nor out of it.
const TORN_LINE_GRACE: Duration = Duration::from_millis(200);
/// How long a stop that gives up waits for the writer to end, so that the entries it names as
/// missing are exactly those not written: a writer that is not stuck in a `write` ends within
/// [`TORN_LINE_GRACE`].
const GIVE_UP_GRACE: Duration = Duration::from_millis(500);
/// How often the writer checks that its path still names the file it writes: every round, so
/// a removed file takes at most one round of entries with it (a check a second lost 9,056 at
/// 20k requests/s); a moved file loses none either way. One `stat` per round.
const ROTATION_CHECK: Duration = WRITE_INTERVAL;
/// A failure the writer has reported is reported again after this, not at every retry, so a
/// file that fails and recovers many times a second costs a line now and then.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// `O_NONBLOCK` (Linux, x86_64 and aarch64): opening a FIFO nobody reads fails at once instead
/// of waiting, and a full pipe is a retried error instead of a write that never returns. No
/// effect on regular files.
const O_NONBLOCK: i32 = 0o4000;
/// `ENXIO`: what opening a FIFO without a reader for writing fails with under `O_NONBLOCK`.
const ENXIO: i32 = 6;
/// How long start-up waits for a FIFO log file's reader to open it before refusing to start.
pub const FIFO_READER_WAIT: Duration = Duration::from_secs(1);
/// How often that wait tries the open again.
const FIFO_READER_POLL: Duration = Duration::from_millis(10);

/// The thread that appends every entry to the log file.
#[derive(Debug)]
pub struct LogWriter {
    log: Arc<RequestLog>,
    path: PathBuf,
    stop: Arc<StopRequest>,
    thread: JoinHandle<Result<(), LogError>>,
}

/// What [`LogWriter::finish`] asks of the writer thread: to write everything and end, then
/// perhaps to give up on what is left.
#[derive(Debug, Default)]
struct StopRequest {
    stopped: Mutex<bool>,
    wake: Condvar,
    /// Set when the stop gives up: the writer ends once the line in progress is whole (within
    /// [`TORN_LINE_GRACE`]), with the entries after it unwritten.
    given_up: AtomicBool,
}

/// Opens `path` for appending (created if missing) and starts the writer thread. The `log` must
/// have been made with `keeps_file`.
pub fn start_writer(
    log: Arc<RequestLog>,
    path: &Path,
    format: LogFormat,
) -> Result<LogWriter, LogError> {
    let file = LogFile::open(path)?;
    let stop = Arc::new(StopRequest::default());
    let thread_stop = Arc::clone(&stop);
    let thread_log = Arc::clone(&log);
    let thread_path = path.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            write_until_stopped(
                &thread_log,
                file,
                &thread_path,
                format,
                &thread_stop,
                MAX_UNWRITTEN_BYTES,
            )
        })
        .map_err(|error| LogError::Open {
            path: PathBuf::from("(log writer thread)"),
            error,
        })?;
    Ok(LogWriter {
        log,
        path: path.to_path_buf(),
        stop,
        thread,
    })
}

impl LogWriter {
    /// Writes what is left and stops. Call after the server has stopped recording. A writer that
    /// makes no progress for [`STOP_PATIENCE`] is given up on (see [`LogWriter::give_up`]), and the
    /// entries it did not write are named in the error. Past [`STOP_NOTICE`] the wait is announced,
    /// and from then on `interrupted` (which waits up to the time it is given and says whether a
    /// second signal came) ends it at once: a pipe's reader that reads slowly would otherwise hold
    /// the stop for as long as it takes. Before the notice a signal is let pass: a quick second
    /// Ctrl-C is a habit, and the last round of entries is usually a few milliseconds from the
    /// file.
    pub fn finish(self, mut interrupted: impl FnMut(Duration) -> bool) -> Result<(), LogError> {
        *self
            .stop
            .stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        self.stop.wake.notify_all();
        let started = std::time::Instant::now();
        let mut announced = false;
        let mut progress = (self.log.in_file(), started);
        while !self.thread.is_finished() {
            let stop_now = interrupted(Duration::from_millis(5));
            let in_file = self.log.in_file();
            let total = self.log.counts().total;
            if stop_now && announced && in_file < total {
                return self.give_up(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "a second signal stopped the writing",
                ));
            }
            if in_file != progress.0 {
                progress = (in_file, std::time::Instant::now());
            } else if progress.1.elapsed() >= STOP_PATIENCE {
                return self.give_up(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no write went through for {} s", STOP_PATIENCE.as_secs()),
                ));
            }
            if !announced && started.elapsed() >= STOP_NOTICE && in_file < total {
                announced = true;
                say!(
                    "unreliable: writing the last {} log entries to '{}'; a second signal stops \
                     without them",
                    total - in_file,
                    self.path.display()
                );
            }
        }
        self.join()
    }

    /// Tells the writer to end without the rest and names what is not in the file, once the
    /// writer has ended (or is stuck in a write that does not return), so that the count is exact.
    fn give_up(self, why: std::io::Error) -> Result<(), LogError> {
        self.stop.given_up.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + GIVE_UP_GRACE;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (in_file, total) = (self.log.in_file(), self.log.counts().total);
        if self.thread.is_finished() && in_file >= total {
            // The rest went out meanwhile.
            return self.join();
        }
        Err(LogError::Unwritten {
            path: self.path,
            error: why,
            first: in_file + 1,
            last: total,
        })
    }

    fn join(self) -> Result<(), LogError> {
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => Err(LogError::WriterPanicked),
        }
    }
}

impl RequestLog {
    /// Entries 1..=this are whole in the log file.
    fn in_file(&self) -> u64 {
        self.in_file.load(Ordering::Relaxed)
    }
}

/// Where the writer appends: the log file, or in tests a disk that fills on demand.
trait Sink: Write {
    /// Takes the last `bytes` written back out, so the file never ends mid-line.
    fn discard_last(&mut self, bytes: u64) -> std::io::Result<()>;

    /// Moves to a new file when the path no longer names this one (log rotation); says what
    /// happened when something did. Looks at most every [`ROTATION_CHECK`] unless `now`.
    fn follow_rotation(&mut self, _now: bool) -> Option<String> {
        None
    }

    /// The path no longer names the file written to, and no new one could be taken there.
    fn detached(&self) -> bool {
        false
    }
}

/// The log file, and what tells whether its path still names it.
#[derive(Debug)]
struct LogFile {
    file: File,
    path: PathBuf,
    /// Device and inode of a regular file; `None` for a FIFO or a device, which are not rotated.
    identity: Option<(u64, u64)>,
    checked_at: std::time::Instant,
    /// The file was moved or removed and no new one could be taken at its path (reported
    /// once, retried every round): entries still go to the old file.
    detached: bool,
}

impl LogFile {
    fn open(path: &Path) -> Result<LogFile, LogError> {
        let file = open_waiting_for_a_reader(path)?;
        // Two servers appending to one file would interleave two runs' ids 1, 2, 3 …: the
        // file would no longer prove what either did. A file system that cannot lock is used
        // as it is.
        if let Ok(false) = crate::sys::try_lock_exclusive(&file) {
            return Err(LogError::InUse {
                path: path.to_path_buf(),
            });
        }
        let mut log_file = LogFile {
            identity: identity(&file),
            file,
            path: path.to_path_buf(),
            checked_at: std::time::Instant::now(),
            detached: false,
        };
        log_file.end_last_line();
        Ok(log_file)
    }

    /// A file left ending mid-line (an earlier run killed, another tool) gets a line break, so
    /// the first new entry is a line of its own.
    fn end_last_line(&mut self) {
        let Ok(meta) = self.file.metadata() else {
            return;
        };
        if !meta.is_file() || meta.len() == 0 {
            return;
        }
        let mut last = [0u8];
        let ends_mid_line = File::open(&self.path)
            .and_then(|reader| reader.read_at(&mut last, meta.len() - 1))
            .is_ok_and(|read| read == 1 && last[0] != b'\n');
        if ends_mid_line && self.file.write_all(b"\n").is_ok() {
            say!(
                "unreliable: log file '{}' ended mid-line (an earlier run killed?); a line break \
                 was added before the new entries",
                self.path.display()
            );
        }
    }
}

/// Opens the log file; a FIFO whose reader has not opened it yet is given
/// [`FIFO_READER_WAIT`] to do so, since `cat log.fifo & unreliable serve --log-file log.fifo`
/// races the two opens.
fn open_waiting_for_a_reader(path: &Path) -> Result<File, LogError> {
    let started = std::time::Instant::now();
    loop {
        let error = match open_for_append(path) {
            Ok(file) => return Ok(file),
            Err(error) => error,
        };
        let is_fifo = std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_fifo());
        if error.raw_os_error() != Some(ENXIO) || !is_fifo {
            return Err(LogError::Open {
                path: path.to_path_buf(),
                error,
            });
        }
        if started.elapsed() >= FIFO_READER_WAIT {
            return Err(LogError::FifoWithoutReader {
                path: path.to_path_buf(),
            });
        }
        std::thread::sleep(FIFO_READER_POLL);
    }
}

fn open_for_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
}

fn identity(file: &File) -> Option<(u64, u64)> {
    file.metadata()
        .ok()
        .filter(|meta| meta.is_file())
        .map(|meta| (meta.dev(), meta.ino()))
}

impl Write for LogFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Sink for LogFile {
    fn discard_last(&mut self, bytes: u64) -> std::io::Result<()> {
        // Only when nothing was appended after this writer's last bytes (another process
        // sharing the file): cutting would take its lines instead.
        let end = self.file.stream_position()?;
        if self.file.metadata()?.len() != end || bytes > end {
            return Err(std::io::Error::other("the file changed under the writer"));
        }
        self.file.set_len(end - bytes)?;
        self.file.seek(SeekFrom::Start(end - bytes)).map(|_| ())
    }

    fn follow_rotation(&mut self, now: bool) -> Option<String> {
        self.identity?;
        if !now && self.checked_at.elapsed() < ROTATION_CHECK {
            return None;
        }
        self.checked_at = std::time::Instant::now();
        let named = std::fs::metadata(&self.path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        if named == self.identity {
            return None;
        }
        match open_for_append(&self.path) {
            // Another server started on the path while it was free: its file, not this one's.
            Ok(file) if crate::sys::try_lock_exclusive(&file).is_ok_and(|locked| !locked) => {
                self.detach("is now written by another process")
            }
            Ok(file) => {
                self.identity = identity(&file);
                self.file = file;
                self.detached = false;
                Some(format!(
                    "log file '{}' was moved or removed; new entries go to a new file there",
                    self.path.display()
                ))
            }
            Err(error) => self.detach(&format!("cannot be created again ({error})")),
        }
    }

    fn detached(&self) -> bool {
        self.detached
    }
}

impl LogFile {
    /// Keeps the old file when no new one can be taken at the path; says so once.
    fn detach(&mut self, why: &str) -> Option<String> {
        if std::mem::replace(&mut self.detached, true) {
            return None;
        }
        Some(format!(
            "log file '{}' was moved or removed and {why}; entries still go to the old file, \
             and /health answers 503",
            self.path.display()
        ))
    }
}

/// Formatted lines not yet in the file.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The newlines in `bytes`: the entries whose lines are not yet whole in the file.
    lines: u64,
    /// The file ends inside the first line of `bytes` (a pipe, which cannot take a line back).
    torn: bool,
}

impl Pending {
    fn push(&mut self, line: &str) {
        self.bytes.extend_from_slice(line.as_bytes());
        self.lines += 1;
    }

    /// Writes what it can and removes what went out; returns the entries now whole in the file.
    /// On a failure the rest stays for the next round, so an entry is delayed but never lost,
    /// and never written twice; a line cut short is taken back out where the file allows it.
    /// Once `given_up` is set it writes no further than the end of the line in progress (and
    /// waits up to [`TORN_LINE_GRACE`] for room for it), then fails with `Interrupted`.
    fn append(
        &mut self,
        sink: &mut impl Sink,
        given_up: &AtomicBool,
    ) -> (u64, std::io::Result<()>) {
        let mut written = 0;
        // Once given up: where the line in progress ends, and until when it may take.
        let mut last_line: Option<(usize, std::time::Instant)> = None;
        let result = loop {
            if written == self.bytes.len() {
                break if written == 0 { Ok(()) } else { sink.flush() };
            }
            if last_line.is_none() && given_up.load(Ordering::Relaxed) {
                let mid_line = match written.checked_sub(1) {
                    Some(last) => self.bytes[last] != b'\n',
                    None => self.torn,
                };
                let end = if mid_line {
                    self.bytes[written..]
                        .iter()
                        .position(|&byte| byte == b'\n')
                        .map_or(self.bytes.len(), |newline| written + newline + 1)
                } else {
                    written
                };
                last_line = Some((end, std::time::Instant::now() + TORN_LINE_GRACE));
            }
            let end = match last_line {
                Some((end, deadline))
                    if written >= end || std::time::Instant::now() >= deadline =>
                {
                    break Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "the stop gave up on the rest",
                    ));
                }
                Some((end, _)) => end,
                None => self.bytes.len(),
            };
            match sink.write(&self.bytes[written..end]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(count) => written += count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error)
                    if last_line.is_some() && error.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(error) => break Err(error),
            }
        };
        let lines = if result.is_ok() {
            self.lines
        } else {
            let whole = self.bytes[..written]
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |newline| newline + 1);
            if whole < written && sink.discard_last((written - whole) as u64).is_ok() {
                written = whole;
            }
            self.bytes[..written]
                .iter()
                .filter(|&&byte| byte == b'\n')
                .count() as u64
        };
        if let Some(last) = written.checked_sub(1) {
            self.torn = self.bytes[last] != b'\n';
        }
        self.bytes.drain(..written);
        self.lines -= lines;
        (lines, result)
    }
}

/// What the writer has told the user about a failing file, so it neither floods stderr nor
/// stays silent about a failure that lasts.
#[derive(Debug, Default)]
struct FailureReports {
    failing: bool,
    /// This failure has been reported (and its end will be).
    reported: bool,
    last_report: Option<std::time::Instant>,
}

impl FailureReports {
    fn failed(&mut self, path: &Path, error: &std::io::Error) {
        self.failing = true;
        let due = self
            .last_report
            .is_none_or(|at| at.elapsed() >= REPORT_INTERVAL);
        if self.reported || !due {
            return;
        }
        self.reported = true;
        self.last_report = Some(std::time::Instant::now());
        if error.kind() == std::io::ErrorKind::WouldBlock {
            say!(
                "unreliable: the reader of log file '{}' is not keeping up (entries wait in memory)",
                path.display()
            );
        } else {
            say!(
                "unreliable: cannot write log file '{}': {error} (will retry; entries wait in \
                 memory)",
                path.display()
            );
        }
    }

    fn succeeded(&mut self, path: &Path, log: &RequestLog, caught_up: bool) {
        self.failing = false;
        if log.file_stalled() && !caught_up {
            // Told once, with the refusals, when the backlog is out (it was told twice).
            return;
        }
        let was_stalled = log.file_stalled() && log.set_file_stalled(false).0;
        let reported = std::mem::take(&mut self.reported);
        if !reported && !was_stalled {
            return;
        }
        let refused = if was_stalled {
            let refused = log.refused_while_stalled.load(Ordering::Relaxed);
            format!("; {refused} /getbalance requests were refused with 503 so far")
        } else {
            String::new()
        };
        say!(
            "unreliable: log file '{}' is written again{refused}",
            path.display()
        );
    }
}

fn write_until_stopped(
    log: &RequestLog,
    mut sink: impl Sink,
    path: &Path,
    format: LogFormat,
    stop: &StopRequest,
    unwritten_limit: usize,
) -> Result<(), LogError> {
    let mut line = String::new();
    let mut pending = Pending::default();
    // Entries 1..=written are whole in the file: the writer takes them in id order.
    let mut written: u64 = 0;
    let mut reports = FailureReports::default();
    loop {
        let stopping = {
            let guard = stop
                .stopped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *guard {
                true
            } else {
                let (guard, _) = stop
                    .wake
                    .wait_timeout(guard, WRITE_INTERVAL)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *guard
            }
        };
        // At the stop the path is looked at again whenever it was last: a file removed just
        // before would otherwise take the last entries with it.
        if let Some(news) = sink.follow_rotation(stopping) {
            say!("unreliable: {news}");
        }
        loop {
            // While the file refuses what is held, the rest waits in the ring.
            let mut took_all = pending.bytes.len() < unwritten_limit;
            while took_all {
                let batch = log.take_unwritten(WRITE_CHUNK);
                for entry in &batch {
                    line.clear();
                    match format {
                        LogFormat::Text => write_entry_text(&mut line, entry),
                        LogFormat::Json => write_entry_json(&mut line, entry),
                    }
                    line.push('\n');
                    pending.push(&line);
                }
                if batch.len() < WRITE_CHUNK {
                    break;
                }
                took_all = pending.bytes.len() < WRITE_BUFFER;
            }
            let (lines, result) = pending.append(&mut sink, &stop.given_up);
            written += lines;
            log.in_file.store(written, Ordering::Relaxed);
            // A round that began before the stop and was given up on ends as one at the stop.
            let stopping = stopping || stop.given_up.load(Ordering::Relaxed);
            match result {
                Ok(()) => {
                    log.set_file_failing(sink.detached());
                    if reports.failing || log.file_stalled() {
                        // What the backlog took is handed back.
                        pending.bytes.shrink_to(WRITE_BUFFER);
                        reports.succeeded(path, log, took_all);
                    }
                    // At the stop everything goes out; otherwise what arrived meanwhile waits
                    // for the next round, so a round always ends.
                    if stopping && !took_all {
                        continue;
                    }
                }
                // A slow reader of a pipe is waited for at the stop, within the patience of
                // `LogWriter::finish`.
                Err(error) if stopping && error.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(WRITE_INTERVAL);
                    continue;
                }
                Err(error) if stopping => {
                    return Err(LogError::Unwritten {
                        path: path.to_path_buf(),
                        error,
                        first: written + 1,
                        last: log.counts().total,
                    });
                }
                Err(error) => {
                    // A pipe's reader that is behind for a moment is no failure to report as
                    // unhealthy; it still stalls the log at the bound.
                    if error.kind() != std::io::ErrorKind::WouldBlock {
                        log.set_file_failing(true);
                    }
                    reports.failed(path, &error);
                    if pending.bytes.len() >= unwritten_limit && !log.set_file_stalled(true).0 {
                        say!(
                            "unreliable: {} MiB of log entries wait for '{}': /getbalance is \
                             refused with 503 until the file can be written",
                            unwritten_limit >> 20,
                            path.display()
                        );
                    }
                }
            }
            break;
        }
        if stopping {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;
    use std::io::Read;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut addresses: Vec<IpAddr> = (0..=255u8)
            .flat_map(|octet| {
                [
                    IpAddr::from([octet, 0, 0, 1]),
                    IpAddr::from([10, octet, 255, octet]),
                ]
            })
            .collect();
        for text in [
            "::1",
            "::",
            "2001:db8::8:800:200c:417a",
            "fe80::1:2:3:4",
            "::ffff:1.2.3.4",
        ] {
            addresses.push(text.parse().unwrap());
        }
        for ip in addresses {
            let mut written = String::from("x");
            push_ip(&mut written, ip);
            assert_eq!(written, format!("x{ip}"));
        }
    }

    fn new_entry(request_id: &str) -> NewEntry<'_> {
        NewEntry {
            unix_millis: 1_729_727_731_705,
            client: "[::ffff:192.168.100.59]:5000".parse().unwrap(),
            method: "GET",
            target: "/getbalance",
            request_id: Some(request_id.as_bytes()),
            duration_micros: 42,
            forced: false,
        }
    }

    fn cycle(k: u64) -> Outcome {
        Outcome::ALL[(k % 4) as usize]
    }

    /// A log for a file writer, of `capacity` entries, with `entries` alike recorded.
    fn log_with_entries(capacity: usize, entries: u64) -> Arc<RequestLog> {
        let log = Arc::new(RequestLog::new(capacity, true).unwrap());
        for _ in 0..entries {
            log.record(&new_entry("x"), cycle);
        }
        log
    }

    #[test]
    fn times_do_not_go_back_from_one_id_to_the_next_unless_the_clock_was_set_back() {
        let log = RequestLog::new(10, false).unwrap();
        let start = 1_729_727_731_705;
        // Read 5 ms before the first one's, taken second; then a clock set back by 2 s.
        for read_at in [
            start,
            start - 5,
            start + 10,
            start + 10 - 2_000,
            start - 1_990,
        ] {
            log.record(
                &NewEntry {
                    unix_millis: read_at,
                    ..new_entry("x")
                },
                cycle,
            );
        }
        let page = log.page(&Filter::default(), u64::MAX, 10);
        let times: Vec<u64> = page.entries.iter().map(|entry| entry.unix_millis).collect();
        assert_eq!(
            times,
            vec![start, start, start + 10, start - 1_990, start - 1_990]
        );
    }

    #[test]
    fn ids_are_dense_and_the_outcome_is_chosen_for_the_id() {
        let log = RequestLog::new(10, false).unwrap();
        for index in 1..=6u64 {
            let entry = log.record(&new_entry("x"), cycle);
            assert_eq!(entry.id, index);
            assert_eq!(entry.outcome, cycle(index));
        }
        let counts = log.counts();
        assert_eq!(counts.total, 6);
        assert_eq!(counts.by_outcome, [1, 2, 2, 1]);
        // A timeout has no answer time.
        let page = log.page(&Filter::default(), 6, 100);
        assert_eq!(page.entries[0].client.to_string(), "192.168.100.59:5000");
        assert_eq!(page.entries[0].target.as_ref(), "/getbalance");
        assert_eq!(page.entries[0].request_id.as_deref(), Some("x"));
        assert_eq!(page.entries[3].outcome, Outcome::Timeout);
        assert_eq!(page.entries[3].duration_micros, None);
        assert_eq!(page.entries[0].duration_micros, Some(42));
    }

    #[test]
    fn a_stored_entry_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<Stored>(), 40);
    }

    #[test]
    fn text_survives_block_boundaries_and_blocks_are_freed() {
        let log = RequestLog::new(50, false).unwrap();
        // 200-byte ids: a 64 KiB block holds 327, so 2,000 entries cross several blocks.
        let id_of = |index: usize| format!("{index:0>200}");
        for index in 0..2000usize {
            let target = if index.is_multiple_of(3) {
                "/getbalance?x=1"
            } else {
                "/getbalance"
            };
            let mut new = new_entry("");
            let request_id = id_of(index);
            new.request_id = Some(request_id.as_bytes());
            new.target = target;
            log.record(&new, cycle);
        }
        let page = log.page(&Filter::default(), 2000, 100);
        assert_eq!(page.entries.len(), 50);
        for entry in &page.entries {
            let index = (entry.id - 1) as usize;
            assert_eq!(entry.request_id.as_deref(), Some(id_of(index).as_str()));
            let target = if index.is_multiple_of(3) {
                "/getbalance?x=1"
            } else {
                "/getbalance"
            };
            assert_eq!(entry.target.as_ref(), target);
        }
        // 50 entries of about 215 bytes need one block, two across a boundary.
        assert!(log.lock().text.blocks.len() <= 2);
    }

    #[test]
    fn the_text_held_grows_with_the_capacity_within_bounds() {
        assert_eq!(text_limit_for(100_000), 51_200_000);
        assert_eq!(text_limit_for(1), MIN_TEXT_BYTES);
        assert_eq!(text_limit_for(100_000_000), MAX_TEXT_BYTES);
        assert_eq!(text_limit_for(usize::MAX), MAX_TEXT_BYTES);
    }

    #[test]
    fn the_text_limit_drops_entries_before_the_capacity_does() {
        let log = RequestLog::with_text_limit(1000, false, 2 * TEXT_BLOCK as u64).unwrap();
        let request_id = "r".repeat(200);
        for _ in 0..1000 {
            log.record(&new_entry(&request_id), cycle);
        }
        let counts = log.counts();
        assert!(counts.dropped > 0, "nothing dropped");
        assert!(log.lock().text.live_bytes() <= 2 * TEXT_BLOCK as u64);
        let page = log.page(&Filter::default(), 1000, 1000);
        assert_eq!(page.entries.len() as u64, 1000 - counts.dropped);
        assert!(page
            .entries
            .iter()
            .all(|entry| entry.request_id.as_deref() == Some(request_id.as_str())));
    }

    #[test]
    fn a_capacity_of_one_keeps_the_newest_entry() {
        let log = RequestLog::new(1, false).unwrap();
        for index in 0..5 {
            log.record(&new_entry(&format!("only-{index}")), cycle);
        }
        let page = log.page(&Filter::default(), 5, 10);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].id, 5);
        assert_eq!(page.entries[0].request_id.as_deref(), Some("only-4"));
    }

    #[test]
    fn the_ring_drops_the_oldest_and_counts_them() {
        let log = RequestLog::new(3, false).unwrap();
        for _ in 0..5 {
            log.record(&new_entry("x"), cycle);
        }
        let page = log.page(&Filter::default(), 5, 100);
        let ids: Vec<u64> = page.entries.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(log.counts().dropped, 2);
        assert_eq!(page.scanned_through, 5);
    }

    #[test]
    fn pages_filter_and_stop_at_max_and_up_to() {
        let log = RequestLog::new(100, false).unwrap();
        for index in 0..20 {
            log.record(&new_entry(&format!("run{}-{index}", index % 2)), cycle);
        }
        let filter = Filter {
            since: 4,
            request_id_prefix: Some("run1-".into()),
            ..Filter::default()
        };
        let page = log.page(&filter, 15, 3);
        let ids: Vec<u64> = page.entries.iter().map(|entry| entry.id).collect();
        // Request ids run1-* are on even ids (index 1, 3, … is id 2, 4, …).
        assert_eq!(ids, vec![6, 8, 10]);
        assert_eq!(page.scanned_through, 10);
        let rest = log.page(
            &Filter {
                since: page.scanned_through,
                ..filter.clone()
            },
            15,
            100,
        );
        let ids: Vec<u64> = rest.entries.iter().map(|entry| entry.id).collect();
        assert_eq!(ids, vec![12, 14]);
        assert_eq!(rest.scanned_through, 15);

        let by_outcome = Filter {
            outcome: Some(Outcome::Balance),
            client: Some("192.168.100.59".parse().unwrap()),
            ..Filter::default()
        };
        let balances = log.page(&by_outcome, 20, 100);
        assert!(balances.entries.iter().all(|entry| entry.id % 4 == 3));
        assert_eq!(balances.entries.len(), 5);
        let elsewhere = Filter {
            client: Some("10.0.0.1".parse().unwrap()),
            ..Filter::default()
        };
        assert!(log.page(&elsewhere, 20, 100).entries.is_empty());
    }

    #[test]
    fn a_page_inspects_a_bounded_number_of_entries() {
        let log = RequestLog::new(MAX_SCAN_PER_PAGE * 2, false).unwrap();
        for _ in 0..MAX_SCAN_PER_PAGE + 10 {
            log.record(&new_entry("x"), cycle);
        }
        let nothing = Filter {
            request_id_prefix: Some("never".into()),
            ..Filter::default()
        };
        let page = log.page(&nothing, u64::MAX, 100);
        assert!(page.entries.is_empty());
        assert_eq!(page.scanned_through, MAX_SCAN_PER_PAGE as u64);
    }

    #[test]
    fn entries_are_written_in_both_formats_and_escaped() {
        let log = RequestLog::new(10, false).unwrap();
        log.record(&new_entry("evil\"\n- 1.2.3.4 - 200 OK"), |_| {
            Outcome::Forbidden
        });
        let entry = log.page(&Filter::default(), 1, 1).entries.remove(0);
        let mut text = String::new();
        write_entry_text(&mut text, &entry);
        assert_eq!(
            text,
            "2024-10-23 23:55:31,705 - 192.168.100.59 - 403 Forbidden"
        );
        let mut json_text = String::new();
        write_entry_json(&mut json_text, &entry);
        assert!(!json_text.contains('\n'));
        let value = json::decode(&json_text).unwrap();
        assert_eq!(
            value.get("request_id").and_then(json::Value::as_str),
            Some("evil\"\n- 1.2.3.4 - 200 OK")
        );
        assert_eq!(
            value.get("time").and_then(json::Value::as_str),
            Some("2024-10-23T23:55:31.705Z")
        );
        assert_eq!(value.get("status").and_then(json::Value::as_u64), Some(403));
        assert_eq!(
            value.get("client").and_then(json::Value::as_str),
            Some("192.168.100.59:5000")
        );
    }

    #[test]
    fn json_entries_write_times_and_addresses_as_display_does() {
        let clients = [
            "[::ffff:10.0.0.1]:1",
            "255.255.255.255:65535",
            "0.0.0.0:0",
            "[::1]:8080",
            "[2001:db8::ff00:42:8329]:443",
            "[fe80::1%7]:9",
        ];
        for (index, client) in clients.into_iter().enumerate() {
            let log = RequestLog::new(10, false).unwrap();
            let mut new = new_entry("x");
            new.client = client.parse().unwrap();
            new.unix_millis = 1_729_727_731_705 + index as u64 * 86_400_123;
            log.record(&new, cycle);
            let entry = log.page(&Filter::default(), 1, 1).entries.remove(0);
            let mut json_text = String::new();
            write_entry_json(&mut json_text, &entry);
            let value = json::decode(&json_text).unwrap();
            let field = |name: &str| {
                value
                    .get(name)
                    .and_then(json::Value::as_str)
                    .map(str::to_owned)
            };
            assert_eq!(
                field("client"),
                Some(entry.client.to_string()),
                "{json_text}"
            );
            assert_eq!(
                field("client_ip"),
                Some(entry.client.ip().to_string()),
                "{json_text}"
            );
            let mut time = String::new();
            UtcTime::from_unix_millis(entry.unix_millis).write_rfc3339(&mut time);
            assert_eq!(field("time"), Some(time), "{json_text}");
        }
    }

    #[test]
    fn the_writer_gets_every_entry_once_even_past_capacity() {
        let directory = std::env::temp_dir().join(format!("unreliable-log-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("writer.log");
        let _ = std::fs::remove_file(&path);
        let log = Arc::new(RequestLog::new(4, true).unwrap());
        let writer = start_writer(Arc::clone(&log), &path, LogFormat::Json).unwrap();
        for index in 0..1000 {
            log.record(&new_entry(&format!("w-{index}")), cycle);
            if index % 100 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        writer.finish(not_interrupted).unwrap();
        let mut text = String::new();
        File::open(&path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|line| {
                json::decode(line)
                    .unwrap()
                    .get("id")
                    .unwrap()
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, (1..=1000).collect::<Vec<u64>>());
        let _ = std::fs::remove_dir_all(directory);
    }

    #[test]
    fn unwritten_entries_are_taken_in_bounded_chunks_once_each() {
        let log = RequestLog::new(100, true).unwrap();
        let taken = std::cell::RefCell::new(Vec::new());
        let take = |limit| {
            let batch = log.take_unwritten(limit);
            taken
                .borrow_mut()
                .extend(batch.iter().map(|entry| entry.id));
            batch.len()
        };
        assert_eq!(take(10), 0);
        for index in 0..25 {
            log.record(&new_entry(&format!("c-{index}")), cycle);
        }
        assert_eq!(take(10), 10);
        assert_eq!(take(10), 10);
        assert_eq!(take(10), 5);
        assert_eq!(take(10), 0);
        // 150 more into a ring of 100: ids 26..=75 leave memory before they are taken, and
        // come first, whole, ahead of the chunk from the ring.
        for index in 0..150 {
            log.record(&new_entry(&format!("d-{index}")), cycle);
        }
        assert_eq!(take(30), 50 + 30);
        while take(30) > 0 {}
        assert_eq!(*taken.borrow(), (1..=175).collect::<Vec<u64>>());
        // Behind again, with part of the ring already taken.
        for index in 0..40 {
            log.record(&new_entry(&format!("e-{index}")), cycle);
        }
        assert_eq!(take(15), 15);
        for index in 0..90 {
            log.record(&new_entry(&format!("f-{index}")), cycle);
        }
        while take(15) > 0 {}
        assert_eq!(*taken.borrow(), (1..=305).collect::<Vec<u64>>());
    }

    /// A disk with `room` bytes: writes past it fail as a full disk does, after a short write.
    #[derive(Debug, Clone, Default)]
    struct SmallDisk(Arc<Mutex<(Vec<u8>, usize)>>);

    impl SmallDisk {
        fn with_room(room: usize) -> SmallDisk {
            SmallDisk(Arc::new(Mutex::new((Vec::new(), room))))
        }

        fn set_room(&self, room: usize) {
            self.0.lock().unwrap().1 = room;
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap()
        }
    }

    impl Write for SmallDisk {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut disk = self.0.lock().unwrap();
            let free = disk.1.saturating_sub(disk.0.len()).min(bytes.len());
            if free == 0 {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            disk.0.extend_from_slice(&bytes[..free]);
            Ok(free)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink for SmallDisk {
        fn discard_last(&mut self, bytes: u64) -> std::io::Result<()> {
            let mut disk = self.0.lock().unwrap();
            let keep = disk.0.len() - bytes as usize;
            disk.0.truncate(keep);
            Ok(())
        }
    }

    /// Runs the writer on `disk`, as `start_writer` does on a file.
    fn spawn_writer(
        log: &Arc<RequestLog>,
        disk: impl Sink + Send + 'static,
        unwritten_limit: usize,
    ) -> LogWriter {
        let stop = Arc::new(StopRequest::default());
        let (thread_log, thread_stop) = (Arc::clone(log), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let path = Path::new("small.log");
            write_until_stopped(
                &thread_log,
                disk,
                path,
                LogFormat::Json,
                &thread_stop,
                unwritten_limit,
            )
        });
        LogWriter {
            log: Arc::clone(log),
            path: PathBuf::from("small.log"),
            stop,
            thread,
        }
    }

    /// For [`LogWriter::finish`]: a stop that nothing interrupts.
    fn not_interrupted(wait: Duration) -> bool {
        std::thread::sleep(wait);
        false
    }

    /// For [`LogWriter::finish`]: a stop that a signal would interrupt whenever it may.
    fn second_signal_at_every_wait(wait: Duration) -> bool {
        std::thread::sleep(wait);
        true
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// For [`Pending::append`]: a stop that has not given up.
    static GOING_ON: AtomicBool = AtomicBool::new(false);

    /// A pipe with room for what [`SmallDisk`] has room for: full, it would block; what went in
    /// cannot be taken back. Every write takes at most `per_write` bytes, after `pause`.
    #[derive(Clone)]
    struct Pipe {
        disk: SmallDisk,
        per_write: usize,
        pause: Duration,
    }

    impl Pipe {
        fn taking_all_it_has_room_for(disk: &SmallDisk) -> Pipe {
            Pipe {
                disk: disk.clone(),
                per_write: usize::MAX,
                pause: Duration::ZERO,
            }
        }
    }

    impl Write for Pipe {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.pause);
            let most = bytes.len().min(self.per_write);
            self.disk.write(&bytes[..most]).map_err(|error| {
                if error.kind() == std::io::ErrorKind::StorageFull {
                    std::io::ErrorKind::WouldBlock.into()
                } else {
                    error
                }
            })
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Pipe {
        fn discard_last(&mut self, _: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }

    #[test]
    fn a_stop_that_gives_up_on_a_pipe_finishes_the_line_in_progress_and_no_more() {
        let disk = SmallDisk::with_room(18);
        let mut pipe = Pipe::taking_all_it_has_room_for(&disk);
        let mut pending = Pending::default();
        for line in ["first line\n", "second line\n", "third line\n"] {
            pending.push(line);
        }
        // Half the second line goes in and stays: a pipe cannot take it back.
        let (lines, result) = pending.append(&mut pipe, &GOING_ON);
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!((lines, disk.text().as_str()), (1, "first line\nsecond "));
        // Given up, with room for everything: only the rest of the second line follows.
        disk.set_room(1000);
        let given_up = AtomicBool::new(true);
        let (lines, result) = pending.append(&mut pipe, &given_up);
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::Interrupted);
        assert_eq!(lines, 1);
        assert_eq!(disk.text(), "first line\nsecond line\n");
        assert_eq!(pending.lines, 1, "the third line is left out");
        // At a line's end, nothing more goes in.
        let (lines, result) = pending.append(&mut pipe, &given_up);
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::Interrupted);
        assert_eq!(
            (lines, disk.text().as_str()),
            (0, "first line\nsecond line\n")
        );
    }

    #[test]
    fn a_stop_that_gives_up_on_a_pipe_with_no_room_leaves_the_line_cut_after_the_grace() {
        let disk = SmallDisk::with_room(5);
        let mut pipe = Pipe::taking_all_it_has_room_for(&disk);
        let mut pending = Pending::default();
        pending.push("first line\n");
        let (lines, _) = pending.append(&mut pipe, &GOING_ON);
        assert_eq!(lines, 0);
        let started = std::time::Instant::now();
        let (lines, result) = pending.append(&mut pipe, &AtomicBool::new(true));
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::Interrupted);
        assert!(started.elapsed() >= TORN_LINE_GRACE, "room was waited for");
        assert_eq!(
            (lines, pending.lines, disk.text().as_str()),
            (0, 1, "first")
        );
    }

    #[test]
    fn a_second_signal_while_a_pipe_is_read_names_exactly_the_entries_not_in_it() {
        let log = log_with_entries(1000, 1000);
        // A reader that takes 100 bytes every 2 ms: about 5 s for the whole log.
        let disk = SmallDisk::with_room(usize::MAX);
        let pipe = Pipe {
            disk: disk.clone(),
            per_write: 100,
            pause: Duration::from_millis(2),
        };
        let error = spawn_writer(&log, pipe, 1 << 20)
            .finish(second_signal_at_every_wait)
            .unwrap_err();
        let text = disk.text();
        assert!(
            text.ends_with('\n'),
            "no cut line: {:?}",
            text.lines().last()
        );
        let whole = text.lines().count();
        assert!(0 < whole && whole < 1000, "{whole} lines");
        assert!(
            error.to_string().ends_with(&format!(
                "; entries {} to 1000 ({} of them) are not in it",
                whole + 1,
                1000 - whole
            )),
            "{error} after {whole} lines"
        );
    }

    #[test]
    fn a_full_disk_keeps_whole_lines_and_the_rest_follows_once_there_is_room() {
        let mut disk = SmallDisk::with_room(18);
        let mut pending = Pending::default();
        for line in ["first line\n", "second line\n", "third line\n"] {
            pending.push(line);
        }
        // 18 bytes take the first line and half the second: the half is taken back.
        let (lines, result) = pending.append(&mut disk, &GOING_ON);
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::StorageFull);
        assert_eq!((lines, pending.lines), (1, 2));
        assert_eq!(disk.text(), "first line\n");
        let (lines, result) = pending.append(&mut disk, &GOING_ON);
        assert!(result.is_err());
        assert_eq!((lines, disk.text().as_str()), (0, "first line\n"));
        disk.set_room(1000);
        let (lines, result) = pending.append(&mut disk, &GOING_ON);
        assert!(result.is_ok());
        assert_eq!((lines, pending.lines, pending.bytes.len()), (2, 0, 0));
        assert_eq!(disk.text(), "first line\nsecond line\nthird line\n");
    }

    #[test]
    fn a_stalled_file_refuses_new_entries_then_catches_up_with_none_lost() {
        let log = Arc::new(RequestLog::new(50, true).unwrap());
        let disk = SmallDisk::with_room(0);
        let writer = spawn_writer(&log, disk.clone(), 2000);
        // The writer holds what the disk refuses, up to the limit; then no new entry is taken.
        let mut recorded = 0;
        log.record(&new_entry("x"), cycle);
        recorded += 1;
        wait_for("the write to fail", || log.file_failing());
        assert!(log.takes_entries(), "failing, but not stalled yet");
        wait_for("the writer to stall", || {
            if log.takes_entries() {
                log.record(&new_entry("x"), cycle);
                recorded += 1;
            }
            log.file_stalled()
        });
        assert!(!log.takes_entries());
        assert_eq!(log.counts().total, recorded);
        // Room again: every entry arrives once, in order, and entries are taken again.
        disk.set_room(usize::MAX);
        wait_for("the writer to catch up", || !log.file_stalled());
        assert!(log.takes_entries());
        assert!(!log.file_failing());
        log.record(&new_entry("x"), cycle);
        writer.finish(not_interrupted).unwrap();
        let text = disk.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, recorded + 1);
        for (line, id) in lines.iter().zip(1..) {
            let entry = json::decode(line).unwrap();
            assert_eq!(entry.get("id").and_then(json::Value::as_u64), Some(id));
        }
    }

    #[test]
    fn a_stop_while_the_disk_is_full_names_the_entries_not_in_the_file() {
        // Entries 1 to 9 have lines of the same length: that of entry 1 of any log.
        let line_length = {
            let sample = RequestLog::new(1, true).unwrap();
            sample.record(&new_entry("x"), cycle);
            let mut line = String::new();
            write_entry_json(&mut line, &sample.take_unwritten(1)[0]);
            line.len() + 1
        };
        let log = log_with_entries(1000, 10);
        // Room for three lines and a half.
        let disk = SmallDisk::with_room(line_length * 7 / 2);
        let error = spawn_writer(&log, disk.clone(), 1 << 20)
            .finish(not_interrupted)
            .unwrap_err();
        assert_eq!(disk.text().lines().count(), 3);
        assert!(disk.text().ends_with('\n'));
        let message = error.to_string();
        assert!(
            message.starts_with("cannot write log file 'small.log': ")
                && message.ends_with("; entries 4 to 10 (7 of them) are not in it"),
            "{message}"
        );
    }

    #[test]
    fn a_second_signal_ends_the_wait_for_a_full_pipe_and_names_the_entries_not_written() {
        let log = log_with_entries(100, 5);
        // A signal at every wait: the first ones come before the notice and are let pass.
        let started = std::time::Instant::now();
        // A pipe whose reader never reads: every write would block.
        let unread = Pipe::taking_all_it_has_room_for(&SmallDisk::with_room(0));
        let error = spawn_writer(&log, unread, 1 << 20)
            .finish(second_signal_at_every_wait)
            .unwrap_err();
        assert!(started.elapsed() >= STOP_NOTICE);
        assert_eq!(
            error.to_string(),
            "cannot write log file 'small.log': a second signal stopped the writing; entries 1 \
             to 5 (5 of them) are not in it"
        );
    }

    #[test]
    fn a_second_signal_before_the_notice_is_let_pass_and_loses_nothing() {
        let log = log_with_entries(100, 5);
        let disk = SmallDisk::with_room(usize::MAX);
        // A signal at every wait, while a reader takes the five lines 100 bytes every 2 ms
        // (about 30 ms): honoured, it would leave the lines after the first out.
        let slow = Pipe {
            disk: disk.clone(),
            per_write: 100,
            pause: Duration::from_millis(2),
        };
        spawn_writer(&log, slow, 1 << 20)
            .finish(second_signal_at_every_wait)
            .unwrap();
        assert_eq!(disk.text().lines().count(), 5);
    }

    #[test]
    fn a_stop_writes_a_backlog_longer_than_one_round() {
        let log = Arc::new(RequestLog::new(100_000, true).unwrap());
        let request_id = "r".repeat(150);
        let entries = 3 * WRITE_BUFFER / 100;
        for _ in 0..entries {
            log.record(&new_entry(&request_id), cycle);
        }
        let disk = SmallDisk::with_room(usize::MAX);
        let stop = StopRequest {
            stopped: Mutex::new(true),
            ..StopRequest::default()
        };
        let path = Path::new("big.log");
        write_until_stopped(&log, disk.clone(), path, LogFormat::Json, &stop, 1 << 30).unwrap();
        let text = disk.text();
        assert!(text.len() > 2 * WRITE_BUFFER);
        assert_eq!(text.lines().count(), entries);
    }

    #[test]
    fn a_writer_that_takes_nothing_stalls_the_log_at_the_bound() {
        // No writer runs: as when its write never returns.
        let log = RequestLog::new(10, true).unwrap();
        for _ in 0..MAX_EVICTED_UNWRITTEN + 9 {
            log.record(&new_entry("x"), cycle);
        }
        assert!(log.takes_entries());
        log.record(&new_entry("x"), cycle);
        assert!(log.file_stalled());
        assert!(!log.takes_entries());
    }

    #[test]
    fn a_ring_that_cannot_be_reserved_is_an_error_naming_the_option() {
        let error = RequestLog::new(usize::MAX / 2, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot reserve ")
                && error.contains(" MiB for --log-capacity ")
                && error.ends_with("(choose a smaller --log-capacity)"),
            "{error}"
        );
    }

    #[test]
    fn a_log_file_is_written_by_one_writer_at_a_time() {
        let path = std::env::temp_dir().join(format!("unreliable-lock-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let first = LogFile::open(&path).unwrap();
        let error = LogFile::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("is being written by another process"),
            "{error}"
        );
        assert!(error.contains("--no-log-file"), "{error}");
        drop(first);
        assert!(LogFile::open(&path).is_ok());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn at_the_stop_a_removed_file_is_noticed_at_once() {
        let path =
            std::env::temp_dir().join(format!("unreliable-stop-rm-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut file = LogFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Within the interval a round does not look; the stop's round does.
        assert_eq!(file.follow_rotation(false), None);
        let news = file.follow_rotation(true).unwrap();
        assert!(news.contains("new entries go to a new file"), "{news}");
        file.write_all(b"last 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "last 1\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_rotated_path_taken_by_another_server_is_not_written_to() {
        let path =
            std::env::temp_dir().join(format!("unreliable-taken-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut first = LogFile::open(&path).unwrap();
        first.write_all(b"first 1\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        // Another server starts on the free path before the first looks again.
        let mut second = LogFile::open(&path).unwrap();
        second.write_all(b"second 1\n").unwrap();
        std::thread::sleep(ROTATION_CHECK + Duration::from_millis(5));
        let news = first.follow_rotation(false).unwrap();
        assert!(news.contains("is now written by another process"), "{news}");
        assert!(first.detached());
        first.write_all(b"first 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second 1\n");
        // Said once; once the path is free again, the first server follows it.
        std::thread::sleep(ROTATION_CHECK + Duration::from_millis(5));
        assert_eq!(first.follow_rotation(false), None);
        drop(second);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(ROTATION_CHECK + Duration::from_millis(5));
        assert!(first
            .follow_rotation(false)
            .unwrap()
            .contains("new entries go to a new file"));
        assert!(!first.detached());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_unopenable_log_file_is_a_clear_error() {
        let log = Arc::new(RequestLog::new(4, true).unwrap());
        let error = start_writer(log, Path::new("/nonexistent-dir/x.log"), LogFormat::Text)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot open log file '/nonexistent-dir/x.log'"),
            "{error}"
        );
        assert!(error.contains("--no-log-file"));
        assert!(!error.contains("names a directory"), "{error}");
    }

    #[test]
    fn a_log_file_path_with_a_trailing_slash_is_explained() {
        let file =
            std::env::temp_dir().join(format!("unreliable-slash-{}.log", std::process::id()));
        std::fs::write(&file, "").unwrap();
        let with_slash = format!("{}/", file.display());
        let log = Arc::new(RequestLog::new(4, true).unwrap());
        let error = start_writer(log, Path::new(&with_slash), LogFormat::Text)
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&file);
        assert!(
            error.contains("; a path ending in '/' names a directory (choose another"),
            "{error}"
        );
    }
}
