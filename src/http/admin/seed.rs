//! `POST /admin/seed`, `GET /admin/seed/{id}` and `GET /admin/seed`: seed jobs run through a
//! pod's own tile service and the worker's upstream client (the same run loop as the CLI).
//!
//! With Redis the jobs belong to the fleet ([`crate::seed::fleet`]): stored in Redis, answered
//! and listed by any pod, taken over from their last checkpoint when their pod dies. Without
//! Redis (or while it does not answer when a job starts) a job is the pod's own, as long as the
//! pod lives ([`crate::seed::jobs`], at most [`MAX_JOBS`], the oldest finished one dropped for a
//! new one).

use std::sync::Arc;
use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::http::admin::auth::admit;
use crate::http::error::ProxyError;
use crate::http::state::State;
use crate::seed::fetchers::{self, Direct};
use crate::seed::jobs::{state_of, ApiJob, MAX_JOBS};
use crate::seed::run::{self, Progress, Stop};
use crate::seed::state_file::Done;
use crate::seed::tiles::JobError;

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
    let spec = body.clone();
    // Covering a large GeoJSON area takes a while: off the worker's thread.
    let checked = web::block(move || crate::seed::spec::build(&body))
        .await
        .unwrap_or_else(|e| Err(JobError { field: "body", message: format!("not computed: {e}") }))
        .and_then(|(job, c)| fetchers::check_index(&state.settings, &job.params.index).map(|()| (job, c)));
    let (mut job, concurrency) = match checked {
        Ok(checked) => checked,
        Err(e) => return invalid(&e),
    };
    let id = crate::store::redis::token()[..16].to_string();
    let answer = |scope: &str, total: u64| {
        let body = json!({"id": id, "total": total, "status_url": format!("/admin/seed/{id}"), "scope": scope});
        HttpResponse::Accepted().insert_header(("Cache-Control", "no-store")).json(body)
    };
    if let Some(fleet) = &state.fleet_seeds {
        let total = job.total;
        // The body parsed as JSON: it is UTF-8.
        let spec = String::from_utf8_lossy(&spec);
        match fleet.start(&id, &spec, job, concurrency, client.get_ref().clone()).await {
            Ok(()) => {
                tracing::info!(%id, tiles = total, "fleet seed job started");
                return answer("fleet", total);
            }
            Err((e, back)) => {
                tracing::warn!(%id, error = %e, "redis did not answer: the seed job runs on this pod only");
                job = back;
            }
        }
    }
    let progress = Arc::new(Progress::new(job.total, 0, indicatif::ProgressBar::hidden()));
    let entry = Arc::new(ApiJob { id: id.clone(), index: job.params.index.clone(), progress: progress.clone() });
    if !state.seeds.add(entry) {
        return ProxyError::TooManyJobs(MAX_JOBS).response();
    }
    tracing::info!(%id, index = %job.params.index, tiles = job.total, "seed job started");
    let fetcher = Direct { service: state.tiles.clone(), client: client.get_ref().clone() };
    let total = job.total;
    // awc is not `Send`: the job runs on this worker.
    let job_id = id.clone();
    actix_web::rt::spawn(async move {
        let mut done = Done::default();
        let ending = run::run(&job, &fetcher, concurrency, &mut done, &progress, &Stop::default(), |_| {}).await;
        let c = progress.counts();
        tracing::info!(id = %job_id, ?ending, fetched = c.fetched, cached = c.cached, failed = c.failed, "seed job ended");
    });
    answer("pod", total)
}

/// `GET /admin/seed/{id}`: the job's progress, from Redis (any pod's job) or this pod's own.
pub async fn api_status(req: HttpRequest, id: web::Path<String>, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, None) {
        return e.response();
    }
    let ok = |doc: Value| HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(doc);
    let mut unknown = format!("no seed job `{id}` on this pod");
    if let Some(fleet) = &state.fleet_seeds {
        match fleet.status(&id).await {
            Ok(Some(doc)) => return ok(doc),
            Ok(None) => unknown = format!("no seed job `{id}`"),
            Err(e) => unknown = format!("no seed job `{id}` on this pod (redis: {e})"),
        }
    }
    match state.seeds.get(&id) {
        Some(job) => ok(status(&job)),
        None => ProxyError::Missing(unknown).response(),
    }
}

/// `GET /admin/seed`: every job, newest first: the fleet's (with Redis) and this pod's own.
pub async fn api_list(req: HttpRequest, state: State) -> HttpResponse {
    let state = state.get_ref();
    if let Err(e) = admit(&req, state, None) {
        return e.response();
    }
    let mut jobs: Vec<Value> = state.seeds.list().iter().map(|j| status(j)).collect();
    let scope = match &state.fleet_seeds {
        None => "pod",
        Some(fleet) => match fleet.list().await {
            Ok(fleet_jobs) => {
                jobs.extend(fleet_jobs);
                "fleet"
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis did not answer: listing this pod's seed jobs only");
                "pod"
            }
        },
    };
    jobs.sort_by(|a, b| b["started_at"].as_str().cmp(&a["started_at"].as_str()));
    HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(json!({"scope": scope, "jobs": jobs}))
}

fn status(job: &ApiJob) -> Value {
    let p = &job.progress;
    let c = p.counts();
    let ended = p.ended();
    let (state, message) = state_of(ended.as_ref().map(|(e, _)| e), c.failed, &job.index);
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
        "scope": "pod",
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn invalid(e: &JobError) -> HttpResponse {
    ProxyError::Invalid { field: Some(e.field), message: e.message.clone() }.response()
}
