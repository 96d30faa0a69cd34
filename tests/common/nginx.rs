//! A private nginx (Debian's `/usr/sbin/nginx`) for one test: TLS on a free port of 127.0.0.1
//! with the certificate of [`super::tls::make_certs`], HTTP/2 offered by ALPN or not, proxying
//! everything to a test upstream over plain HTTP. Its access log says, per request, which
//! protocol and which connection (`$connection`, the connection's serial number) carried it.
//!
//! One process (`master_process off`): killing it on drop leaves nothing behind (a killed
//! master's workers would live on), and `$connection` names each client connection once. Ready
//! once it has printed its system facts (`getrlimit(...)`), which nginx does after its sockets
//! are listening.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{free_port, Process};
use super::tls::make_certs;
use super::Upstream;

/// The binary (Debian's package; `scripts/install-deps.sh` installs it).
pub const NGINX: &str = "/usr/sbin/nginx";

pub struct Nginx {
    pub port: u16,
    access_log: PathBuf,
    /// The CA that signed nginx's certificate: the proxy must trust it.
    pub ca_file: PathBuf,
    _process: Process,
}

/// One access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `$server_protocol`: `HTTP/2.0`, `HTTP/1.1`.
    pub protocol: String,
    /// `$connection`: the client connection's serial number.
    pub connection: u64,
    pub status: u16,
    /// `$uri`: the path, without the query (which holds the key).
    pub path: String,
}

impl Nginx {
    /// nginx in front of `upstream`, with its files in `dir`; `http2`: offer `h2` by ALPN.
    pub async fn start(dir: &Path, upstream: &Upstream, http2: bool) -> Nginx {
        make_certs(dir);
        // A port free a moment ago may be taken before nginx binds it: then try another.
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, config(dir, port, upstream, http2)).expect("nginx.conf written");
            let mut cmd = Command::new(NGINX);
            cmd.arg("-p").arg(dir).arg("-c").arg(&conf).args(["-e", "stderr"]);
            let process = Process::spawn(cmd);
            let line = process
                .line("nginx listening, or failing", |l| l.contains("getrlimit(") || l.contains("[emerg]"))
                .await;
            if line.contains("getrlimit(") {
                return Nginx {
                    port,
                    access_log: dir.join("access.log"),
                    ca_file: dir.join("ca.pem"),
                    _process: process,
                };
            }
            assert!(line.contains("Address already in use"), "nginx did not start: {line}");
        }
        panic!("nginx found no free port in 3 tries");
    }

    /// Its base URL, as the proxy's upstream.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Every request logged so far (nginx writes each line when the request ends).
    pub fn log(&self) -> Vec<Logged> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f.len(), 4, "access line {l:?}");
                Logged {
                    protocol: f[0].to_string(),
                    connection: f[1].parse().expect("$connection"),
                    status: f[2].parse().expect("$status"),
                    path: f[3].to_string(),
                }
            })
            .collect()
    }
}

fn config(dir: &Path, port: u16, upstream: &Upstream, http2: bool) -> String {
    let d = dir.display();
    // `listen ... http2` (nginx 1.22, Debian 12); nginx 1.25.1+ still accepts it (with a
    // warning) besides its newer `http2 on;`.
    let h2 = if http2 { " http2" } else { "" };
    let up = upstream.addr();
    format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    log_format tp '$server_protocol $connection $status $uri';
    access_log {d}/access.log tp;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl{h2};
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        keepalive_timeout 60s;
        location / {{
            proxy_pass http://{up};
            proxy_http_version 1.1;
        }}
    }}
}}
"
    )
}
