//! `tile-proxy healthcheck`: a container's `HEALTHCHECK` without curl in the image. One
//! blocking HTTP/1.1 GET (`/live` on the configured port by default) with a deadline; exit
//! status 0 when it answers 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where to probe: `url` if given, else `/live` on `listen`'s port (an unspecified listen
/// address such as `0.0.0.0` is probed on the loopback).
pub fn target(url: Option<&str>, listen: Option<&str>) -> Result<(String, String), String> {
    if let Some(url) = url {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("`{url}`: only http:// URLs"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        return Ok((host.to_string(), path.to_string()));
    }
    let listen = listen.unwrap_or("0.0.0.0:8080");
    let addr: SocketAddr = listen.parse().map_err(|_| format!("listen address `{listen}` is not host:port"))?;
    let host = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => format!("127.0.0.1:{}", addr.port()),
            SocketAddr::V6(_) => format!("[::1]:{}", addr.port()),
        }
    } else {
        addr.to_string()
    };
    Ok((host, "/live".to_string()))
}

/// GETs `path` from `host` within `timeout`; `Ok` with the status line on a 200.
pub fn probe(host: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{host}: {e}"))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    stream.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: tile-proxy-healthcheck\r\n\r\n"
    )
    .map_err(|e| format!("{host}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        stream.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{host}{path}: {e}")),
        }
        if head.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(line),
        _ => Err(format!("{host}{path} answered `{line}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(target(None, None).unwrap(), ("127.0.0.1:8080".into(), "/live".into()));
        assert_eq!(target(None, Some("0.0.0.0:9000")).unwrap().0, "127.0.0.1:9000");
        assert_eq!(target(None, Some("[::]:9000")).unwrap().0, "[::1]:9000");
        assert_eq!(target(None, Some("10.1.2.3:80")).unwrap().0, "10.1.2.3:80");
        assert_eq!(target(Some("http://h:1/ready"), None).unwrap(), ("h:1".into(), "/ready".into()));
        assert!(target(Some("https://h/"), None).is_err());
        assert!(target(None, Some("nonsense")).is_err());
    }

    #[test]
    fn a_closed_port_is_unhealthy() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(probe(&format!("127.0.0.1:{port}"), "/live", Duration::from_millis(500)).is_err());
    }
}
