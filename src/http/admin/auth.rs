//! The opening of every `/admin/*` handler ([`admit`]): the caller holds the admin token
//! (`Authorization: Bearer <admin_token>`, compared in constant time), and the request body, if
//! any, is at most [`MAX_BODY`]. Without a token configured the admin API answers 404, as if it
//! did not exist.

use actix_web::http::header;
use actix_web::HttpRequest;
use sha2::{Digest, Sha256};

use crate::http::error::ProxyError;
use crate::http::state::AppState;

/// Largest accepted admin request body: a tile list of 100,000 tiles or a detailed country's
/// GeoJSON outline fits.
pub const MAX_BODY: usize = 16 << 20;

/// Equal in constant time (over hashes, so the length leaks nothing either).
pub fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` when the request may use the admin API and its `body` (if it has one) fits, else the
/// error to answer with.
pub fn admit(req: &HttpRequest, state: &AppState, body: Option<&[u8]>) -> Result<(), ProxyError> {
    let Some(expected) = state.settings.admin_token.as_deref() else {
        return Err(ProxyError::NoAdminApi);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match given {
        Some(t) if token_matches(t, expected) => {}
        Some(_) => return Err(ProxyError::Unauthorized("wrong admin token")),
        None => return Err(ProxyError::Unauthorized("missing `Authorization: Bearer <admin token>`")),
    }
    if body.is_some_and(|b| b.len() > MAX_BODY) {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare() {
        assert!(token_matches("s3cret-token-0123", "s3cret-token-0123"));
        assert!(!token_matches("s3cret-token-0124", "s3cret-token-0123"));
        assert!(!token_matches("", "s3cret-token-0123"));
        assert!(!token_matches("s3cret-token-01234", "s3cret-token-0123"));
    }
}
