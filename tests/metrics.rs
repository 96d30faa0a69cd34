//! `/metrics` as dashboards and alerts read it: the counters they watch exist at 0 from the
//! start, for the default index and every index named in the config, with every label value the
//! code can count (an absent series is "No data" in a panel and blinds `increase(...)` alerts to
//! the first event). Checked on a fresh proxy, and on one with Redis, a budget, a client rate
//! limit and the HERE cap after a miss, a hit and a purge.

mod common;

use common::redis_server::RedisServer;
use common::*;
use tile_proxy::config::{FileConfig, PolicyFileConfig};

const ADMIN: &str = "admin-token-0123456789abcdef";

/// The value of the sample `name{labels}`, its labels exactly these (any order); `None` when
/// `/metrics` has no such series.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let mut got = parse_labels(rest.strip_suffix('}')?)?;
        got.sort();
        (got == want).then(|| value.parse().ok())?
    })
}

/// `a="x",b="y"` (Prometheus text escapes: `\\`, `\"`, `\n`) as pairs.
fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                (_, c) => v.push(c),
            }
        };
        out.push((k.to_string(), v));
        s = rest[end + 1..].strip_prefix(',').unwrap_or(&rest[end + 1..]);
    }
    Some(out)
}

/// Every series of the watched counters that should exist for `index`, as (name, labels): the
/// label values spelled out as a dashboard spells them, not taken from the code under test.
fn watched(index: &str) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let i = || ("index", index.to_string());
    let mut out = vec![
        ("tile_proxy_rate_limited_total", vec![i()]),
        ("tile_proxy_upstream_retries_total", vec![i()]),
        ("tile_proxy_purged_total", vec![i()]),
        ("tile_proxy_early_refresh_total", vec![i()]),
        ("tile_proxy_cache_inserts_total", vec![i()]),
    ];
    for w in ["hour", "day"] {
        out.push(("tile_proxy_budget_exhausted_total", vec![i(), ("window", w.to_string())]));
    }
    for r in ["no_length", "too_large", "truncated", "no_store"] {
        out.push(("tile_proxy_cache_not_stored_total", vec![i(), ("reason", r.to_string())]));
    }
    for r in ["not_modified", "modified"] {
        out.push(("tile_proxy_revalidations_total", vec![i(), ("result", r.to_string())]));
    }
    out
}

/// Asserts every watched series of `index` is in `text` at 0 (or at the value `moved` gives for
/// that metric name); the message lists every series that is not.
fn assert_watched(text: &str, index: &str, moved: &[(&str, f64)]) {
    let mut wrong = Vec::new();
    for (name, labels) in watched(index) {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let want = moved.iter().find(|(n, _)| *n == name).map_or(0.0, |(_, v)| *v);
        let got = sample(text, name, &labels);
        if got != Some(want) {
            wrong.push(format!("{name}{labels:?}: {got:?}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "index {index}:\n{}", wrong.join("\n"));
}

/// One configured index, `dash`, with a budget, a client rate limit and XFetch; the HERE cap on.
fn guarded(f: &mut FileConfig) {
    f.admin_token = Some(ADMIN.into());
    f.upstream_rps = Some(50.0);
    f.index.insert(
        "dash".into(),
        PolicyFileConfig {
            budget_hour: Some(1_000),
            budget_day: Some(10_000),
            rate_limit: Some(100.0),
            rate_burst: Some(100),
            ..Default::default()
        },
    );
    // Named in the config with nothing of its own: its series exist all the same.
    f.index.insert("plain".into(), PolicyFileConfig::default());
}

#[test]
fn the_sample_parser_matches_whole_label_sets() {
    let text = "# HELP x x\nx{index=\"a\",reason=\"no_store\"} 3\nx{index=\"a\"} 1\ny 2\nx{index=\"q\\\"z\"} 5\n";
    assert_eq!(sample(text, "x", &[("reason", "no_store"), ("index", "a")]), Some(3.0));
    assert_eq!(sample(text, "x", &[("index", "a")]), Some(1.0));
    assert_eq!(sample(text, "x", &[("index", "q\"z")]), Some(5.0));
    assert_eq!(sample(text, "y", &[]), Some(2.0));
    assert_eq!(sample(text, "x", &[("index", "b")]), None);
    assert_eq!(sample(text, "x", &[("reason", "no_store")]), None, "a subset is not the series");
}

#[actix_rt::test]
async fn watched_counters_exist_at_zero_before_any_request() {
    let up = upstream(1_000);
    let p = Proxy::start(&up, guarded).await;
    let m = p.metrics().await;
    for index in ["dash", "plain", "default"] {
        assert_watched(&m, index, &[]);
    }
    // Per upstream API, and per Redis fallback reason, as before.
    for api in ["raster", "vector"] {
        assert_eq!(sample(&m, "tile_proxy_upstream_busy_total", &[("upstream", api)]), Some(0.0), "{api}");
    }
    for what in ["cap", "budget", "client"] {
        assert_eq!(sample(&m, "tile_proxy_protect_fallback_total", &[("what", what)]), Some(0.0), "{what}");
    }
    assert_eq!(up.total(), 0);
    p.stop().await;
}

#[actix_rt::test]
async fn watched_counters_exist_at_zero_with_redis_after_a_miss_a_hit_and_a_purge() {
    let redis = RedisServer::start();
    let up = upstream(1_000);
    let p = Proxy::start(&up, |f| {
        guarded(f);
        redis.share(f);
    })
    .await;
    let path = "/v3/base/mc/11/1100/700/png?indice=dash";
    let miss = p.get(path).await;
    assert_eq!((miss.status.as_u16(), miss.x_cache()), (200, "MISS"));
    let hit = p.get(path).await;
    assert_eq!((hit.status.as_u16(), hit.x_cache()), (200, "HIT"));
    let mut res = p
        .client
        .post(p.url("/admin/purge"))
        .insert_header(("Authorization", format!("Bearer {ADMIN}")))
        .insert_header(("Content-Type", "application/json"))
        .send_body(r#"{"index": "dash"}"#)
        .await
        .expect("sent");
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
    assert_eq!(up.total(), 1);

    let m = p.metrics().await;
    assert_eq!(sample(&m, "tile_proxy_requests_total", &[("index", "dash"), ("cache", "miss")]), Some(1.0));
    assert_eq!(sample(&m, "tile_proxy_requests_total", &[("index", "dash"), ("cache", "hit")]), Some(1.0));
    // The guards ran, through Redis: the budget was charged there, no local fallback.
    assert!(metric(&m, "tile_proxy_redis_ops_total", &[]) >= 1.0);
    assert_eq!(sample(&m, "tile_proxy_budget_used", &[("index", "dash"), ("window", "hour")]), Some(1.0));
    for what in ["cap", "budget", "client"] {
        assert_eq!(sample(&m, "tile_proxy_protect_fallback_total", &[("what", what)]), Some(0.0), "{what}");
    }
    assert_watched(&m, "dash", &[("tile_proxy_cache_inserts_total", 1.0)]);
    for index in ["plain", "default"] {
        assert_watched(&m, index, &[]);
    }
    p.stop().await;
}
