//! Where the bill's counts live ([`Ledger`]): billable upstream transactions and cache hits per
//! index, per HERE API, per UTC month and day, kept so that they survive restarts and add up
//! across pods.
//!
//! Requests never wait for the store: each count goes into a small in-memory map of deltas
//! (one short lock, no I/O), and [`Ledger::flush`] (every housekeeping tick, and on a graceful
//! shutdown) moves the deltas to the store:
//! * with Redis, one script adds them (`HINCRBY`) to the month's hash and the day's hash
//!   (`<prefix>:{bill}:2026-12`, `<prefix>:{bill}:2026-12-06`, fields `index|api|tx` and
//!   `index|api|hits`), which expire after [`MONTH_KEEP_DAYS`] and [`DAY_KEEP_DAYS`]. Every pod
//!   adds to the same hashes, so they hold the fleet's counts. A flush that fails keeps its
//!   deltas for the next tick: counts are not lost while Redis is away (a flush whose answer is
//!   lost after Redis applied it is sent again: the bill errs high, never low);
//! * without Redis, with the disk tier on, the counts are kept in the cache folder
//!   (`bill.json`, written atomically: a temporary file, synced, renamed) and read back at
//!   start. A write that fails is tried again next tick; the counts stay in memory meanwhile;
//! * with neither, in memory only (they start at 0 with the process).
//!
//! A count belongs to the UTC day of the injected clock when it was made, not to the tick that
//! flushes it, so a month ends exactly at midnight UTC.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::base::clock::SharedClock;
use crate::domain::bill::{self, day_label, day_number, Kind, Month, Usage, UsageByIndex};
use crate::domain::routes::Api;
use crate::store::redis::{Deadline, Lua, Redis};

/// How long a month's counts are kept (Redis expiry, pruning of `bill.json`): 13 months and a
/// little, so last year's same month can be compared.
pub const MONTH_KEEP_DAYS: u32 = 400;
/// How long a day's counts are kept.
pub const DAY_KEEP_DAYS: u32 = 92;

/// The file in the cache folder.
pub const FILE_NAME: &str = "bill.json";

/// Adds the deltas of one flush and answers the first key's hash (the current month's, so a
/// tick needs one call). KEYS: the period hashes, the current month first; ARGV[1..#KEYS]: each
/// key's lifetime in seconds; then triples (key number, field, increment).
const FLUSH_LUA: &str = r#"
local n = #KEYS
for i = n + 1, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
end
for i = 1, n do
  redis.call('EXPIRE', KEYS[i], ARGV[i])
end
return redis.call('HGETALL', KEYS[1])
"#;

/// Ticks between two reads of the store when nothing was flushed (a flush reads it anyway).
const READ_EVERY: u64 = 5;

/// Where the counts are kept.
pub enum Store {
    /// The fleet's shared hashes.
    Redis(Arc<Redis>),
    /// `bill.json` in the cache folder.
    File(PathBuf),
    /// Nowhere beyond this process.
    Memory,
}

/// Deltas not yet in the store, by day number, index label, API.
type Pending = BTreeMap<u32, HashMap<Box<str>, [Usage; 4], crate::base::hashing::Fnv>>;

/// The stored counts (`bill.json`, and the memory-only store): period (`YYYY-MM` or
/// `YYYY-MM-DD`) -> field -> count, as the Redis hashes hold them.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    version: u32,
    periods: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The bill's counts. Shared by every worker; counting takes one short lock, never I/O.
pub struct Ledger {
    bill_not_modified: bool,
    clock: SharedClock,
    store: Store,
    pending: Mutex<Pending>,
    /// The stored counts, for the file and memory stores.
    book: Mutex<Book>,
    /// The book has counts `bill.json` lacks.
    dirty: AtomicBool,
    /// One flush at a time (the tick and a shutdown may meet).
    flushing: tokio::sync::Mutex<()>,
    /// The last flush failed (logged once per failure, again on recovery).
    failing: AtomicBool,
    /// Closed by a shutdown: nothing is stored any more (the next process owns the store).
    closed: AtomicBool,
    /// Housekeeping ticks so far.
    ticks: std::sync::atomic::AtomicU64,
    lua: Lua,
}

impl Ledger {
    /// A ledger over `store`; a file store reads what the file holds (a missing file is an
    /// empty book; an unreadable one is set aside as `bill.json.corrupt-<ms>` and logged, and
    /// counting starts again from 0).
    pub fn new(store: Store, bill_not_modified: bool, clock: SharedClock) -> Ledger {
        let book = match &store {
            Store::File(path) => load(path, clock.now_ms()),
            _ => Book::default(),
        };
        Ledger {
            bill_not_modified,
            clock,
            store,
            pending: Mutex::new(Pending::new()),
            book: Mutex::new(book),
            dirty: AtomicBool::new(false),
            flushing: tokio::sync::Mutex::new(()),
            failing: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ticks: std::sync::atomic::AtomicU64::new(0),
            lua: Lua::new(FLUSH_LUA),
        }
    }

    /// `redis`, `file` or `memory`.
    pub fn store_name(&self) -> &'static str {
        match self.store {
            Store::Redis(_) => "redis",
            Store::File(_) => "file",
            Store::Memory => "memory",
        }
    }

    /// Counts an upstream answer with `status` to a request `index` caused, if it is billable
    /// ([`bill::billable`]).
    pub fn upstream_answer(&self, index: &str, api: Api, status: u16) {
        if bill::billable(status, self.bill_not_modified) {
            self.add(index, api, Usage { transactions: 1, hits: 0 });
        }
    }

    /// Counts an answer served from the cache (fresh or stale).
    pub fn hit(&self, index: &str, api: Api) {
        self.add(index, api, Usage { transactions: 0, hits: 1 });
    }

    fn add(&self, index: &str, api: Api, u: Usage) {
        let day = day_number(self.clock.now_ms());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let by_index = pending.entry(day).or_default();
        match by_index.get_mut(index) {
            Some(apis) => apis[api.index()].add(u),
            None => {
                let mut apis = [Usage::default(); 4];
                apis[api.index()] = u;
                by_index.insert(index.into(), apis);
            }
        }
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts the deltas of a failed flush back.
    fn give_back(&self, deltas: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (day, by_index) in deltas {
            let mine = pending.entry(day).or_default();
            for (index, apis) in by_index {
                let slot = mine.entry(index).or_default();
                for (s, u) in slot.iter_mut().zip(apis) {
                    s.add(u);
                }
            }
        }
    }

    /// Moves the counts made since the last flush to the store. On failure they are kept for
    /// the next flush and the error is returned (logged once until a flush succeeds again).
    pub async fn flush(&self) -> Result<(), String> {
        let _one = self.flushing.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let deltas = self.take();
        let result = match &self.store {
            Store::Redis(redis) => {
                if deltas.is_empty() {
                    return Ok(());
                }
                let month = Month::of_ms(self.clock.now_ms());
                let result = self.flush_redis(redis, &deltas, month).await.map(drop);
                if result.is_err() {
                    self.give_back(deltas);
                }
                result
            }
            Store::File(path) => {
                if !deltas.is_empty() {
                    self.apply(&deltas);
                    self.dirty.store(true, Ordering::SeqCst);
                }
                if !self.dirty.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let json = {
                    let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
                    serde_json::to_vec_pretty(&*book).map_err(|e| e.to_string())
                };
                let path = path.clone();
                let written = match json {
                    Ok(json) => tokio::task::spawn_blocking(move || write_atomic(&path, &json))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e),
                };
                if written.is_ok() {
                    self.dirty.store(false, Ordering::SeqCst);
                }
                written
            }
            Store::Memory => {
                self.apply(&deltas);
                Ok(())
            }
        };
        self.note(&result);
        result
    }

    /// Logs a flush that failed after one that worked, and the other way round.
    fn note(&self, result: &Result<(), String>) {
        match result {
            Ok(()) if self.failing.swap(false, Ordering::SeqCst) => {
                tracing::info!(store = self.store_name(), "bill counts stored again");
            }
            Err(e) if !self.failing.swap(true, Ordering::SeqCst) => {
                tracing::warn!(store = self.store_name(), error = %e, "cannot store the bill's counts; kept in memory and retried");
            }
            _ => {}
        }
    }

    /// The last flush, on shutdown: after it nothing is stored any more, so a server stopped
    /// in a process that goes on (tests, `seed --direct`) cannot overwrite what the next one on
    /// the same cache folder stores.
    pub async fn close(&self) -> Result<(), String> {
        let result = self.flush().await;
        self.closed.store(true, Ordering::SeqCst);
        result
    }

    /// The housekeeping tick: stores the counts made since the last one and gives `month`'s
    /// (the store's, with this pod's not yet stored), reading the store as little as it can:
    /// with Redis, one call that both adds and reads when there are counts to add, else one
    /// read every [`READ_EVERY`] ticks (`None` in between, and when the store fails: the
    /// counts are then kept for the next tick).
    pub async fn tick(&self, month: Month) -> Option<UsageByIndex> {
        let n = self.ticks.fetch_add(1, Ordering::Relaxed);
        let Store::Redis(redis) = &self.store else {
            let _ = self.flush().await;
            return self.month(month).await.ok();
        };
        let stored = {
            let _one = self.flushing.lock().await;
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            let deltas = self.take();
            if deltas.is_empty() {
                None
            } else {
                let result = self.flush_redis(redis, &deltas, month).await;
                if result.is_err() {
                    self.give_back(deltas);
                }
                self.note(&result.as_ref().map(drop).map_err(Clone::clone));
                Some(result.ok()?)
            }
        };
        let mut usage = match stored {
            Some(fields) => fields_usage(&fields),
            None if n.is_multiple_of(READ_EVERY) => return self.month(month).await.ok(),
            None => return None,
        };
        self.add_pending(&mut usage, month);
        Some(usage)
    }

    async fn flush_redis(
        &self,
        redis: &Redis,
        deltas: &Pending,
        month: Month,
    ) -> Result<BTreeMap<String, u64>, String> {
        let mut keys: Vec<String> = Vec::new();
        let mut ttls: Vec<String> = Vec::new();
        let mut triples: Vec<String> = Vec::new();
        let mut key_number = |period: String, keep_days: u32, keys: &mut Vec<String>| {
            let key = redis.keys.bill(&period);
            match keys.iter().position(|k| *k == key) {
                Some(i) => i + 1,
                None => {
                    keys.push(key);
                    ttls.push((u64::from(keep_days) * 86_400).to_string());
                    keys.len()
                }
            }
        };
        // The month to answer for first.
        key_number(month.to_string(), MONTH_KEEP_DAYS, &mut keys);
        for (&day, by_index) in deltas {
            let month = key_number(Month::of_day(day).to_string(), MONTH_KEEP_DAYS, &mut keys);
            let daily = key_number(day_label(day), DAY_KEEP_DAYS, &mut keys);
            for (index, apis) in by_index {
                for api in Api::ALL {
                    let u = apis[api.index()];
                    for (kind, n) in [(Kind::Transactions, u.transactions), (Kind::Hits, u.hits)] {
                        if n == 0 {
                            continue;
                        }
                        for k in [month, daily] {
                            triples.extend([k.to_string(), bill::field(index, api, kind), n.to_string()]);
                        }
                    }
                }
            }
        }
        let args: Vec<&str> = ttls.iter().chain(&triples).map(String::as_str).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        redis.eval("bill_flush", Deadline::Write, &self.lua, &keys, &args).await.map_err(|e| e.to_string())
    }

    /// Adds deltas to the book (file and memory stores), dropping periods past their keep.
    fn apply(&self, deltas: &Pending) {
        let today = day_number(self.clock.now_ms());
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        for (&day, by_index) in deltas {
            for period in [Month::of_day(day).to_string(), day_label(day)] {
                let fields = book.periods.entry(period).or_default();
                for (index, apis) in by_index {
                    for api in Api::ALL {
                        let u = apis[api.index()];
                        for (kind, n) in [(Kind::Transactions, u.transactions), (Kind::Hits, u.hits)] {
                            if n > 0 {
                                *fields.entry(bill::field(index, api, kind)).or_default() += n;
                            }
                        }
                    }
                }
            }
        }
        prune(&mut book, today);
    }

    /// One month's counts: the store's, plus this pod's not yet flushed.
    pub async fn month(&self, month: Month) -> Result<UsageByIndex, String> {
        let mut usage = UsageByIndex::new();
        let period = month.to_string();
        match &self.store {
            Store::Redis(redis) => {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(redis.keys.bill(&period));
                // Not a request's call: the longer deadline, so a big month on a busy Redis does
                // not open the breaker every request goes through.
                let all: BTreeMap<String, u64> =
                    redis.call("bill_read", Deadline::Write, &cmd).await.map_err(|e| e.to_string())?;
                usage = fields_usage(&all);
            }
            Store::File(_) | Store::Memory => {
                let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(fields) = book.periods.get(&period) {
                    bill::add_fields(&mut usage, fields.iter().map(|(k, v)| (k.as_str(), *v)));
                }
            }
        }
        self.add_pending(&mut usage, month);
        Ok(usage)
    }

    /// Adds this pod's counts of `month` not yet stored.
    fn add_pending(&self, usage: &mut UsageByIndex, month: Month) {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (_, by_index) in pending.range(month.first_day()..month.next().first_day()) {
            for (index, apis) in by_index {
                let slot = usage.entry(index.to_string()).or_default();
                for (s, u) in slot.iter_mut().zip(apis) {
                    s.add(*u);
                }
            }
        }
    }
}

/// The counts of one stored hash.
fn fields_usage(fields: &BTreeMap<String, u64>) -> UsageByIndex {
    let mut usage = UsageByIndex::new();
    bill::add_fields(&mut usage, fields.iter().map(|(k, v)| (k.as_str(), *v)));
    usage
}

/// Drops the periods older than they are kept.
fn prune(book: &mut Book, today: u32) {
    let oldest_day = day_label(today.saturating_sub(DAY_KEEP_DAYS));
    let oldest_month = Month::of_day(today.saturating_sub(MONTH_KEEP_DAYS)).to_string();
    book.periods.retain(|period, _| match period.len() {
        10 => *period >= oldest_day,
        _ => *period >= oldest_month,
    });
}

/// Reads `bill.json`; see [`Ledger::new`].
fn load(path: &Path, now_ms: u64) -> Book {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Book { version: 1, ..Book::default() },
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the bill's counts; counting from 0");
            return Book { version: 1, ..Book::default() };
        }
    };
    match serde_json::from_slice::<Book>(&bytes) {
        Ok(book) => book,
        Err(e) => {
            let aside = path.with_file_name(format!("{FILE_NAME}.corrupt-{now_ms}"));
            let moved = std::fs::rename(path, &aside);
            tracing::error!(
                path = %path.display(), error = %e, set_aside = %aside.display(), moved = moved.is_ok(),
                "the bill's counts file is unreadable; set aside, counting from 0"
            );
            Book { version: 1, ..Book::default() }
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::{Clock, ManualClock};

    fn at(clock: &Arc<ManualClock>) -> SharedClock {
        clock.clone()
    }

    #[tokio::test]
    async fn file_store_keeps_counts_across_a_restart_and_splits_months_at_midnight_utc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let clock = ManualClock::new();
        let dec = Month::of_ms(clock.now_ms());
        // One minute before the next month.
        clock.advance_ms(dec.next().start_ms() - 60_000 - clock.now_ms());
        let ledger = Ledger::new(Store::File(path.clone()), true, at(&clock));
        ledger.upstream_answer("a", Api::Raster, 200);
        ledger.upstream_answer("a", Api::Raster, 304);
        ledger.upstream_answer("a", Api::Raster, 500);
        ledger.hit("a", Api::Raster);
        clock.advance_ms(120_000);
        ledger.upstream_answer("a", Api::TrafficVector, 204);
        // Not flushed yet: the month still shows them.
        assert_eq!(ledger.month(dec).await.unwrap()["a"][0], Usage { transactions: 2, hits: 1 });
        ledger.flush().await.unwrap();
        drop(ledger);

        let again = Ledger::new(Store::File(path.clone()), false, at(&clock));
        let old = again.month(dec).await.unwrap();
        assert_eq!(old["a"][Api::Raster.index()], Usage { transactions: 2, hits: 1 });
        assert!(old["a"][Api::TrafficVector.index()].is_zero(), "after midnight: the next month's");
        again.upstream_answer("a", Api::Raster, 304);
        again.flush().await.unwrap();
        let new = again.month(dec.next()).await.unwrap();
        assert_eq!(new["a"][Api::TrafficVector.index()], Usage { transactions: 1, hits: 0 });
        assert!(new["a"][Api::Raster.index()].is_zero(), "304 not billed with bill_not_modified = false");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_NAME], "no temporary file left");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&day_label(dec.next().first_day() - 1)), "days are kept too: {text}");
    }

    #[tokio::test]
    async fn a_failed_write_keeps_the_counts_and_a_corrupt_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let month = Month::of_ms(clock.now_ms());
        // A folder where the file should be: every write fails.
        let path = dir.path().join("sub").join(FILE_NAME);
        let ledger = Ledger::new(Store::File(path.clone()), true, at(&clock));
        ledger.upstream_answer("a", Api::Vector, 200);
        assert!(ledger.flush().await.is_err());
        assert_eq!(ledger.month(month).await.unwrap()["a"][1].transactions, 1);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        ledger.flush().await.unwrap();
        assert!(path.exists(), "written on the next flush");

        std::fs::write(&path, b"{not json").unwrap();
        let fresh = Ledger::new(Store::File(path.clone()), true, at(&clock));
        assert!(fresh.month(month).await.unwrap().is_empty());
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.starts_with("bill.json.corrupt-")), "{names:?}");
    }

    #[test]
    fn old_periods_are_pruned() {
        let mut book = Book::default();
        let today = bill::days_from_civil(2026, 12, 6);
        for p in ["2025-10", "2025-11", "2026-12", "2026-09-04", "2026-09-06", "2026-12-06"] {
            book.periods.insert(p.into(), BTreeMap::new());
        }
        prune(&mut book, today);
        let left: Vec<&str> = book.periods.keys().map(String::as_str).collect();
        assert_eq!(left, ["2025-11", "2026-09-06", "2026-12", "2026-12-06"]);
    }
}
