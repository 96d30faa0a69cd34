//! The control endpoints (`/__stats`, `/__reset`, `/__version`, `/__latency`, `/__fault`,
//! `/__clear`) and the JSON form of [`Fault`] they read and write.
//!
//! The JSON shapes are documented in the crate docs; [`parse_rule`] and [`fault_json`] are
//! each other's inverse (up to sub-millisecond durations).

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::body;
use crate::http::{self, Request, Response};
use crate::server::{json_response, State};
use crate::Fault;

/// A fault rule as posted to `/__fault`.
#[derive(Debug)]
pub(crate) struct RuleSpec {
    /// Substring of the request path.
    pub(crate) needle: String,
    /// `None` = until cleared.
    pub(crate) times: Option<usize>,
    pub(crate) fault: Fault,
}

/// The JSON form of a rule, as `/__fault` answers and lists it.
pub(crate) fn rule_json(needle: &str, remaining: Option<usize>, fault: &Fault) -> Value {
    json!({"match": needle, "remaining": remaining, "fault": fault_json(fault)})
}

/// The JSON form of a fault (the shape `POST /__fault` accepts under `"fault"`).
pub(crate) fn fault_json(fault: &Fault) -> Value {
    let ms = |d: &Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match fault {
        Fault::Status { code, retry_after: Some(s) } => json!({"status": code, "retry_after": s}),
        Fault::Status { code, retry_after: None } => json!({"status": code}),
        Fault::Delay(d) => json!({"delay_ms": ms(d)}),
        Fault::SlowBody { chunk, interval } => json!({"slow_body": {"chunk": chunk, "interval_ms": ms(interval)}}),
        Fault::Chunked { chunk, interval } => json!({"chunked": {"chunk": chunk, "interval_ms": ms(interval)}}),
        Fault::Truncate { after } => json!({"truncate": after}),
        Fault::Reset => json!({"reset": true}),
        Fault::Hang => json!({"hang": true}),
        Fault::Redirect => json!({"redirect": true}),
        Fault::Echo { code } => json!({"echo": code}),
        Fault::Headers(h) => json!({"headers": h.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()}),
        Fault::BigBody { size } => json!({"big_body": size}),
    }
}

/// The keys that name a fault kind inside `"fault"`.
const KINDS: [&str; 11] = [
    "status",
    "delay_ms",
    "slow_body",
    "chunked",
    "truncate",
    "reset",
    "hang",
    "redirect",
    "echo",
    "headers",
    "big_body",
];

fn uint(v: &Value, what: &str) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| format!("{what} must be a non-negative integer, got {v}"))
}

fn usize_of(v: &Value, what: &str) -> Result<usize, String> {
    usize::try_from(uint(v, what)?).map_err(|_| format!("{what} is too large"))
}

fn status_code(v: &Value, what: &str) -> Result<u16, String> {
    match uint(v, what)? {
        c @ 100..=999 => Ok(c as u16),
        c => Err(format!("{what} must be an HTTP status 100..=999, got {c}")),
    }
}

fn is_true(v: &Value, what: &str) -> Result<(), String> {
    match v {
        Value::Bool(true) => Ok(()),
        other => Err(format!("{what} must be true, got {other}")),
    }
}

/// Rejects keys of `obj` not in `allowed`.
fn only_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown key \"{k}\" in {what} (allowed: {})", allowed.join(", "))),
        None => Ok(()),
    }
}

/// `{"chunk": N, "interval_ms": N}` for `slow_body` and `chunked`.
fn pacing(v: &Value, kind: &str) -> Result<(usize, Duration), String> {
    let obj =
        v.as_object().ok_or_else(|| format!("\"{kind}\" must be an object {{\"chunk\": N, \"interval_ms\": N}}"))?;
    only_keys(obj, &["chunk", "interval_ms"], &format!("\"{kind}\""))?;
    let chunk = obj.get("chunk").ok_or_else(|| format!("\"{kind}\" needs \"chunk\" (bytes per write)"))?;
    let interval = obj.get("interval_ms").ok_or_else(|| format!("\"{kind}\" needs \"interval_ms\""))?;
    Ok((
        usize_of(chunk, &format!("{kind}.chunk"))?,
        Duration::from_millis(uint(interval, &format!("{kind}.interval_ms"))?),
    ))
}

fn header_pair(name: &str, value: &Value) -> Result<(String, String), String> {
    let value = value.as_str().ok_or_else(|| format!("header \"{name}\" must have a string value, got {value}"))?;
    if !http::valid_header(name, value) {
        return Err(format!("header \"{name}\": not a valid header name, or control characters in the value"));
    }
    Ok((name.to_string(), value.to_string()))
}

/// `{"Name": "value"}` or `[["Name", "value"], ...]` (the list keeps order and repeats).
fn headers(v: &Value) -> Result<Vec<(String, String)>, String> {
    match v {
        Value::Object(obj) => obj.iter().map(|(k, v)| header_pair(k, v)).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item.as_array().map(Vec::as_slice) {
                Some([Value::String(k), v]) => header_pair(k, v),
                _ => Err(format!("\"headers\" list items must be [\"Name\", \"value\"], got {item}")),
            })
            .collect(),
        other => Err(format!("\"headers\" must be an object or a list of [name, value] pairs, got {other}")),
    }
}

/// Parses the `"fault"` object.
pub(crate) fn parse_fault(v: &Value) -> Result<Fault, String> {
    let obj = v.as_object().ok_or_else(|| format!("\"fault\" must be an object, got {v}"))?;
    let kinds: Vec<&str> = KINDS.iter().copied().filter(|k| obj.contains_key(*k)).collect();
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => return Err(format!("\"fault\" needs one of: {}", KINDS.join(", "))),
        many => return Err(format!("\"fault\" has several kinds ({}); give exactly one", many.join(", "))),
    };
    let allowed: &[&str] = if kind == "status" { &["status", "retry_after"] } else { &[kind] };
    only_keys(obj, allowed, "\"fault\"")?;
    let arg = &obj[kind];
    Ok(match kind {
        "status" => {
            let retry_after = match obj.get("retry_after") {
                None | Some(Value::Null) => None,
                Some(r) => {
                    Some(u32::try_from(uint(r, "retry_after")?).map_err(|_| "retry_after is too large".to_string())?)
                }
            };
            Fault::Status { code: status_code(arg, "status")?, retry_after }
        }
        "delay_ms" => Fault::Delay(Duration::from_millis(uint(arg, "delay_ms")?)),
        "slow_body" => {
            let (chunk, interval) = pacing(arg, kind)?;
            Fault::SlowBody { chunk, interval }
        }
        "chunked" => {
            let (chunk, interval) = pacing(arg, kind)?;
            Fault::Chunked { chunk, interval }
        }
        "truncate" => Fault::Truncate { after: usize_of(arg, "truncate")? },
        "reset" => is_true(arg, "reset").map(|_| Fault::Reset)?,
        "hang" => is_true(arg, "hang").map(|_| Fault::Hang)?,
        "redirect" => is_true(arg, "redirect").map(|_| Fault::Redirect)?,
        "echo" => Fault::Echo { code: status_code(arg, "echo")? },
        "headers" => Fault::Headers(headers(arg)?),
        _ => Fault::BigBody { size: uint(arg, "big_body")? },
    })
}

/// Parses a `POST /__fault` body.
pub(crate) fn parse_rule(body: &[u8]) -> Result<RuleSpec, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty body: expected JSON {\"match\": \"/v3/base\", \"times\": 3, \"fault\": {...}}".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or_else(|| format!("expected a JSON object, got {v}"))?;
    only_keys(obj, &["match", "times", "fault"], "the rule")?;
    let needle = match obj.get("match") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("\"match\" must be a string, got {other}")),
        None => return Err("missing \"match\" (a substring of the request path; \"/\" matches all)".into()),
    };
    let times = match obj.get("times") {
        None | Some(Value::Null) => None,
        Some(t) => Some(usize_of(t, "times")?),
    };
    let fault = parse_fault(obj.get("fault").ok_or("missing \"fault\"")?)?;
    Ok(RuleSpec { needle, times, fault })
}

fn bad_request(msg: String, corr: String) -> Response {
    json_response(400, json!({"error": msg}), corr)
}

/// The value of query parameter `name` as a `u64`.
fn query_u64(req: &Request, name: &str) -> Option<u64> {
    body::parse_query(&req.query).into_iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse().ok())
}

/// Answers a `/__*` request.
pub(crate) fn handle(state: &State, req: &Request) -> Response {
    let corr = state.correlation_id();
    let allowed: &[&str] = match req.path.as_str() {
        "/__stats" => &["GET", "HEAD"],
        "/__fault" => &["GET", "HEAD", "POST"],
        "/__reset" | "/__version" | "/__latency" | "/__clear" | "/__clock" => &["POST"],
        _ => return json_response(404, json!({"error": "unknown control endpoint"}), corr),
    };
    if !allowed.contains(&req.method.as_str()) {
        return json_response(405, json!({"error": "method not allowed"}), corr).with("Allow", allowed.join(", "));
    }
    match (req.path.as_str(), req.method.as_str()) {
        ("/__stats", _) => json_response(200, state.stats_json(), corr),
        ("/__reset", _) => {
            state.reset();
            json_response(200, json!({"ok": true}), corr)
        }
        ("/__version", _) => match query_u64(req, "v") {
            Some(v) => {
                state.set_version(v);
                json_response(200, json!({"ok": true, "version": v}), corr)
            }
            None => bad_request("expected ?v=<u64>".into(), corr),
        },
        ("/__latency", _) => match query_u64(req, "ms") {
            Some(ms) => {
                state.set_latency(Duration::from_millis(ms));
                json_response(200, json!({"ok": true, "latency_ms": ms}), corr)
            }
            None => bad_request("expected ?ms=<u64>".into(), corr),
        },
        ("/__clock", _) => match query_u64(req, "ms") {
            Some(ms) => {
                state.set_clock_ms(ms);
                json_response(200, json!({"ok": true, "clock_ms": ms}), corr)
            }
            None => bad_request("expected ?ms=<u64> (0: the wall clock)".into(), corr),
        },
        ("/__clear", _) => {
            state.clear_faults();
            json_response(200, json!({"ok": true}), corr)
        }
        ("/__fault", "POST") => match parse_rule(&req.body) {
            Ok(rule) => {
                let shown = rule_json(&rule.needle, rule.times, &rule.fault);
                state.add_rule(&rule.needle, rule.fault, rule.times);
                json_response(200, json!({"ok": true, "rule": shown, "rules": state.rule_count()}), corr)
            }
            Err(msg) => bad_request(msg, corr),
        },
        _ => json_response(200, json!({"rules": state.rules_json()}), corr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Result<RuleSpec, String> {
        parse_rule(s.as_bytes())
    }

    #[test]
    fn parses_every_kind_and_round_trips() {
        let cases = [
            r#"{"status": 503, "retry_after": 2}"#,
            r#"{"status": 500}"#,
            r#"{"delay_ms": 250}"#,
            r#"{"slow_body": {"chunk": 100, "interval_ms": 50}}"#,
            r#"{"chunked": {"chunk": 7, "interval_ms": 0}}"#,
            r#"{"truncate": 123}"#,
            r#"{"reset": true}"#,
            r#"{"hang": true}"#,
            r#"{"redirect": true}"#,
            r#"{"echo": 502}"#,
            r#"{"headers": [["Cache-Control", "no-store"], ["Age", "5"]]}"#,
            r#"{"big_body": 67108864}"#,
        ];
        for fault in cases {
            let body = format!(r#"{{"match": "/v3/base", "times": 3, "fault": {fault}}}"#);
            let r = rule(&body).unwrap_or_else(|e| panic!("{fault}: {e}"));
            assert_eq!(r.needle, "/v3/base");
            assert_eq!(r.times, Some(3));
            let expected: Value = serde_json::from_str(fault).unwrap();
            assert_eq!(fault_json(&r.fault), expected, "{fault}");
        }
        let r = rule(r#"{"match": "/", "fault": {"headers": {"Expires": "0"}}, "times": null}"#).unwrap();
        assert_eq!(r.times, None);
        assert!(matches!(r.fault, Fault::Headers(h) if h == vec![("Expires".to_string(), "0".to_string())]));
        let r = rule(r#"{"match": "x", "fault": {"slow_body": {"chunk": 1, "interval_ms": 20}}}"#).unwrap();
        assert!(matches!(r.fault, Fault::SlowBody { chunk: 1, interval } if interval == Duration::from_millis(20)));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("", "empty body"),
            ("{", "invalid JSON"),
            ("[]", "expected a JSON object"),
            (r#"{"fault": {"reset": true}}"#, "missing \"match\""),
            (r#"{"match": 1, "fault": {"reset": true}}"#, "\"match\" must be a string"),
            (r#"{"match": "/"}"#, "missing \"fault\""),
            (r#"{"match": "/", "fault": {"reset": true}, "tims": 1}"#, "unknown key \"tims\""),
            (r#"{"match": "/", "times": -1, "fault": {"reset": true}}"#, "times must be"),
            (r#"{"match": "/", "fault": {}}"#, "needs one of"),
            (r#"{"match": "/", "fault": {"reset": true, "hang": true}}"#, "several kinds"),
            (r#"{"match": "/", "fault": {"status": 99}}"#, "100..=999"),
            (r#"{"match": "/", "fault": {"status": "503"}}"#, "status must be"),
            (r#"{"match": "/", "fault": {"delay_ms": 5, "retry_after": 1}}"#, "unknown key \"retry_after\""),
            (r#"{"match": "/", "fault": {"reset": false}}"#, "reset must be true"),
            (r#"{"match": "/", "fault": {"slow_body": 5}}"#, "must be an object"),
            (r#"{"match": "/", "fault": {"chunked": {"chunk": 5}}}"#, "needs \"interval_ms\""),
            (r#"{"match": "/", "fault": {"slow_body": {"chunk": 5, "interval_ms": 1, "x": 1}}}"#, "unknown key \"x\""),
            (r#"{"match": "/", "fault": {"headers": {"Bad Name": "v"}}}"#, "not a valid header name"),
            (r#"{"match": "/", "fault": {"headers": {"X": "a\r\nY: b"}}}"#, "control characters"),
            (r#"{"match": "/", "fault": {"headers": [["X"]]}}"#, "list items"),
            (r#"{"match": "/", "fault": {"headers": {"X": 1}}}"#, "string value"),
            (r#"{"match": "/", "fault": {"big_body": 1.5}}"#, "big_body must be"),
        ];
        for (body, needle) in cases {
            let err = rule(body).expect_err(body);
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
