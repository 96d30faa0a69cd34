//! A private `redis-server` for one test: started on a free port of 127.0.0.1 with nothing kept
//! on disk, killed when dropped. Tests stop, pause (SIGSTOP) and restart it to test faults.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port(), None)
    }

    /// With `requirepass`.
    pub fn with_password(password: &str) -> RedisServer {
        Self::start_on(free_port(), Some(password.to_string()))
    }

    fn start_on(port: u16, password: Option<String>) -> RedisServer {
        let mut s = RedisServer { port, password, child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        cmd.args(["--daemonize", "no", "--loglevel", "warning", "--dir", &std::env::temp_dir().to_string_lossy()]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL a proxy is configured with.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// A fresh synchronous connection (for the test's own checks).
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::open(self.url())?;
        c.get_connection_with_timeout(Duration::from_secs(2))
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was kept).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill").args([sig, &c.id().to_string()]).status().map(|s| s.success());
            assert_eq!(ok.ok(), Some(true), "kill {sig}");
        }
    }

    /// SIGSTOP: the server hangs, connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
