//! `tile-proxy stats`: a running proxy's per-index statistics (`GET /admin/stats`) as a table,
//! and the month's HERE bill (its `bill`) as a second one; `--month YYYY-MM` picks the month.

use std::process::ExitCode;

use crate::app::cli::StatsArgs;

/// The document as a table, one line per index.
pub fn table(doc: &serde_json::Value) -> String {
    let mut out = format!(
        "scope: {} ({} pod{})\n",
        doc["scope"].as_str().unwrap_or("?"),
        doc["pods"],
        if doc["pods"].as_u64() == Some(1) { "" } else { "s" }
    );
    let header = ["index", "hits", "stale", "misses", "hit%", "upstream", "bytes", "limited", "budget h", "budget d"];
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let budget = |v: &serde_json::Value| match (v["used"].as_u64(), v["limit"].as_u64()) {
        (Some(u), Some(l)) => format!("{u}/{l}"),
        _ => "-".to_string(),
    };
    let row = |name: &str, v: &serde_json::Value| {
        vec![
            name.to_string(),
            v["hits"].to_string(),
            v["stale"].to_string(),
            (v["misses"].as_u64().unwrap_or(0) + v["coalesced"].as_u64().unwrap_or(0)).to_string(),
            v["hit_ratio"].as_f64().map_or("-".to_string(), |r| format!("{:.1}", r * 100.0)),
            v["upstream_calls"].to_string(),
            crate::config::units::format_size(crate::config::ByteSize::b(v["bytes"].as_u64().unwrap_or(0))),
            v["rate_limited"].to_string(),
            budget(&v["budget"]["hour"]),
            budget(&v["budget"]["day"]),
        ]
    };
    if let Some(indices) = doc["indices"].as_object() {
        for (name, v) in indices {
            rows.push(row(name, v));
        }
    }
    rows.push(row("(total)", &doc["totals"]));
    out.push_str(&aligned(&rows, 1));
    if doc["bill"].is_object() {
        out.push('\n');
        out.push_str(&bill_table(&doc["bill"]));
    }
    out
}

/// Rows as columns, the first `left` of them left-aligned, the rest right-aligned.
fn aligned(rows: &[Vec<String>], left: usize) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i < left { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The `bill` object as a table: a line per index and API (transactions at list price, hits
/// and what they saved), a line per API for the account (free transactions deducted), the total.
pub fn bill_table(bill: &serde_json::Value) -> String {
    let mut out = format!(
        "bill {} (UTC; counts from {}{})\n",
        bill["month"].as_str().unwrap_or("?"),
        bill["store"].as_str().unwrap_or("?"),
        if bill["store"] == "redis" { ", the fleet's" } else { ", this pod's" }
    );
    if let Some(e) = bill["error"].as_str() {
        out.push_str(e);
        out.push('\n');
        return out;
    }
    let money = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    let mut rows = vec![["index", "api", "transactions", "hits", "cost", "saved"].map(String::from).to_vec()];
    if let Some(indices) = bill["indices"].as_object() {
        for (name, ib) in indices {
            for (api, line) in ib["apis"].as_object().into_iter().flatten() {
                rows.push(vec![
                    name.clone(),
                    api.clone(),
                    line["transactions"].to_string(),
                    line["hits"].to_string(),
                    money(&line["cost"]),
                    money(&line["saved"]),
                ]);
            }
        }
    }
    for (api, ab) in bill["apis"].as_object().into_iter().flatten() {
        if ab["transactions"].as_u64().unwrap_or(0) + ab["hits"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        rows.push(vec![
            format!("(account, {} free)", ab["free_per_month"]),
            api.clone(),
            ab["transactions"].to_string(),
            ab["hits"].to_string(),
            money(&ab["cost"]),
            money(&ab["saved"]),
        ]);
    }
    let t = &bill["totals"];
    rows.push(vec![
        "(total)".into(),
        String::new(),
        t["transactions"].to_string(),
        t["hits"].to_string(),
        money(&t["cost"]),
        money(&t["saved"]),
    ]);
    out.push_str(&aligned(&rows, 2));
    out.push_str("cost: per index at list price; account and total lines after the free transactions\n");
    out
}

/// `tile-proxy stats`.
pub fn run_cli(args: &StatsArgs) -> ExitCode {
    let mut path = "/admin/stats".to_string();
    if let Some(month) = &args.month {
        if crate::domain::bill::Month::parse(month).is_none() {
            eprintln!("tile-proxy stats: --month {month}: not a month (YYYY-MM, e.g. 2026-12)");
            return ExitCode::FAILURE;
        }
        path.push_str(&format!("?month={month}"));
    }
    let fetched = crate::app::admin_client::call(&args.url, &path, args.token.as_deref(), None);
    match fetched {
        Ok(doc) if args.json => {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(doc) => {
            print!("{}", table(&doc));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tile-proxy stats: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_every_index_and_the_total() {
        let doc = json!({
            "scope": "fleet", "pods": 2,
            "indices": {"123": {"hits": 9, "stale": 0, "misses": 1, "coalesced": 0, "hit_ratio": 0.9,
                "upstream_calls": 1, "bytes": 2048, "rate_limited": 3,
                "budget": {"hour": {"used": 1, "limit": 100}, "day": null}}},
            "totals": {"hits": 9, "stale": 0, "misses": 1, "coalesced": 0, "hit_ratio": 0.9,
                "upstream_calls": 1, "bytes": 2048, "rate_limited": 3},
        });
        let t = table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "scope: fleet (2 pods)");
        assert!(lines[1].starts_with("index") && lines[1].ends_with("budget d"), "{t}");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row, ["123", "9", "0", "1", "90.0", "1", "2KiB", "3", "1/100", "-"], "{t}");
        assert!(lines[3].starts_with("(total)"), "{t}");
        assert_eq!(lines.len(), 4, "no bill in the document, no bill table: {t}");
    }

    #[test]
    fn the_bill_table_shows_each_index_and_api_the_account_and_the_total() {
        let bill = json!({
            "month": "2026-12", "store": "redis",
            "indices": {"123": {"transactions": 40_000, "hits": 80_000, "cost": 33.2, "saved": 66.4,
                "apis": {"raster": {"transactions": 40_000, "hits": 80_000, "cost": 33.2, "saved": 66.4}}}},
            "apis": {
                "raster": {"transactions": 40_000, "hits": 80_000, "free_per_month": 30_000, "cost": 8.3, "saved": 66.4},
                "vector": {"transactions": 0, "hits": 0, "free_per_month": 0, "cost": 0.0, "saved": 0.0}},
            "totals": {"transactions": 40_000, "hits": 80_000, "cost": 8.3, "saved": 66.4},
        });
        let t = bill_table(&bill);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "bill 2026-12 (UTC; counts from redis, the fleet's)", "{t}");
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(cells(1), ["index", "api", "transactions", "hits", "cost", "saved"], "{t}");
        assert_eq!(cells(2), ["123", "raster", "40000", "80000", "33.20", "66.40"], "{t}");
        assert_eq!(cells(3), ["(account,", "30000", "free)", "raster", "40000", "80000", "8.30", "66.40"], "{t}");
        assert_eq!(cells(4), ["(total)", "40000", "80000", "8.30", "66.40"], "{t}");
        assert!(lines[5].starts_with("cost: per index at list price"), "{t}");
        let doc = json!({"scope": "pod", "pods": 1, "indices": {}, "totals": {}, "bill": bill});
        assert!(table(&doc).contains("bill 2026-12"), "the stats table carries the bill");
    }
}
