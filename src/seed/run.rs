//! The run loop every seed job goes through, from the CLI or the admin API: the job's tiles not
//! yet done, fetched by a [`Fetcher`] with bounded concurrency, each outcome counted in the
//! job's [`Progress`] and its position marked in the resume state ([`Done`]).
//!
//! Rules, per tile: a HIT costs nothing and counts as already cached; `Wait` (the proxy's
//! upstream rate cap queue is full, or a client rate limit) waits Retry-After and asks again
//! (not a failure); other failures are retried with exponential backoff, then counted failed.
//! A spent upstream budget stops the job: no new tile is issued. So does [`Stop::request`]
//! (Ctrl-C); tiles in flight then get [`GRACE`] to finish.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;

use super::state_file::Done;
use super::tiles::Job;

/// How long tiles in flight may take to finish once the job is stopped.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often the resume state is saved while running.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Attempts after the first for a failing tile.
const RETRIES: usize = 3;
/// Retry-After waits on one tile before it counts as failed.
const MAX_WAITS: u32 = 100;

/// What one request for a tile gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A miss: the upstream was asked and the tile stored.
    Fetched,
    /// Already cached (HIT, or STALE): no upstream call.
    Cached,
    /// The index's upstream budget is spent for `window`; it resets in `retry_after_secs`.
    BudgetExhausted { window: String, retry_after_secs: u64 },
    /// Busy or rate limited: ask again after this long.
    Wait(Duration),
    /// Failed; worth retrying.
    Failed(String),
    /// Refused (a 4xx): retrying will not help.
    Refused(String),
}

/// Asks for one tile: through a running proxy's HTTP, or straight through a [`TileService`].
///
/// [`TileService`]: crate::service::tiles::TileService
pub trait Fetcher {
    /// Fetches `url` (path and query, as a client sends it) and reads the whole answer.
    fn fetch(&self, url: &str) -> impl Future<Output = Fetched>;
}

/// Why a job stopped before its last tile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Interrupted,
    BudgetExhausted { window: String, retry_after_secs: u64 },
}

/// Tells a running job to stop issuing tiles. Cheap to clone.
#[derive(Clone)]
pub struct Stop(std::sync::Arc<watch::Sender<Option<StopReason>>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(std::sync::Arc::new(watch::channel(None).0))
    }
}

impl Stop {
    /// Stops the job; the first reason given is kept.
    pub fn request(&self, reason: StopReason) {
        self.0.send_if_modified(|r| r.is_none() && r.replace(reason).is_none());
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.0.borrow().clone()
    }

    fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    async fn stopped(&self) {
        let _ = self.0.subscribe().wait_for(Option::is_some).await;
    }

    /// Sleeps `d`; false when the job was stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => !self.is_set(),
            () = self.stopped() => false,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every tile was tried.
    Completed,
    Stopped(StopReason),
}

/// A job's live counters, read by the progress bar and `GET /admin/seed/{id}`.
pub struct Progress {
    pub total: u64,
    /// Done in earlier runs (resumed).
    pub earlier: u64,
    done: AtomicU64,
    fetched: AtomicU64,
    cached: AtomicU64,
    failed: AtomicU64,
    started: Instant,
    pub started_at: SystemTime,
    ended: Mutex<Option<(Ending, SystemTime)>>,
    /// The terminal progress bar (hidden for API jobs and `--quiet`).
    pub bar: indicatif::ProgressBar,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Done, this run and earlier ones.
    pub done: u64,
    pub fetched: u64,
    pub cached: u64,
    pub failed: u64,
}

impl Progress {
    pub fn new(total: u64, earlier: u64, bar: indicatif::ProgressBar) -> Progress {
        bar.set_length(total);
        bar.set_position(earlier);
        // The rate and ETA are of this run, not of the tiles done earlier.
        bar.reset_eta();
        Progress {
            total,
            earlier,
            done: AtomicU64::new(earlier),
            fetched: AtomicU64::new(0),
            cached: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            started: Instant::now(),
            started_at: SystemTime::now(),
            ended: Mutex::new(None),
            bar,
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            done: self.done.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Tiles handled per second in this run (fetched, cached or failed).
    pub fn rate(&self) -> f64 {
        let c = self.counts();
        let handled = (c.fetched + c.cached + c.failed) as f64;
        handled / self.elapsed().as_secs_f64().max(1e-3)
    }

    /// How a finished run ended, and when.
    pub fn ended(&self) -> Option<(Ending, SystemTime)> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, which: &AtomicU64, done: bool) {
        which.fetch_add(1, Ordering::Relaxed);
        if done {
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        let c = self.counts();
        self.bar.set_position(c.done + c.failed);
        self.bar.set_message(format!("fetched {}, already cached {}, failed {}", c.fetched, c.cached, c.failed));
    }

    fn finish(&self, ending: Ending) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some((ending, SystemTime::now()));
        self.bar.finish_and_clear();
    }
}

/// What became of one tile.
enum TileEnd {
    Fetched,
    Cached,
    Failed(String),
    BudgetExhausted {
        window: String,
        retry_after_secs: u64,
    },
    /// Given up because the job stopped while it waited.
    Abandoned,
}

/// One tile, with the retry and wait rules.
async fn fetch_one<F: Fetcher>(fetcher: &F, url: &str, stop: &Stop) -> TileEnd {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(RETRIES)
        .with_jitter()
        .build();
    let mut waits = 0;
    loop {
        let pause = match fetcher.fetch(url).await {
            Fetched::Fetched => return TileEnd::Fetched,
            Fetched::Cached => return TileEnd::Cached,
            Fetched::BudgetExhausted { window, retry_after_secs } => {
                return TileEnd::BudgetExhausted { window, retry_after_secs }
            }
            Fetched::Refused(why) => return TileEnd::Failed(why),
            Fetched::Wait(d) if waits < MAX_WAITS => {
                waits += 1;
                d
            }
            Fetched::Wait(_) => return TileEnd::Failed(format!("still busy after {MAX_WAITS} waits")),
            Fetched::Failed(why) => match backoff.next() {
                Some(d) => d,
                None => return TileEnd::Failed(why),
            },
        };
        if !stop.sleep(pause).await {
            return TileEnd::Abandoned;
        }
    }
}

/// Runs `job` through `fetcher`, `concurrency` tiles at a time, skipping the positions in
/// `done` and adding the ones it completes; `save` is called with the state about every
/// [`SAVE_EVERY`] (the caller saves once more at the end). Returns how it ended; the counts are
/// in `progress`.
pub async fn run<F: Fetcher>(
    job: &Job,
    fetcher: &F,
    concurrency: usize,
    done: &mut Done,
    progress: &Progress,
    stop: &Stop,
    mut save: impl FnMut(&Done),
) -> Ending {
    let skip = done.clone();
    let todo = job.tiles().enumerate().map(|(i, t)| (i as u64, t)).filter(move |(i, _)| !skip.contains(*i));
    let mut results = stream::iter(todo)
        .take_while(|_| std::future::ready(!stop.is_set()))
        .map(|(i, (z, x, y))| {
            let url = job.url(z, x, y);
            async move {
                let end = fetch_one(fetcher, &url, stop).await;
                (i, end, url)
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut last_save = Instant::now();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, results.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => tokio::select! {
                next = results.next() => next,
                () = stop.stopped() => {
                    deadline = Some(tokio::time::Instant::now() + GRACE);
                    continue;
                }
            },
        };
        let Some((i, end, url)) = next else { break };
        match end {
            TileEnd::Fetched => {
                done.insert(i);
                progress.count(&progress.fetched, true);
            }
            TileEnd::Cached => {
                done.insert(i);
                progress.count(&progress.cached, true);
            }
            TileEnd::Failed(why) => {
                tracing::warn!(tile = %url, error = %why, "seed: tile failed");
                progress.count(&progress.failed, false);
            }
            TileEnd::BudgetExhausted { window, retry_after_secs } => {
                stop.request(StopReason::BudgetExhausted { window, retry_after_secs });
            }
            TileEnd::Abandoned => {}
        }
        if last_save.elapsed() >= SAVE_EVERY {
            save(done);
            last_save = Instant::now();
        }
    }
    let ending = stop.reason().map_or(Ending::Completed, Ending::Stopped);
    progress.finish(ending.clone());
    ending
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::seed::tiles::{JobParams, Kind, DEFAULT_MAX_TILES};

    /// Answers by a script: `answer(call number, url, seen before)`.
    struct Scripted<A: Fn(usize, bool) -> Fetched> {
        answer: A,
        calls: RefCell<Vec<String>>,
    }

    impl<A: Fn(usize, bool) -> Fetched> Fetcher for Scripted<A> {
        async fn fetch(&self, url: &str) -> Fetched {
            let mut calls = self.calls.borrow_mut();
            let seen = calls.iter().any(|u| u == url);
            calls.push(url.to_string());
            (self.answer)(calls.len(), seen)
        }
    }

    fn scripted<A: Fn(usize, bool) -> Fetched>(answer: A) -> Scripted<A> {
        Scripted { answer, calls: RefCell::new(Vec::new()) }
    }

    fn job() -> Job {
        let params = JobParams {
            index: "t".into(),
            bbox: [13.1, 52.3, 13.7, 52.7],
            shape: None,
            zoom: (8, 10),
            kind: Kind::Raster { resource: "base".into(), format: "png".into() },
            params: BTreeMap::new(),
        };
        Job::new(params, DEFAULT_MAX_TILES).unwrap()
    }

    async fn run_with<F: Fetcher>(job: &Job, fetcher: &F, done: &mut Done) -> (Ending, Counts) {
        let progress = Progress::new(job.total, done.count(), indicatif::ProgressBar::hidden());
        let ending = run(job, fetcher, 1, done, &progress, &Stop::default(), |_| {}).await;
        (ending, progress.counts())
    }

    #[tokio::test]
    async fn busy_answers_are_waited_out_and_the_tile_asked_again() {
        let job = job();
        let fetcher = scripted(|_, seen| if seen { Fetched::Fetched } else { Fetched::Wait(Duration::from_millis(2)) });
        let mut done = Done::default();
        let (ending, counts) = run_with(&job, &fetcher, &mut done).await;
        assert_eq!(ending, Ending::Completed);
        assert_eq!((counts.done, counts.fetched, counts.failed), (job.total, job.total, 0));
        assert_eq!(fetcher.calls.borrow().len() as u64, 2 * job.total);
        assert_eq!(done.count(), job.total);
    }

    #[tokio::test]
    async fn a_spent_budget_stops_issuing_tiles_and_keeps_what_is_done() {
        let job = job();
        let fetcher = scripted(|n, _| match n {
            1..=3 => Fetched::Fetched,
            4 | 5 => Fetched::Cached,
            _ => Fetched::BudgetExhausted { window: "day".into(), retry_after_secs: 60 },
        });
        let mut done = Done::default();
        let (ending, counts) = run_with(&job, &fetcher, &mut done).await;
        let reason = StopReason::BudgetExhausted { window: "day".into(), retry_after_secs: 60 };
        assert_eq!(ending, Ending::Stopped(reason));
        assert_eq!((counts.fetched, counts.cached, counts.failed), (3, 2, 0));
        assert_eq!(fetcher.calls.borrow().len(), 6, "no tile issued after the budget answer");
        assert_eq!((done.count(), done.low_water()), (5, 5));
    }

    #[tokio::test]
    async fn a_resumed_run_skips_the_done_tiles_and_a_refused_one_is_not_retried() {
        let job = job();
        let mut done = Done::default();
        for i in [0, 1, 2, 5] {
            done.insert(i);
        }
        let fetcher = scripted(|n, _| if n == 1 { Fetched::Refused("403".into()) } else { Fetched::Fetched });
        let (ending, counts) = run_with(&job, &fetcher, &mut done).await;
        assert_eq!(ending, Ending::Completed);
        let calls = fetcher.calls.borrow();
        assert_eq!(calls.len() as u64, job.total - 4);
        let skipped: HashSet<String> =
            [0, 1, 2, 5].iter().map(|&i| job.tiles().nth(i).unwrap()).map(|(z, x, y)| job.url(z, x, y)).collect();
        assert!(calls.iter().all(|u| !skipped.contains(u)));
        assert_eq!((counts.done, counts.fetched, counts.failed), (job.total - 1, job.total - 5, 1));
        assert!(!done.contains(3) && done.contains(4), "the refused tile stays to do");
    }
}
