//! The HERE bill of the current (or a chosen) UTC month: every housekeeping tick the counts made
//! since the last one go to the store and the gauges are set from it ([`tick`]); `/admin/stats`
//! gains its `bill` ([`document`]). The counting itself is `store::bill`, the prices and the
//! maths `domain::bill`.

use serde_json::json;

use crate::domain::bill::{bill, Bill, Line, Month};
use crate::domain::routes::{Api, DEFAULT_INDEX};
use crate::observe::metrics::BillGauges;
use crate::service::core::Core;

/// Stores the counts made since the last tick and sets the month's gauges from the store (with
/// Redis: the fleet's counts; one Redis call when there were counts, else a read every few
/// ticks: `store::bill::Ledger::tick`). A store that fails keeps the counts for the next tick
/// and leaves the gauges as they were.
pub async fn tick(core: &Core) {
    let month = Month::of_ms(core.clock.now_ms());
    if let Some(mut usage) = core.bill.tick(month).await {
        // The default index and the configured ones have their series from the start, at 0
        // (an absent series is "No data" in a panel).
        let known = std::iter::once(DEFAULT_INDEX).chain(core.settings.policies.keys().map(String::as_str));
        for index in known {
            usage.entry(core.metrics.index_label(index).to_string()).or_default();
        }
        set_gauges(&core.metrics.bill, &bill(month, &usage, &core.settings.billing));
    }
}

fn set_gauges(g: &BillGauges, b: &Bill) {
    for vec in [&g.transactions, &g.hits] {
        vec.reset();
    }
    for vec in [&g.cost, &g.saved] {
        vec.reset();
    }
    for (index, ib) in &b.indices {
        let zero = Line { transactions: 0, hits: 0, cost: 0.0, saved: 0.0 };
        for api in Api::ALL.map(Api::as_str) {
            let line = ib.apis.get(api).unwrap_or(&zero);
            let labels = [index.as_str(), api];
            g.transactions.with_label_values(&labels).set(i64::try_from(line.transactions).unwrap_or(i64::MAX));
            g.hits.with_label_values(&labels).set(i64::try_from(line.hits).unwrap_or(i64::MAX));
            g.cost.with_label_values(&labels).set(line.cost);
            g.saved.with_label_values(&labels).set(line.saved);
        }
    }
    for (api, ab) in &b.apis {
        g.account_cost.with_label_values(&[api]).set(ab.cost);
    }
}

/// The `bill` object of `/admin/stats`: `month` (default: the current UTC month), per index
/// and per API the transactions, hits, cost and saved, and the account's totals with the free
/// transactions; `store` says where the counts come from (`redis`: the fleet's; `file`,
/// `memory`: this pod's). A store that does not answer gives `error` and no counts.
pub async fn document(core: &Core, month: Option<Month>) -> serde_json::Value {
    let month = month.unwrap_or_else(|| Month::of_ms(core.clock.now_ms()));
    let billing = &core.settings.billing;
    match core.bill.month(month).await {
        Ok(usage) => {
            let mut doc = serde_json::to_value(bill(month, &usage, billing)).unwrap_or_default();
            doc["store"] = json!(core.bill.store_name());
            doc["bill_not_modified"] = json!(billing.bill_not_modified);
            doc
        }
        Err(e) => json!({
            "month": month.to_string(),
            "store": core.bill.store_name(),
            "bill_not_modified": billing.bill_not_modified,
            "error": format!("the bill's counts cannot be read: {e}"),
        }),
    }
}
