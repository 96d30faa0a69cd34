//! One upstream fetch per key at a time, its body shared with every waiting client, within a
//! byte budget.
//!
//! The first request for a missing key becomes the leader: it gets a [`FlightWriter`] and runs
//! the fetch. Later requests for the same key, on any worker, join as followers. Everyone, the
//! leader's own client included, reads through a [`FlightReader`]: the head (the answer's
//! [`Meta`]) as soon as the upstream's arrives, then the body chunk by chunk as it arrives. The
//! writer leaves the map when it finishes; if it is dropped without finishing (task killed,
//! panic) every reader is released with a failure, so nobody hangs.
//!
//! Memory is bounded per flight: chunks are kept for late joiners only while the body is within
//! `budget` bytes. Past it the flight is *closed*: new requests start a flight of their own,
//! chunks every reader has consumed are dropped, and the writer waits before publishing more
//! while the slowest reader is `budget` bytes behind (backpressure to the upstream).
//!
//! [`FillLock`] is the seam that decides who fills a key; [`Flights`] (in-process) is its first
//! implementation. A fleet-wide lease (Redis) wraps it: it takes its lease while leading, and
//! turns a leader that finds the lease held elsewhere into a follower fed from the shared tier.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{watch, Notify};

use crate::domain::entry::HitSource;
use crate::domain::entry::Meta;
use crate::domain::failure::UpstreamFailure;
use crate::domain::key::CacheKey;
use crate::store::cache::BoxFuture;

/// What a flight publishes before its body.
#[derive(Debug, Clone)]
pub struct FlightHead {
    /// The answer's metadata: each reader builds its response head from it with its own
    /// index's policy.
    pub meta: Meta,
    pub content_length: Option<u64>,
    /// `MISS` for a fetched answer, `HIT` when the leader found the entry after all.
    pub x_cache: &'static str,
    /// The tier a `HIT` came from.
    pub source: Option<HitSource>,
}

/// How a flight ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The whole body was relayed.
    Complete,
    /// The fetch failed; before the head (no response yet) or after it (body cut short).
    Failed(UpstreamFailure),
}

#[derive(Debug, Default)]
struct State {
    head: Option<Arc<FlightHead>>,
    /// Kept chunks; `chunks[0]` is chunk number `first`.
    chunks: VecDeque<Bytes>,
    first: usize,
    /// Bytes published so far, and bytes still held in `chunks`.
    received: usize,
    held: usize,
    /// Past the budget: no joiners, consumed chunks dropped.
    closed: bool,
    end: Option<End>,
    /// Reader id -> number of the next chunk it reads.
    readers: HashMap<u64, usize>,
    next_reader: u64,
}

impl State {
    fn add_reader(&mut self) -> u64 {
        let id = self.next_reader;
        self.next_reader += 1;
        self.readers.insert(id, self.first);
        id
    }

    /// Drops chunks every reader has read (only once closed: before, late joiners need them).
    fn drop_consumed(&mut self) {
        if !self.closed {
            return;
        }
        let min = self.readers.values().copied().min().unwrap_or(self.first + self.chunks.len());
        while self.first < min {
            match self.chunks.pop_front() {
                Some(c) => {
                    self.held -= c.len();
                    self.first += 1;
                }
                None => break,
            }
        }
    }
}

struct Flight {
    tx: watch::Sender<State>,
    /// Signalled when a reader advances or leaves (the writer may be waiting for room).
    room: Notify,
    budget: usize,
}

type Map = Mutex<HashMap<CacheKey, Arc<Flight>>>;

/// The in-process flights, shared by all workers.
pub struct Flights {
    map: Arc<Map>,
    budget: usize,
}

/// What joining a key's flight made of a request.
pub enum Join {
    /// No fetch was running: the caller must fill the key with this writer.
    Leader(FlightWriter, FlightReader),
    /// A fetch is running: read its result.
    Follower(FlightReader),
}

/// Decides who fills a key. See the module docs.
pub trait FillLock: Send + Sync {
    fn acquire<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Join>;

    /// [`FillLock::acquire`] for a key whose stored copy has expired (a revalidation): the copy
    /// still being there must not count as "filled". Default: [`FillLock::acquire`].
    fn acquire_expired<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Join> {
        self.acquire(key)
    }

    /// For a background refresh of an entry that still exists (stale-while-revalidate, early
    /// refresh): the writer when the caller leads it, `None` when a refresh of the key already
    /// runs (here or, with a fleet-wide lock, on another pod). Never waits for another holder:
    /// nobody is waiting for a refresh. Default: [`FillLock::acquire`]'s leader.
    fn acquire_refresh<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<FlightWriter>> {
        Box::pin(async move {
            match self.acquire(key).await {
                Join::Leader(writer, _reader) => Some(writer),
                Join::Follower(_) => None,
            }
        })
    }
}

impl Flights {
    /// Flights that keep at most `budget` bytes for late joiners each.
    pub fn new(budget: usize) -> Arc<Flights> {
        Arc::new(Flights { map: Arc::new(Mutex::new(HashMap::new())), budget: budget.max(1) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the flight for `key`, starting one if none is running or the running one is
    /// closed to joiners (then the new flight is not shared).
    pub fn join(&self, key: &CacheKey) -> Join {
        let mut map = self.lock();
        if let Some(f) = map.get(key) {
            let mut joined = None;
            f.tx.send_if_modified(|s| {
                if !s.closed && !matches!(s.end, Some(End::Failed(_))) {
                    joined = Some(s.add_reader());
                }
                false
            });
            if let Some(id) = joined {
                return Join::Follower(FlightReader { rx: f.tx.subscribe(), flight: f.clone(), id });
            }
            let solo = self.start(key);
            return Join::Leader(solo.0, solo.1);
        }
        let (writer, reader) = self.start(key);
        map.insert(key.clone(), writer.flight.clone());
        Join::Leader(writer, reader)
    }

    fn start(&self, key: &CacheKey) -> (FlightWriter, FlightReader) {
        let mut state = State::default();
        let id = state.add_reader();
        let (tx, rx) = watch::channel(state);
        let flight = Arc::new(Flight { tx, room: Notify::new(), budget: self.budget });
        let writer = FlightWriter {
            key: key.clone(),
            map: self.map.clone(),
            flight: flight.clone(),
            finished: false,
            guard: None,
        };
        (writer, FlightReader { rx, flight, id })
    }

    /// True while this process fetches `key`.
    pub fn is_running(&self, key: &CacheKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Number of fetches running now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FillLock for Flights {
    fn acquire<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Join> {
        Box::pin(std::future::ready(self.join(key)))
    }
}

fn leave(map: &Map, key: &CacheKey, flight: &Arc<Flight>) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        map.remove(key);
    }
}

/// The leader's handle: publishes the head, the chunks and the end.
pub struct FlightWriter {
    key: CacheKey,
    map: Arc<Map>,
    flight: Arc<Flight>,
    finished: bool,
    /// Held until the writer finishes or is dropped (a fleet-wide lease releases itself then).
    guard: Option<Box<dyn Send + Sync>>,
}

impl FlightWriter {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Keeps `guard` alive until this writer finishes or is dropped, after the entry was stored
    /// (a fill lock's lease is released by dropping it).
    pub fn attach(&mut self, guard: Box<dyn Send + Sync>) {
        self.guard = Some(guard);
    }

    /// Publishes the response head.
    pub fn head(&self, head: FlightHead) {
        self.flight.tx.send_modify(|s| s.head = Some(Arc::new(head)));
    }

    /// True while some client still reads this flight.
    pub fn has_readers(&self) -> bool {
        !self.flight.tx.borrow().readers.is_empty()
    }

    /// Publishes one body chunk. Once the body is past the budget, waits first while the
    /// slowest reader is a budget behind (it returns at once when nobody reads any more).
    pub async fn chunk(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let budget = self.flight.budget;
        loop {
            let room = self.flight.room.notified();
            let waiting = {
                let s = self.flight.tx.borrow();
                s.closed && !s.readers.is_empty() && s.held >= budget
            };
            if !waiting {
                break;
            }
            room.await;
        }
        self.flight.tx.send_modify(|s| {
            s.received += chunk.len();
            s.held += chunk.len();
            s.chunks.push_back(chunk);
            if s.received > budget && !s.closed {
                s.closed = true;
                s.drop_consumed();
            }
        });
    }

    /// Publishes the end and leaves the map. Store into the cache *before* calling this, so a
    /// request arriving in between finds either the flight or the entry.
    pub fn finish(mut self, end: End) {
        self.finished = true;
        leave(&self.map, &self.key, &self.flight);
        self.flight.tx.send_modify(|s| s.end = Some(end));
    }

    /// Publishes a complete answer at once (a cached copy, a revalidated entry).
    pub fn complete_with(self, head: FlightHead, body: Bytes) {
        self.flight.tx.send_modify(|s| {
            s.head = Some(Arc::new(head));
            if !body.is_empty() {
                s.received += body.len();
                s.held += body.len();
                s.chunks.push_back(body);
            }
        });
        self.finish(End::Complete);
    }
}

impl Drop for FlightWriter {
    fn drop(&mut self) {
        if !self.finished {
            leave(&self.map, &self.key, &self.flight);
            self.flight.tx.send_modify(|s| s.end = Some(End::Failed(UpstreamFailure::Aborted)));
        }
    }
}

/// A reader of one flight. Dropping it tells the writer this client is gone.
pub struct FlightReader {
    rx: watch::Receiver<State>,
    flight: Arc<Flight>,
    id: u64,
}

/// Error a body stream yields when the upstream body failed after the head was sent: the server
/// then aborts the connection, so the client never sees a truncated body as complete.
pub fn body_error(f: &UpstreamFailure) -> std::io::Error {
    std::io::Error::other(f.to_string())
}

enum Step {
    Chunk(Bytes),
    Done,
    Fail(UpstreamFailure),
    Wait,
}

impl FlightReader {
    /// Waits for the head. `Err` when the fetch failed before any head was published.
    pub async fn head(&mut self) -> Result<Arc<FlightHead>, UpstreamFailure> {
        loop {
            {
                let s = self.rx.borrow_and_update();
                if let Some(h) = &s.head {
                    return Ok(h.clone());
                }
                match &s.end {
                    Some(End::Failed(f)) => return Err(f.clone()),
                    Some(End::Complete) => return Err(UpstreamFailure::Aborted),
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                let s = self.rx.borrow();
                return match (&s.head, &s.end) {
                    (Some(h), _) => Ok(h.clone()),
                    (None, Some(End::Failed(f))) => Err(f.clone()),
                    _ => Err(UpstreamFailure::Aborted),
                };
            }
        }
    }

    fn step(id: u64, s: &State) -> Step {
        let next = s.readers.get(&id).copied().unwrap_or(s.first);
        if let Some(c) = next.checked_sub(s.first).and_then(|i| s.chunks.get(i)) {
            return Step::Chunk(c.clone());
        }
        if next < s.first {
            // Cannot happen (chunks are dropped only once every reader passed them).
            return Step::Fail(UpstreamFailure::Aborted);
        }
        match &s.end {
            Some(End::Complete) => Step::Done,
            Some(End::Failed(f)) => Step::Fail(f.clone()),
            None => Step::Wait,
        }
    }

    /// Marks the current chunk read (it may then be dropped) and wakes a waiting writer.
    fn advance(&self) {
        let id = self.id;
        self.flight.tx.send_if_modified(|s| {
            if let Some(n) = s.readers.get_mut(&id) {
                *n += 1;
            }
            s.drop_consumed();
            false
        });
        self.flight.room.notify_one();
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            let id = self.id;
            let step = Self::step(id, &self.rx.borrow_and_update());
            match step {
                Step::Chunk(c) => {
                    self.advance();
                    return Some(Ok(c));
                }
                Step::Done => return None,
                Step::Fail(f) => return Some(Err(body_error(&f))),
                Step::Wait => {}
            }
            if self.rx.changed().await.is_err() {
                let step = Self::step(id, &self.rx.borrow());
                return match step {
                    Step::Chunk(c) => {
                        self.advance();
                        Some(Ok(c))
                    }
                    Step::Done => None,
                    Step::Fail(f) => Some(Err(body_error(&f))),
                    Step::Wait => Some(Err(body_error(&UpstreamFailure::Aborted))),
                };
            }
        }
    }

    /// The body, chunk by chunk as the upstream delivers it; an `Err` item if the fetch fails.
    pub fn into_body(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
        futures_util::stream::unfold((self, false), |(mut r, done)| async move {
            if done {
                return None;
            }
            match r.next_chunk().await {
                Some(Ok(c)) => Some((Ok(c), (r, false))),
                Some(Err(e)) => Some((Err(e), (r, true))),
                None => None,
            }
        })
    }
}

impl Drop for FlightReader {
    fn drop(&mut self) {
        let id = self.id;
        self.flight.tx.send_if_modified(|s| {
            s.readers.remove(&id);
            s.drop_consumed();
            false
        });
        self.flight.room.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::entry::Freshness;
    use futures_util::StreamExt;

    fn head() -> FlightHead {
        FlightHead {
            meta: Meta {
                status: 200,
                content_type: None,
                content_encoding: None,
                etag: None,
                stored_at_ms: 0,
                version_ms: 0,
                freshness: Freshness::default(),
                fetch_ms: 0,
                last_modified: None,
            },
            content_length: Some(6),
            x_cache: "MISS",
            source: None,
        }
    }

    fn key(s: &str) -> CacheKey {
        let t =
            crate::domain::routes::parse(&format!("/here-proxy/5/0/{s}/png"), "", Default::default()).unwrap().unwrap();
        CacheKey::of(&t, &crate::domain::key::Origin::new("http://x", None))
    }

    async fn body(r: FlightReader) -> Vec<u8> {
        r.into_body().map(|c| c.unwrap()).collect::<Vec<_>>().await.concat()
    }

    #[tokio::test]
    async fn followers_read_the_leaders_stream() {
        let flights = Flights::new(1 << 20);
        let Join::Leader(w, mut r1) = flights.join(&key("0")) else { panic!("first must lead") };
        let Join::Follower(mut r2) = flights.join(&key("0")) else { panic!("second must follow") };
        let other = flights.join(&key("1"));
        assert!(matches!(other, Join::Leader(..)));
        w.head(head());
        w.chunk(Bytes::from_static(b"abc")).await;
        assert_eq!(r1.head().await.unwrap().meta.status, 200);
        assert_eq!(r2.head().await.unwrap().meta.status, 200);
        let b2 = tokio::spawn(body(r2));
        w.chunk(Bytes::from_static(b"def")).await;
        w.finish(End::Complete);
        assert_eq!(body(r1).await, b"abcdef");
        assert_eq!(b2.await.unwrap(), b"abcdef");
        assert_eq!(flights.len(), 1, "only key 1's flight is left");
    }

    #[tokio::test]
    async fn a_dropped_writer_releases_everyone() {
        let flights = Flights::new(1 << 20);
        let Join::Leader(w, mut r) = flights.join(&key("2")) else { panic!() };
        drop(w);
        assert_eq!(r.head().await.unwrap_err(), UpstreamFailure::Aborted);
        assert!(flights.is_empty());
        // A failure after the head makes the body stream end in an error.
        let Join::Leader(w, r) = flights.join(&key("2")) else { panic!() };
        w.head(head());
        w.chunk(Bytes::from_static(b"abc")).await;
        w.finish(End::Failed(UpstreamFailure::Body));
        let items: Vec<_> = r.into_body().collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }

    #[tokio::test]
    async fn past_the_budget_no_joiners_consumed_chunks_dropped_and_the_writer_waits_for_the_reader() {
        let flights = Flights::new(10);
        let k = key("3");
        let Join::Leader(w, r) = flights.join(&k) else { panic!() };
        w.head(head());
        w.chunk(Bytes::from_static(b"0123456")).await;
        // Within the budget: a late joiner still gets everything.
        let Join::Follower(late) = flights.join(&k) else { panic!("joins within budget") };
        drop(late);
        w.chunk(Bytes::from_static(b"789ab")).await; // 12 bytes: closed
        assert!(matches!(flights.join(&k), Join::Leader(..)), "closed flights take no joiners");
        let held = || w.flight.tx.borrow().held;
        assert_eq!(held(), 12, "nothing read yet, nothing dropped");
        // The reader is 12 bytes behind (>= budget): the writer must wait for it.
        let mut r = Box::pin(r.into_body());
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), w.chunk(Bytes::from_static(b"c")));
        assert!(blocked.await.is_err(), "writer waits for the slow reader");
        assert_eq!(r.next().await.unwrap().unwrap(), &b"0123456"[..]);
        assert_eq!(held(), 5, "consumed chunk dropped");
        w.chunk(Bytes::from_static(b"c")).await;
        assert_eq!(r.next().await.unwrap().unwrap(), &b"789ab"[..]);
        assert_eq!(r.next().await.unwrap().unwrap(), &b"c"[..]);
        assert_eq!(held(), 0);
        drop(r);
        assert!(!w.has_readers());
        // With nobody reading, the writer never waits.
        for _ in 0..10 {
            w.chunk(Bytes::from_static(b"0123456789")).await;
        }
        w.finish(End::Complete);
    }
}
