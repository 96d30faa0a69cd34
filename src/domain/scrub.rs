//! Secrets out of upstream bodies: every occurrence of a key is replaced before a body is
//! relayed or stored ([`scrub`]).

use bytes::Bytes;

/// Replaces every occurrence of a secret in `body` with `<redacted>`.
pub fn scrub(body: Bytes, secrets: &[String]) -> Bytes {
    let mut out: Option<Vec<u8>> = None;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let cur = out.as_deref().unwrap_or(&body);
        if !cur.windows(secret.len()).any(|w| w == secret.as_bytes()) {
            continue;
        }
        let mut next = Vec::with_capacity(cur.len());
        let mut i = 0;
        while i < cur.len() {
            if cur[i..].starts_with(secret.as_bytes()) {
                next.extend_from_slice(b"<redacted>");
                i += secret.len();
            } else {
                next.push(cur[i]);
                i += 1;
            }
        }
        out = Some(next);
    }
    out.map(Bytes::from).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed() {
        let body = Bytes::from_static(b"{\"cause\":\"bad /v3/x?apiKey=SECRET1&y=SECRET1 K2\"}");
        let out = scrub(body, &["SECRET1".into(), "K2".into(), String::new()]);
        assert_eq!(&out[..], b"{\"cause\":\"bad /v3/x?apiKey=<redacted>&y=<redacted> <redacted>\"}");
        let clean = Bytes::from_static(b"nothing here");
        assert_eq!(scrub(clean.clone(), &["SECRET1".into()]), clean);
    }
}
