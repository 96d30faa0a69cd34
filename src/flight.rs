//! One upstream fetch per key at a time, and its body shared with every waiting client.
//!
//! The first request for a missing key becomes the leader: it gets a [`FlightWriter`] and starts
//! the fetch. Later requests for the same key, on any worker, join as followers. Everyone, the
//! leader's own client included, reads through a [`FlightReader`]: the response head as soon as
//! the upstream's arrives, then the body chunk by chunk as it arrives (no one waits for the last
//! upstream byte). The writer removes the flight from the map when it finishes; if it is dropped
//! without finishing (task killed, panic) every reader is released with a failure, so nobody hangs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::http::header::HeaderValue;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use crate::error::UpstreamFailure;
use crate::key::CacheKey;

/// The response head every reader of a flight sends.
#[derive(Debug, Clone)]
pub struct FlightHead {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub etag: Option<HeaderValue>,
    pub content_length: Option<u64>,
    /// `Cache-Control` for clients; `None` means `no-store`.
    pub cache_control: Option<String>,
    /// `X-Cache` value: `MISS`, or `STALE` when an old copy answers for a failing upstream.
    pub x_cache: &'static str,
    pub age_secs: u64,
    pub retry_after: Option<HeaderValue>,
    /// Why a stale copy is served (`X-Cache-Reason`).
    pub reason: Option<&'static str>,
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
    chunks: Vec<Bytes>,
    end: Option<End>,
}

struct Flight {
    tx: watch::Sender<State>,
}

/// The in-flight fetches, shared by all workers.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

/// What [`Flights::join`] made of a request.
pub enum Join {
    /// No fetch was running: the caller must run it with this writer.
    Leader(FlightWriter, FlightReader),
    /// A fetch is running: read its result.
    Follower(FlightReader),
}

impl Flights {
    pub fn new() -> Arc<Flights> {
        Arc::new(Flights::default())
    }

    /// Joins the flight for `key`, starting one if none is running.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(key) {
            return Join::Follower(FlightReader { rx: f.tx.subscribe() });
        }
        let (tx, rx) = watch::channel(State::default());
        let flight = Arc::new(Flight { tx });
        map.insert(key.clone(), flight.clone());
        Join::Leader(
            FlightWriter { key: key.clone(), flights: self.clone(), flight, finished: false },
            FlightReader { rx },
        )
    }

    /// Number of fetches running now.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// The leader's handle: publishes the head, the chunks and the end.
pub struct FlightWriter {
    key: CacheKey,
    flights: Arc<Flights>,
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightWriter {
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Publishes the response head.
    pub fn head(&self, head: FlightHead) {
        self.flight.tx.send_modify(|s| s.head = Some(Arc::new(head)));
    }

    /// Publishes one body chunk.
    pub fn chunk(&self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.flight.tx.send_modify(|s| s.chunks.push(chunk));
        }
    }

    /// Publishes the end and leaves the map. Store into the cache *before* calling this, so a
    /// request arriving in between finds either the flight or the entry.
    pub fn finish(mut self, end: End) {
        self.finished = true;
        self.flights.remove(&self.key, &self.flight);
        self.flight.tx.send_modify(|s| s.end = Some(end));
    }

    /// Publishes a complete answer at once (a cached copy, a revalidated entry).
    pub fn complete_with(self, head: FlightHead, body: Bytes) {
        self.flight.tx.send_modify(|s| {
            s.head = Some(Arc::new(head));
            if !body.is_empty() {
                s.chunks.push(body);
            }
        });
        self.finish(End::Complete);
    }
}

impl Drop for FlightWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.flights.remove(&self.key, &self.flight);
            self.flight.tx.send_modify(|s| s.end = Some(End::Failed(UpstreamFailure::Aborted)));
        }
    }
}

/// A reader of one flight.
pub struct FlightReader {
    rx: watch::Receiver<State>,
}

/// Error a body stream yields when the upstream body failed after the head was sent: the server
/// then aborts the connection, so the client never sees a truncated body as complete.
pub fn body_error(f: &UpstreamFailure) -> std::io::Error {
    std::io::Error::other(f.to_string())
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
                if let Some(End::Failed(f)) = &s.end {
                    return Err(f.clone());
                }
                if let Some(End::Complete) = &s.end {
                    return Err(UpstreamFailure::Aborted);
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

    /// The body, chunk by chunk as the upstream delivers it; an `Err` item if the fetch fails.
    pub fn into_body(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
        futures_util::stream::unfold((self.rx, 0usize, false), |(mut rx, next, done)| async move {
            if done {
                return None;
            }
            let step = loop {
                match Self::step(&rx.borrow_and_update(), next) {
                    Step::Wait => {}
                    ready => break ready,
                }
                if rx.changed().await.is_err() {
                    // The writer is gone: whatever it left is final.
                    break match Self::step(&rx.borrow(), next) {
                        Step::Wait => Step::Fail(UpstreamFailure::Aborted),
                        ready => ready,
                    };
                }
            };
            match step {
                Step::Chunk(c) => Some((Ok(c), (rx, next + 1, false))),
                Step::Fail(f) => Some((Err(body_error(&f)), (rx, next, true))),
                Step::Done | Step::Wait => None,
            }
        })
    }

    fn step(s: &State, next: usize) -> Step {
        if let Some(c) = s.chunks.get(next) {
            return Step::Chunk(c.clone());
        }
        match &s.end {
            Some(End::Complete) => Step::Done,
            Some(End::Failed(f)) => Step::Fail(f.clone()),
            None => Step::Wait,
        }
    }
}

enum Step {
    Chunk(Bytes),
    Done,
    Fail(UpstreamFailure),
    Wait,
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn head() -> FlightHead {
        FlightHead {
            status: 200,
            content_type: None,
            etag: None,
            content_length: Some(6),
            cache_control: None,
            x_cache: "MISS",
            age_secs: 0,
            retry_after: None,
            reason: None,
        }
    }

    fn key(s: &str) -> CacheKey {
        let t = crate::routes::parse(&format!("/here-proxy/5/0/{s}/png"), "", Default::default()).unwrap().unwrap();
        CacheKey::of(&t)
    }

    #[tokio::test]
    async fn followers_read_the_leaders_stream() {
        let flights = Flights::new();
        let Join::Leader(w, mut r1) = flights.join(&key("0")) else { panic!("first must lead") };
        let Join::Follower(mut r2) = flights.join(&key("0")) else { panic!("second must follow") };
        let other = flights.join(&key("1"));
        assert!(matches!(other, Join::Leader(..)));
        w.head(head());
        w.chunk(Bytes::from_static(b"abc"));
        assert_eq!(r1.head().await.unwrap().status, 200);
        assert_eq!(r2.head().await.unwrap().status, 200);
        let b2 = tokio::spawn(async move { r2.into_body().map(|c| c.unwrap()).collect::<Vec<_>>().await.concat() });
        w.chunk(Bytes::from_static(b"def"));
        w.finish(End::Complete);
        let b1: Vec<u8> = r1.into_body().map(|c| c.unwrap()).collect::<Vec<_>>().await.concat();
        assert_eq!(b1, b"abcdef");
        assert_eq!(b2.await.unwrap(), b"abcdef");
        assert_eq!(flights.len(), 1, "only key 1's flight is left");
    }

    #[tokio::test]
    async fn a_dropped_writer_releases_everyone() {
        let flights = Flights::new();
        let Join::Leader(w, mut r) = flights.join(&key("2")) else { panic!() };
        drop(w);
        assert_eq!(r.head().await.unwrap_err(), UpstreamFailure::Aborted);
        assert!(flights.is_empty());
        // A failure after the head makes the body stream end in an error.
        let Join::Leader(w, r) = flights.join(&key("2")) else { panic!() };
        w.head(head());
        w.chunk(Bytes::from_static(b"abc"));
        w.finish(End::Failed(UpstreamFailure::Body));
        let items: Vec<_> = r.into_body().collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(items[1].is_err());
    }
}
