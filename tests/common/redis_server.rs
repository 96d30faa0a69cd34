//! A private `redis-server` for one test: started on a free port of 127.0.0.1 with nothing kept
//! on disk, ready once it says so, killed when dropped. Tests stop, pause (SIGSTOP) and restart
//! it to test faults.

use std::process::Command;
use std::time::Duration;

use super::process::{free_port, Process};
use super::tls::make_certs;

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    /// TLS only (`rediss://`): the folder holding `ca.pem`, `server.pem`, `server.key`.
    tls: Option<std::path::PathBuf>,
    process: Option<Process>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port(), None)
    }

    /// With `requirepass`.
    pub fn with_password(password: &str) -> RedisServer {
        Self::start_on(free_port(), Some(password.to_string()))
    }

    /// TLS only, with a certificate for 127.0.0.1 signed by a CA made in `dir` (`dir/ca.pem`).
    pub fn with_tls(dir: &std::path::Path) -> RedisServer {
        make_certs(dir);
        let mut s = RedisServer { port: free_port(), password: None, tls: Some(dir.to_path_buf()), process: None };
        s.spawn();
        s
    }

    fn start_on(port: u16, password: Option<String>) -> RedisServer {
        let mut s = RedisServer { port, password, tls: None, process: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some(dir) => {
                let f = |name: &str| dir.join(name).to_string_lossy().to_string();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"]);
                cmd.args(["--tls-cert-file", &f("server.pem"), "--tls-key-file", &f("server.key")]);
                cmd.args(["--tls-ca-cert-file", &f("ca.pem")]);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        // `notice`: the level of its "Ready to accept connections".
        cmd.args(["--daemonize", "no", "--loglevel", "notice", "--dir", &std::env::temp_dir().to_string_lossy()]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let process = Process::spawn(cmd);
        process.line_blocking("redis-server ready (apt-get install redis-server)", |l| {
            l.contains("Ready to accept connections")
        });
        self.process = Some(process);
    }

    /// Points a proxy's config at this server. Its deadlines are generous: a busy 2-core
    /// machine misses the 50 ms default now and then, and a timed-out call (rightly) opens the
    /// Redis breaker and leaves the fleet to per-pod decisions, which is not what a test of
    /// sharing looks at. The tests of deadlines (a paused Redis) set their own after this.
    pub fn share(&self, f: &mut tile_proxy::config::FileConfig) {
        f.redis_url = Some(self.url());
        f.redis.timeout = super::dur("3s");
        f.redis.write_timeout = super::dur("3s");
        f.redis.connect_timeout = super::dur("3s");
        // Tests make time pass by moving each pod's ManualClock, which Redis's TIME does not
        // follow: the fleet clock would undo those moves at its next measurement. The tests of
        // the fleet clock (tests/fleet_clock.rs) turn it back on.
        f.redis.fleet_clock = false;
    }

    /// The URL a proxy is configured with.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("{scheme}://127.0.0.1:{}/0", self.port),
        }
    }

    /// A fresh synchronous connection (for the test's own checks).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let c = match &self.tls {
            None => redis::Client::open(self.url())?,
            Some(dir) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let root = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates { client_tls: None, root_cert: Some(root) },
                )?
            }
        };
        c.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// The messages published on `channel` from now on (a test's own subscriber).
    pub async fn subscribe(&self, channel: &str) -> redis::aio::PubSubStream {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut pubsub = client.get_async_pubsub().await.expect("a subscriber connects to the test redis");
        pubsub.subscribe(channel).await.expect("subscribed");
        pubsub.into_on_message()
    }

    /// Runs a command; panics on failure.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = self.connection().expect("connected to the test redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).expect("redis command")
    }

    /// Every key (SCAN) with its value as bytes (strings and hashes).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.connection().expect("connected");
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("keys");
        keys.into_iter()
            .map(|k| {
                let kind: String = redis::cmd("TYPE").arg(&k).query(&mut c).expect("type");
                let value: Vec<u8> = match kind.as_str() {
                    "string" => redis::cmd("GET").arg(&k).query(&mut c).unwrap_or_default(),
                    "hash" => {
                        let all: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap_or_default();
                        all.concat()
                    }
                    _ => Vec::new(),
                };
                (k, value)
            })
            .collect()
    }

    /// Kills the server (SIGKILL): connections drop at once.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port (empty: nothing was kept).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server hangs, connections stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGSTOP);
        }
    }

    /// SIGCONT.
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGCONT);
        }
    }
}

/// Runs `args` on the Redis server (or Sentinel) at `127.0.0.1:port`, on a fresh connection
/// (the cluster and Sentinel harnesses talk to one node at a time).
pub fn cmd_at<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_connection_with_timeout(std::time::Duration::from_secs(2))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut c)
}
