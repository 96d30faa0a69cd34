//! `tile-proxy stats`: a running proxy's per-index statistics (`GET /admin/stats`) as a table.

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
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `tile-proxy stats`.
pub fn run_cli(args: &StatsArgs) -> ExitCode {
    let fetched = crate::app::admin_client::call(&args.url, "/admin/stats", args.token.as_deref(), None);
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
    }
}
