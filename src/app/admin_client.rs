//! The admin API from the command line: one request to a running proxy's `/admin/*` with the
//! admin token, its JSON answer or a message naming the URL and what went wrong. Used by
//! `tile-proxy stats` and `tile-proxy purge`.

use std::time::Duration;

use actix_web::http::header;

/// `GET` (without `body`) or `POST` (with it) `base` + `path`; the answer's JSON on a 2xx.
pub fn call(
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let token = token.map(str::to_string);
    actix_web::rt::System::new().block_on(async move {
        // A purge of a large area is computed before the answer: allow for it.
        let client = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
        let mut req = match body {
            Some(_) => client.post(&url),
            None => client.get(&url),
        };
        if let Some(t) = &token {
            req = req.insert_header((header::AUTHORIZATION, format!("Bearer {t}")));
        }
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| format!("{url}: {e}"))?;
        let body = res.body().limit(64 << 20).await.map_err(|e| format!("{url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("{url} answered {}: {}", res.status(), String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    })
}
