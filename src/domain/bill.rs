//! The HERE bill as pure rules: which upstream answers are billable transactions
//! ([`billable`]), the UTC calendar day and month they fall in ([`day_number`], [`Month`]), how
//! counts are named in the shared store ([`field`], [`parse_field`]) and what they cost
//! ([`bill`]: list price per index, the free transactions applied once per API for the account,
//! and what the cache hits saved at the same prices).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::config::{Billing, Price};
use crate::domain::routes::Api;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// An upstream answer with this status is a billable transaction: every 2xx (a traffic 204
/// "no traffic here" included) and, when `bill_not_modified`, a 304. Errors (4xx, 5xx) and
/// transport failures are not billed.
pub fn billable(status: u16, bill_not_modified: bool) -> bool {
    (200..300).contains(&status) || (status == 304 && bill_not_modified)
}

/// Days since 1970-01-01 (UTC) of a Unix time in milliseconds.
pub fn day_number(unix_ms: u64) -> u32 {
    u32::try_from(unix_ms / DAY_MS).unwrap_or(u32::MAX)
}

/// The civil date (year, month 1-12, day 1-31) of a day number.
pub fn civil(day: u32) -> (i32, u32, u32) {
    let (y, m, d) = crate::base::clock::civil_from_days(i64::from(day));
    // Day numbers are u32: years stay far inside i32.
    (y as i32, m, d)
}

/// The day number of a civil date (the inverse of [`civil`]).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> u32 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u32::try_from(era * 146_097 + doe - 719_468).unwrap_or(0)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_label(day: u32) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A UTC calendar month, shown `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

impl Month {
    /// The month of a day number.
    pub fn of_day(day: u32) -> Month {
        let (year, month, _) = civil(day);
        Month { year, month }
    }

    /// The month of a Unix time in milliseconds.
    pub fn of_ms(unix_ms: u64) -> Month {
        Month::of_day(day_number(unix_ms))
    }

    /// `YYYY-MM` (a year 1970 to 9999), else `None`.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (year, month) = (y.parse().ok()?, m.parse().ok()?);
        ((1970..=9999).contains(&year) && (1..=12).contains(&month)).then_some(Month { year, month })
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { month: self.month + 1, ..self }
        }
    }

    /// Its first day's number.
    pub fn first_day(self) -> u32 {
        days_from_civil(self.year, self.month, 1)
    }

    /// Unix milliseconds of its first instant.
    pub fn start_ms(self) -> u64 {
        u64::from(self.first_day()) * DAY_MS
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One index's counts on one API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Billable upstream transactions ([`billable`]).
    pub transactions: u64,
    /// Answers served from the cache (fresh or stale) instead.
    pub hits: u64,
}

impl Usage {
    pub fn add(&mut self, o: Usage) {
        self.transactions += o.transactions;
        self.hits += o.hits;
    }

    pub fn is_zero(&self) -> bool {
        self.transactions == 0 && self.hits == 0
    }
}

/// Per index label, per API (in [`Api::ALL`] order).
pub type UsageByIndex = BTreeMap<String, [Usage; 4]>;

/// What a count field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Transactions,
    Hits,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Transactions => "tx",
            Kind::Hits => "hits",
        }
    }
}

/// The name of a count in a month's or a day's hash: `index|api|tx` or `index|api|hits`
/// (index labels never hold `|`).
pub fn field(index: &str, api: Api, kind: Kind) -> String {
    format!("{index}|{}|{}", api.as_str(), kind.as_str())
}

/// The parts of a [`field`]; `None` for a name that is not one.
pub fn parse_field(name: &str) -> Option<(&str, Api, Kind)> {
    let (rest, kind) = name.rsplit_once('|')?;
    let (index, api) = rest.rsplit_once('|')?;
    let api = Api::ALL.into_iter().find(|a| a.as_str() == api)?;
    let kind = match kind {
        "tx" => Kind::Transactions,
        "hits" => Kind::Hits,
        _ => return None,
    };
    (!index.is_empty()).then_some((index, api, kind))
}

/// Adds one hash's counts (field -> count) to `into`; fields that are not [`field`]s are
/// passed over.
pub fn add_fields<'a>(into: &mut UsageByIndex, fields: impl IntoIterator<Item = (&'a str, u64)>) {
    for (name, n) in fields {
        let Some((index, api, kind)) = parse_field(name) else { continue };
        let u = &mut into.entry(index.to_string()).or_default()[api.index()];
        match kind {
            Kind::Transactions => u.transactions += n,
            Kind::Hits => u.hits += n,
        }
    }
}

/// Money, rounded to 1/10,000 of the currency unit.
fn money(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// `n` transactions at `price`'s list price.
pub fn list_cost(n: u64, price: Price) -> f64 {
    n as f64 * price.per_1000 / 1000.0
}

/// `n` transactions in a month for the whole account: those past the free ones at list price.
pub fn account_cost(n: u64, price: Price) -> f64 {
    list_cost(n.saturating_sub(price.free_per_month), price)
}

/// One index's use of one API, priced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Line {
    pub transactions: u64,
    pub hits: u64,
    /// The transactions at list price (the free transactions are the account's, not an index's).
    pub cost: f64,
    /// The hits at list price: what they would have cost had they gone to HERE.
    pub saved: f64,
}

/// One index's month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexBill {
    pub transactions: u64,
    pub hits: u64,
    pub cost: f64,
    pub saved: f64,
    /// Per API, only those used.
    pub apis: BTreeMap<&'static str, Line>,
}

/// One API's month for the whole account.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ApiBill {
    pub transactions: u64,
    pub hits: u64,
    pub price_per_1000: f64,
    pub free_per_month: u64,
    /// The transactions at list price.
    pub list_cost: f64,
    /// The transactions past the free ones, at list price: the estimated bill.
    pub cost: f64,
    /// What the bill would have grown by had every hit gone to HERE (free ones applied).
    pub saved: f64,
}

/// The account's month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    pub transactions: u64,
    pub hits: u64,
    pub list_cost: f64,
    pub cost: f64,
    pub saved: f64,
}

/// A month's bill: per index at list price, per API and in total with the free transactions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bill {
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub indices: BTreeMap<String, IndexBill>,
    pub apis: BTreeMap<&'static str, ApiBill>,
    pub totals: Totals,
}

/// Prices `usage` (one month's counts) with `billing`.
pub fn bill(month: Month, usage: &UsageByIndex, billing: &Billing) -> Bill {
    let mut indices = BTreeMap::new();
    let mut per_api = [Usage::default(); 4];
    for (index, apis) in usage {
        let mut b = IndexBill { transactions: 0, hits: 0, cost: 0.0, saved: 0.0, apis: BTreeMap::new() };
        for api in Api::ALL {
            let u = apis[api.index()];
            if u.is_zero() {
                continue;
            }
            per_api[api.index()].add(u);
            let price = billing.prices[api.index()];
            let (cost, saved) = (list_cost(u.transactions, price), list_cost(u.hits, price));
            b.transactions += u.transactions;
            b.hits += u.hits;
            b.cost += cost;
            b.saved += saved;
            b.apis.insert(
                api.as_str(),
                Line { transactions: u.transactions, hits: u.hits, cost: money(cost), saved: money(saved) },
            );
        }
        b.cost = money(b.cost);
        b.saved = money(b.saved);
        indices.insert(index.clone(), b);
    }
    let mut apis = BTreeMap::new();
    let mut totals = Totals::default();
    for api in Api::ALL {
        let u = per_api[api.index()];
        let price = billing.prices[api.index()];
        let cost = account_cost(u.transactions, price);
        let saved = account_cost(u.transactions + u.hits, price) - cost;
        let list = list_cost(u.transactions, price);
        totals.transactions += u.transactions;
        totals.hits += u.hits;
        totals.list_cost += list;
        totals.cost += cost;
        totals.saved += saved;
        apis.insert(
            api.as_str(),
            ApiBill {
                transactions: u.transactions,
                hits: u.hits,
                price_per_1000: price.per_1000,
                free_per_month: price.free_per_month,
                list_cost: money(list),
                cost: money(cost),
                saved: money(saved),
            },
        );
    }
    totals.list_cost = money(totals.list_cost);
    totals.cost = money(totals.cost);
    totals.saved = money(totals.saved);
    Bill { month: month.to_string(), indices, apis, totals }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_billable() {
        for (status, with_304, billed) in [
            (200, true, true),
            (204, false, true),
            (304, true, true),
            (304, false, false),
            (404, true, false),
            (429, true, false),
            (500, true, false),
            (503, true, false),
        ] {
            assert_eq!(billable(status, with_304), billed, "{status} bill_not_modified={with_304}");
        }
    }

    #[test]
    fn utc_days_and_months() {
        // (Unix ms, day label, month)
        let cases = [
            (0, "1970-01-01", "1970-01"),
            (951_782_400_000, "2000-02-29", "2000-02"),
            (1_704_067_199_999, "2023-12-31", "2023-12"),
            (1_704_067_200_000, "2024-01-01", "2024-01"),
            (1_798_761_599_000, "2026-12-31", "2026-12"),
            (1_798_761_600_000, "2027-01-01", "2027-01"),
        ];
        for (ms, day, month) in cases {
            assert_eq!(day_label(day_number(ms)), day, "{ms}");
            assert_eq!(Month::of_ms(ms).to_string(), month, "{ms}");
        }
        for day in [0, 10_956, 11_016, 20_000, 20_818, 40_000] {
            let (y, m, d) = civil(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        let dec = Month::parse("2026-12").unwrap();
        assert_eq!(dec.next().to_string(), "2027-01");
        assert_eq!(dec.next().start_ms(), 1_798_761_600_000);
        assert_eq!(Month::of_ms(dec.next().start_ms() - 1), dec);
        for bad in ["2026-13", "2026-00", "26-12", "2026-1", "2026/12", "abcd-ef", "1969-12", "2026-12-01"] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn fields_round_trip() {
        for api in Api::ALL {
            for kind in [Kind::Transactions, Kind::Hits] {
                let f = field("idx_1.a-b", api, kind);
                assert_eq!(parse_field(&f), Some(("idx_1.a-b", api, kind)));
            }
        }
        for bad in ["", "a|raster", "a|maps|tx", "a|raster|x", "|raster|tx"] {
            assert_eq!(parse_field(bad), None, "{bad}");
        }
        let mut u = UsageByIndex::new();
        add_fields(&mut u, [("a|vector|tx", 3), ("a|vector|hits", 5), ("a|vector|tx", 1), ("junk", 9)]);
        assert_eq!(u["a"][Api::Vector.index()], Usage { transactions: 4, hits: 5 });
    }

    #[test]
    fn cost_per_index_at_list_price_and_the_free_tier_once_per_account() {
        let billing = Billing {
            bill_not_modified: true,
            prices: [
                Price { per_1000: 0.83, free_per_month: 30_000 },
                Price { per_1000: 2.0, free_per_month: 0 },
                Price::default(),
                Price::default(),
            ],
        };
        let mut usage = UsageByIndex::new();
        let r = |t, h| Usage { transactions: t, hits: h };
        usage.insert("a".into(), [r(20_000, 80_000), r(500, 0), r(0, 0), r(0, 0)]);
        usage.insert("b".into(), [r(20_000, 0), r(0, 0), r(0, 0), r(7, 3)]);
        let b = bill(Month { year: 2026, month: 12 }, &usage, &billing);
        assert_eq!(b.month, "2026-12");
        let a = &b.indices["a"];
        // 20,000 raster at 0.83 = 16.6; 500 vector at 2.0 = 1.0.
        assert_eq!((a.transactions, a.hits, a.cost, a.saved), (20_500, 80_000, 17.6, 66.4));
        assert_eq!(a.apis["raster"], Line { transactions: 20_000, hits: 80_000, cost: 16.6, saved: 66.4 });
        assert!(!a.apis.contains_key("traffic_raster"), "unused APIs are left out");
        assert_eq!(b.indices["b"].apis["traffic_vector"], Line { transactions: 7, hits: 3, cost: 0.0, saved: 0.0 });
        // Raster: 40,000 transactions, 30,000 free: 10,000 billed = 8.3; with the 80,000 hits
        // 120,000 - 30,000 = 90,000 = 74.7, so the hits saved 66.4.
        let raster = b.apis["raster"];
        assert_eq!((raster.transactions, raster.list_cost, raster.cost, raster.saved), (40_000, 33.2, 8.3, 66.4));
        assert_eq!(b.apis["vector"].cost, 1.0);
        assert_eq!(b.totals, Totals { transactions: 40_507, hits: 80_003, list_cost: 34.2, cost: 9.3, saved: 66.4 });

        // Under the free tier: nothing to pay, and hits that stay under it saved nothing.
        let mut small = UsageByIndex::new();
        small.insert("a".into(), [r(1_000, 2_000), r(0, 0), r(0, 0), r(0, 0)]);
        let s = bill(Month { year: 2026, month: 12 }, &small, &billing);
        assert_eq!((s.apis["raster"].cost, s.apis["raster"].saved), (0.0, 0.0));
        assert_eq!((s.indices["a"].cost, s.indices["a"].saved), (0.83, 1.66), "list price per index");
    }
}
