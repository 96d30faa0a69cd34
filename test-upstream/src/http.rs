//! Minimal HTTP/1.1 request-head parsing and response-head formatting.
//!
//! Only what the test upstream needs: request line + headers up to [`MAX_HEAD`] bytes,
//! `Content-Length` request bodies (up to [`MAX_BODY`], kept for the control endpoints),
//! keep-alive semantics. Never panics on input.

use std::borrow::Cow;

use bytes::Bytes;

/// Largest request head (request line + headers + blank line) accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (read into [`Request::body`]).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A parsed request head.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    /// `true` for HTTP/1.1, `false` for HTTP/1.0.
    pub(crate) http11: bool,
    /// Header names lowercased, values trimmed, in arrival order.
    pub(crate) headers: Vec<(String, String)>,
    /// `Content-Length` of the request body.
    pub(crate) body_len: usize,
    /// The request body; empty from [`parse_head`], filled in by the connection loop.
    pub(crate) body: Bytes,
}

impl Request {
    /// First value of a header (name must be lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client asked (or the protocol version implies) to close after this exchange.
    pub(crate) fn wants_close(&self) -> bool {
        let tokens = |v: &str, t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        let conn: Vec<&str> = self.headers.iter().filter(|(k, _)| k == "connection").map(|(_, v)| v.as_str()).collect();
        if conn.iter().any(|v| tokens(v, "close")) {
            return true;
        }
        !self.http11 && !conn.iter().any(|v| tokens(v, "keep-alive"))
    }
}

/// Why a request head could not be parsed; each maps to an error status and a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Malformed request line or header: 400.
    Bad,
    /// Head larger than [`MAX_HEAD`]: 431.
    HeadTooLarge,
    /// Body larger than [`MAX_BODY`]: 413.
    BodyTooLarge,
    /// Request body with a transfer coding: 501 (not supported here).
    Unsupported,
}

impl ParseError {
    /// The status answered for this error.
    pub(crate) fn status(self) -> u16 {
        match self {
            ParseError::Bad => 400,
            ParseError::HeadTooLarge => 431,
            ParseError::BodyTooLarge => 413,
            ParseError::Unsupported => 501,
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Tries to parse one request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((request, consumed)))` when a head
/// is complete (`consumed` counts leading blank lines and the head, not the body).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    // RFC 9112 §2.2: ignore at least one empty line before the request line.
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    let rest = &buf[skip..];
    let window = &rest[..rest.len().min(MAX_HEAD)];
    let end = match find_head_end(window) {
        Some(end) => end,
        None if rest.len() >= MAX_HEAD => return Err(ParseError::HeadTooLarge),
        None => return Ok(None),
    };
    let head = std::str::from_utf8(&rest[..end - 4]).map_err(|_| ParseError::Bad)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(ParseError::Bad)?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(ParseError::Bad),
    };
    if !is_token(method) {
        return Err(ParseError::Bad);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(ParseError::Bad),
    };
    let origin = origin_form(target).ok_or(ParseError::Bad)?;
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, q),
        None => (origin, ""),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            return Err(ParseError::Bad); // obsolete line folding
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::Bad)?;
        if !is_token(name) {
            return Err(ParseError::Bad);
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut body_len = 0usize;
    let mut seen_len: Option<usize> = None;
    for (k, v) in &headers {
        if k == "transfer-encoding" {
            return Err(ParseError::Unsupported);
        }
        if k == "content-length" {
            let n: usize = v.parse().map_err(|_| ParseError::Bad)?;
            if seen_len.is_some_and(|s| s != n) {
                return Err(ParseError::Bad);
            }
            seen_len = Some(n);
            body_len = n;
        }
    }
    if body_len > MAX_BODY {
        return Err(ParseError::BodyTooLarge);
    }
    let req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        http11,
        headers,
        body_len,
        body: Bytes::new(),
    };
    Ok(Some((req, skip + end)))
}

/// Reduces a request target to origin form (`/path?query`); absolute-form is accepted.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))?;
    match rest.find('/') {
        Some(i) => Some(&rest[i..]),
        None => Some("/"),
    }
}

/// Whether `name: value` can be written as a response header: `name` is a token, `value` has
/// no control characters other than tab.
pub(crate) fn valid_header(name: &str, value: &str) -> bool {
    is_token(name) && value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Reason phrase for the statuses this server may send.
pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// How the body length is framed in the response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No framing header (204/304).
    None,
}

/// A complete response: status, extra headers and body.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(Cow<'static, str>, String)>,
    pub(crate) body: Bytes,
}

impl Response {
    /// A response with no headers yet.
    pub(crate) fn new(status: u16, body: Bytes) -> Response {
        Response { status, headers: Vec::new(), body }
    }

    /// Adds a header.
    pub(crate) fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((Cow::Borrowed(name), value.into()));
        self
    }

    /// Replaces every header called `name` (case-insensitive) with one `name: value`, or adds
    /// it. The caller checks that name and value are safe to write (see [`valid_header`]).
    pub(crate) fn set(mut self, name: &str, value: &str) -> Response {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((Cow::Owned(name.to_string()), value.to_string()));
        self
    }

    /// Whether this status never carries a body (and so no length).
    pub(crate) fn bodiless(&self) -> bool {
        self.status == 204 || self.status == 304 || (100..200).contains(&self.status)
    }

    /// Natural framing for this response.
    pub(crate) fn framing(&self) -> Framing {
        if self.bodiless() {
            Framing::None
        } else {
            Framing::Length(self.body.len() as u64)
        }
    }

    /// Formats the status line and headers (ending with the blank line).
    pub(crate) fn head(&self, framing: Framing, close: bool) -> Vec<u8> {
        let mut h = String::with_capacity(256);
        h.push_str("HTTP/1.1 ");
        h.push_str(&self.status.to_string());
        h.push(' ');
        h.push_str(reason(self.status));
        h.push_str("\r\nServer: test-upstream\r\n");
        for (k, v) in &self.headers {
            h.push_str(k);
            h.push_str(": ");
            h.push_str(v);
            h.push_str("\r\n");
        }
        match framing {
            Framing::Length(n) => {
                h.push_str("Content-Length: ");
                h.push_str(&n.to_string());
                h.push_str("\r\n");
            }
            Framing::Chunked => h.push_str("Transfer-Encoding: chunked\r\n"),
            Framing::None => {}
        }
        if close {
            h.push_str("Connection: close\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    }
}

/// An HTTP date (`If-Modified-Since`) in Unix seconds; `None` if it is not one.
pub(crate) fn parse_date(v: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(v.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Unix seconds as an HTTP date (`Last-Modified`).
pub(crate) fn format_date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simple_head() {
        let raw = b"\r\nGET /v3/a?b=c HTTP/1.1\r\nHost: x\r\nX-Y:  z \r\n\r\nrest";
        let (req, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/v3/a");
        assert_eq!(req.query, "b=c");
        assert_eq!(req.header("x-y"), Some("z"));
        assert_eq!(&raw[used..], b"rest");
        assert!(!req.wants_close());
    }

    #[test]
    fn incomplete_and_bad() {
        assert!(parse_head(b"GET / HTTP/1.1\r\n").unwrap().is_none());
        assert_eq!(parse_head(b"GARBAGE\r\n\r\n").unwrap_err(), ParseError::Bad);
        assert_eq!(parse_head(b"GET / HTTP/2\r\n\r\n").unwrap_err(), ParseError::Bad);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n").unwrap_err(), ParseError::Bad);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err(), ParseError::Bad);
        let big = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(parse_head(&big).unwrap_err(), ParseError::HeadTooLarge);
    }

    #[test]
    fn absolute_form_and_http10() {
        let (req, _) = parse_head(b"GET http://h:1/x?y HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(req.path, "/x");
        assert_eq!(req.query, "y");
        assert!(req.wants_close());
        let (req, _) = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(!req.wants_close());
    }

    #[test]
    fn set_replaces_headers_and_validity() {
        let r = Response::new(200, Bytes::new()).with("Cache-Control", "a").with("ETag", "x").set("cache-control", "b");
        let head = String::from_utf8(r.head(r.framing(), false)).unwrap();
        assert!(head.contains("ETag: x\r\ncache-control: b\r\n"), "{head}");
        assert!(!head.contains("Cache-Control: a"));
        assert!(valid_header("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"));
        assert!(!valid_header("Bad Name", "v"));
        assert!(!valid_header("X", "a\r\nInjected: 1"));
    }
}
