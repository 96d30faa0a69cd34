//! `POST /admin/seed` and `GET /admin/seed/{id}`: seed jobs inside a running pod, through its
//! own tile service and the worker's upstream client (the same run loop as the CLI; no
//! resume state: a job lives as long as the pod). The pod keeps at most [`MAX_JOBS`] jobs,
//! dropping the oldest finished one for a new one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use crate::domain::geo::Shape;
use crate::http::admin::auth::admit;
use crate::http::error::ProxyError;
use crate::http::state::State;
use crate::seed::fetchers::{self, Direct};
use crate::seed::jobs::{ApiJob, MAX_JOBS};
use crate::seed::run::{self, Ending, Progress, Stop, StopReason};
use crate::seed::state_file::Done;
use crate::seed::tiles::{Job, JobError, JobParams, Kind, DEFAULT_MAX_TILES};

/// Default and highest tiles fetched at a time by one job.
const DEFAULT_CONCURRENCY: u64 = 8;
const MAX_CONCURRENCY: u64 = 64;

/// `POST /admin/seed`: checks the job, starts it on this worker, answers 202 with its id.
pub async fn api_start(
    req: HttpRequest,
    body: web::Bytes,
    state: State,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, Some(&body)) {
        return e.response();
    }
    // Covering a large GeoJSON area takes a while: off the worker's thread.
    let checked = web::block(move || {
        parse_body(&body).and_then(|(params, concurrency)| Ok((Job::new(params, DEFAULT_MAX_TILES)?, concurrency)))
    })
    .await
    .unwrap_or_else(|e| Err(JobError { field: "body", message: format!("not computed: {e}") }))
    .and_then(|(job, c)| fetchers::check_index(&state.settings, &job.params.index).map(|()| (job, c)));
    let (job, concurrency) = match checked {
        Ok(checked) => checked,
        Err(e) => return invalid(&e),
    };
    let id = crate::store::redis::token()[..16].to_string();
    let progress = Arc::new(Progress::new(job.total, 0, indicatif::ProgressBar::hidden()));
    let entry = Arc::new(ApiJob { id: id.clone(), index: job.params.index.clone(), progress: progress.clone() });
    if !state.seeds.add(entry) {
        return ProxyError::TooManyJobs(MAX_JOBS).response();
    }
    tracing::info!(%id, index = %job.params.index, tiles = job.total, "seed job started");
    let fetcher = Direct { service: state.tiles.clone(), client: client.get_ref().clone() };
    let answer = json!({"id": id, "total": job.total, "status_url": format!("/admin/seed/{id}")});
    // awc is not `Send`: the job runs on this worker.
    actix_web::rt::spawn(async move {
        let mut done = Done::default();
        let ending = run::run(&job, &fetcher, concurrency, &mut done, &progress, &Stop::default(), |_| {}).await;
        let c = progress.counts();
        tracing::info!(id = %id, ?ending, fetched = c.fetched, cached = c.cached, failed = c.failed, "seed job ended");
    });
    HttpResponse::Accepted().insert_header(("Cache-Control", "no-store")).json(answer)
}

/// `GET /admin/seed/{id}`: the job's progress.
pub async fn api_status(req: HttpRequest, id: web::Path<String>, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, None) {
        return e.response();
    }
    match state.seeds.get(&id) {
        Some(job) => HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(status(&job)),
        None => ProxyError::Missing(format!("no seed job `{id}` on this pod")).response(),
    }
}

fn status(job: &ApiJob) -> Value {
    let p = &job.progress;
    let c = p.counts();
    let ended = p.ended();
    let (state, message) = match &ended {
        None => ("running", None),
        Some((Ending::Completed, _)) if c.failed == 0 => ("done", None),
        Some((Ending::Completed, _)) => ("failed", Some(format!("{} tiles failed after retries", c.failed))),
        Some((Ending::Stopped(StopReason::BudgetExhausted { window, retry_after_secs }), _)) => (
            "budget_exhausted",
            Some(format!(
                "index {} has spent its upstream budget for the {window}; it resets in {retry_after_secs} s",
                job.index
            )),
        ),
        Some((Ending::Stopped(StopReason::Interrupted), _)) => ("interrupted", Some("stopped".to_string())),
    };
    let rate = p.rate();
    let left = p.total.saturating_sub(c.done + c.failed);
    let eta = (ended.is_none() && rate > 0.0).then(|| (left as f64 / rate).ceil() as u64);
    json!({
        "id": job.id,
        "index": job.index,
        "state": state,
        "total": p.total,
        "done": c.done,
        "fetched": c.fetched,
        "cached": c.cached,
        "failed": c.failed,
        "started_at": rfc3339(p.started_at),
        "finished_at": ended.map(|(_, at)| rfc3339(at)),
        "tiles_per_second": (rate * 10.0).round() / 10.0,
        "eta_seconds": eta,
        "message": message,
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn invalid(e: &JobError) -> HttpResponse {
    ProxyError::Invalid { field: Some(e.field), message: e.message.clone() }.response()
}

/// The job a request body describes, and its concurrency; every problem names its field.
fn parse_body(body: &[u8]) -> Result<(JobParams, usize), JobError> {
    let bad = |field: &'static str, message: &str| JobError { field, message: message.to_string() };
    let value: Value = serde_json::from_slice(body).map_err(|e| bad("body", &format!("not JSON: {e}")))?;
    let Value::Object(o) = value else {
        return Err(bad("body", "expected a JSON object"));
    };
    const FIELDS: &[&str] =
        &["index", "bbox", "geojson", "zoom", "resource", "format", "style", "size", "params", "layer", "concurrency"];
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(JobError { field: "body", message: format!("unknown field `{k}` (known: {})", FIELDS.join(", ")) });
    }
    let index = string(&o, "index")?.ok_or_else(|| bad("index", "required"))?;
    let (bbox, shape) = match (o.get("bbox"), o.get("geojson")) {
        (Some(_), Some(_)) => return Err(bad("geojson", "give bbox or geojson, not both")),
        (None, Some(geojson)) => {
            let shape = Shape::from_geojson(geojson.clone()).map_err(|e| bad("geojson", &e.0))?;
            (shape.bounds(), Some(shape))
        }
        (Some(bbox), None) => {
            let bbox: Vec<f64> = bbox
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| bad("bbox", "must be [west, south, east, north] in degrees"))?;
            let bbox =
                <[f64; 4]>::try_from(bbox).map_err(|_| bad("bbox", "must be 4 numbers: [west, south, east, north]"))?;
            (bbox, None)
        }
        (None, None) => return Err(bad("bbox", "required: [west, south, east, north], or geojson: an area")),
    };
    let zoom = zoom(o.get("zoom").ok_or_else(|| bad("zoom", "required: [min, max] or one zoom"))?)?;
    let mut params = match o.get("params") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(p)) => p
            .iter()
            .map(|(k, v)| Ok((k.clone(), scalar(v).ok_or_else(|| bad("params", "values must be strings or numbers"))?)))
            .collect::<Result<_, JobError>>()?,
        Some(_) => return Err(bad("params", "must be an object of query parameters")),
    };
    for field in ["style", "size"] {
        if let Some(v) = o.get(field).filter(|v| !v.is_null()) {
            params.insert(field.to_string(), scalar(v).ok_or_else(|| bad(field, "must be a string or number"))?);
        }
    }
    let kind = match string(&o, "layer")? {
        Some(layer) => {
            if ["resource", "format", "style", "size"].iter().any(|f| o.contains_key(*f)) {
                return Err(bad("layer", "a vector job (layer) takes no resource, format, style or size"));
            }
            Kind::Vector { layer }
        }
        None => Kind::Raster {
            resource: string(&o, "resource")?.unwrap_or_else(|| "base".into()),
            format: string(&o, "format")?.unwrap_or_else(|| "png".into()),
        },
    };
    let concurrency = match o.get("concurrency") {
        None | Some(Value::Null) => DEFAULT_CONCURRENCY,
        Some(v) => v
            .as_u64()
            .filter(|c| (1..=MAX_CONCURRENCY).contains(c))
            .ok_or_else(|| bad("concurrency", &format!("must be an integer from 1 to {MAX_CONCURRENCY}")))?,
    };
    Ok((JobParams { index, bbox, shape, zoom, kind, params }, concurrency as usize))
}

/// A string field; `None` when absent or null.
fn string(o: &Map<String, Value>, field: &'static str) -> Result<Option<String>, JobError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JobError { field, message: "must be a string".into() }),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `[min, max]`, `[z]` or `z`.
fn zoom(v: &Value) -> Result<(u8, u8), JobError> {
    let z = |v: &Value| v.as_u64().and_then(|z| u8::try_from(z).ok());
    let pair = match v {
        Value::Array(a) if a.len() == 2 => z(&a[0]).zip(z(&a[1])),
        Value::Array(a) if a.len() == 1 => z(&a[0]).map(|z| (z, z)),
        v => z(v).map(|z| (z, z)),
    };
    pair.ok_or_else(|| JobError { field: "zoom", message: "must be [min, max] or one zoom, integers".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> &'static str {
        parse_body(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn a_body_parses_into_the_job_and_problems_name_their_field() {
        let (p, c) = parse_body(
            br#"{"index":"a","bbox":[1,2,3,4],"zoom":[3,5],"style":"lite.day","size":512,"params":{"lang":"de"},"concurrency":4}"#,
        )
        .unwrap();
        assert_eq!((p.index.as_str(), p.bbox, p.zoom, c), ("a", [1.0, 2.0, 3.0, 4.0], (3, 5), 4));
        assert_eq!(p.kind, Kind::Raster { resource: "base".into(), format: "png".into() });
        assert_eq!(p.params.get("size").map(String::as_str), Some("512"));
        assert_eq!(p.params.get("lang").map(String::as_str), Some("de"));
        let (p, _) = parse_body(br#"{"index":"a","bbox":[1,2,3,4],"zoom":7,"layer":"core"}"#).unwrap();
        assert_eq!((p.zoom, p.kind), ((7, 7), Kind::Vector { layer: "core".into() }));

        assert_eq!(field("[]"), "body");
        assert_eq!(field("{"), "body");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3,4],"zoom":3,"colour":1}"#), "body");
        assert_eq!(field(r#"{"bbox":[1,2,3,4],"zoom":3}"#), "index");
        assert_eq!(field(r#"{"index":7,"bbox":[1,2,3,4],"zoom":3}"#), "index");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3],"zoom":3}"#), "bbox");
        assert_eq!(field(r#"{"index":"a","bbox":"1,2,3,4","zoom":3}"#), "bbox");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3,4]}"#), "zoom");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3,4],"zoom":[1,2,3]}"#), "zoom");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3,4],"zoom":3,"concurrency":0}"#), "concurrency");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3,4],"zoom":3,"layer":"base","style":"x"}"#), "layer");
        assert_eq!(field(r#"{"index":"a","bbox":[1,2,3,4],"zoom":3,"params":[]}"#), "params");
        let square = r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}"#;
        let (p, _) = parse_body(format!(r#"{{"index":"a","geojson":{square},"zoom":[3,5]}}"#).as_bytes()).unwrap();
        assert_eq!((p.bbox, p.shape.is_some()), ([0.0, 0.0, 1.0, 1.0], true));
        assert_eq!(field(&format!(r#"{{"index":"a","geojson":{square},"bbox":[1,2,3,4],"zoom":3}}"#)), "geojson");
        assert_eq!(field(r#"{"index":"a","geojson":{"type":"Point","coordinates":[1,2]},"zoom":3}"#), "geojson");
    }
}
