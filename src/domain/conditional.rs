//! Conditional requests (RFC 9110 §13), as one pure rule: does a client's `If-None-Match` /
//! `If-Modified-Since` make a GET or HEAD answer 304 for a representation with this ETag and
//! `Last-Modified`? Table-tested; `http::conditional` reads the headers and asks here.
//!
//! The precedence is RFC 9110 §13.2.2's: when `If-None-Match` is present it alone decides (a
//! weak comparison, `*` matching any representation) and `If-Modified-Since` is ignored;
//! otherwise a valid `If-Modified-Since` no earlier than `Last-Modified` means "not modified".
//! An invalid date, or a representation without a date, never does.

/// True when the answer is 304 Not Modified.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<u64>,
) -> bool {
    if let Some(inm) = if_none_match {
        return etag.is_some_and(|etag| etag_matches(inm, etag));
    }
    match (if_modified_since.and_then(http_date_secs), last_modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// `If-None-Match`'s weak comparison: `*`, or one of its tags equal to `etag` with any `W/`
/// prefix dropped.
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let etag = strip(etag);
    if_none_match.split(',').any(|c| c.trim() == "*" || strip(c) == etag)
}

/// An HTTP date (`Last-Modified`, `If-Modified-Since`) in Unix seconds; `None` when it is not
/// one (RFC 9110: an invalid `If-Modified-Since` is ignored).
pub fn http_date_secs(v: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Unix seconds as an HTTP date (`Sat, 11 Dec 2021 19:43:31 GMT`).
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: u64 = 1_639_251_811; // Sat, 11 Dec 2021 19:43:31 GMT
    const AT: &str = "Sat, 11 Dec 2021 19:43:31 GMT";
    const BEFORE: &str = "Sat, 11 Dec 2021 19:43:30 GMT";
    const AFTER: &str = "Sun, 12 Dec 2021 00:00:00 GMT";

    #[test]
    fn precedence_table() {
        let tag = Some("\"v1\"");
        // (If-None-Match, If-Modified-Since, ETag, Last-Modified, 304?)
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<u64>, bool);
        let cases: &[Case] = &[
            (None, None, tag, Some(LM), false),
            // If-None-Match alone.
            (Some("\"v1\""), None, tag, Some(LM), true),
            (Some("W/\"v1\""), None, tag, Some(LM), true),
            (Some("\"v0\", \"v1\""), None, tag, Some(LM), true),
            (Some("*"), None, tag, Some(LM), true),
            (Some("\"v0\""), None, tag, Some(LM), false),
            (Some("\"v1\""), None, None, Some(LM), false),
            // If-Modified-Since alone.
            (None, Some(AT), tag, Some(LM), true),
            (None, Some(AFTER), tag, Some(LM), true),
            (None, Some(BEFORE), tag, Some(LM), false),
            (None, Some("yesterday"), tag, Some(LM), false),
            (None, Some(AT), tag, None, false),
            (None, Some("Saturday, 11-Dec-21 19:43:31 GMT"), None, Some(LM), true), // RFC 850 form
            // Both: If-None-Match decides, If-Modified-Since is ignored (RFC 9110 13.2.2).
            (Some("\"v1\""), Some(BEFORE), tag, Some(LM), true),
            (Some("\"v0\""), Some(AFTER), tag, Some(LM), false),
            (Some("\"v0\""), Some(AT), tag, Some(LM), false),
            (Some("*"), Some(BEFORE), tag, Some(LM), true),
        ];
        for &(inm, ims, etag, lm, want) in cases {
            assert_eq!(not_modified(inm, ims, etag, lm), want, "INM {inm:?} IMS {ims:?} ETag {etag:?} LM {lm:?}");
        }
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(http_date(LM), AT);
        assert_eq!(http_date_secs(AT), Some(LM));
        assert_eq!(http_date_secs(" Sat, 11 Dec 2021 19:43:31 GMT "), Some(LM));
        assert_eq!(http_date_secs("12345"), None);
    }
}
