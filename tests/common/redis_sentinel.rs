//! A private Redis primary, its replica and 3 Sentinels for one test (`redis-server` and
//! `redis-server --sentinel`, on free ports of 127.0.0.1, nothing kept but the Sentinels' own
//! config files in a temporary folder), ready once the replica is in sync and every Sentinel
//! knows the replica and the two other Sentinels. Killed when dropped. A test SIGKILLs the
//! primary and waits for the Sentinels to promote the replica (`down-after-milliseconds` 1 s).

use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{free_port, Process};

/// The name the Sentinels monitor the primary under.
pub const MASTER: &str = "tp-primary";

pub struct RedisSentinel {
    /// The primary at start, then its replica.
    servers: Vec<(u16, Option<Process>)>,
    sentinels: Vec<(u16, Process)>,
    _dir: tempfile::TempDir,
}

/// A redis-server (or, with `conf`, a Sentinel) on a free port, again on another if that one was
/// taken before it bound it. `args` get the port as `{port}`.
fn spawn_ready(conf: Option<&std::path::Path>, args: &[&str], ready: &str) -> (u16, Process) {
    let mut output = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = conf {
            cmd.arg(conf).arg("--sentinel");
        }
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
        cmd.args(["--daemonize", "no", "--loglevel", "notice"]);
        cmd.args(args);
        let p = Process::spawn(cmd);
        match p.try_line_blocking(ready, |l| l.contains(ready)) {
            Ok(_) => return (port, p),
            Err(out) => output = out,
        }
    }
    panic!("redis-server did not start (apt-get install redis-server):\n{output}");
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().expect("a folder for the sentinels");
        let tmp = std::env::temp_dir().to_string_lossy().to_string();
        let plain = ["--save", "", "--appendonly", "no", "--dir", tmp.as_str()];
        let (primary, p) = spawn_ready(None, &plain, "Ready to accept connections");
        let primary_s = primary.to_string();
        let mut replica_args = plain.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", primary_s.as_str()]);
        let (replica, r) = spawn_ready(None, &replica_args, "Ready to accept connections");
        let servers = vec![(primary, Some(p)), (replica, Some(r))];
        let mut sentinels = Vec::new();
        for i in 0..3 {
            // Each Sentinel rewrites its own file: one each.
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "dir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("sentinel.conf");
            sentinels.push(spawn_ready(Some(&conf), &[], "+monitor master"));
        }
        let s = RedisSentinel { servers, sentinels, _dir: dir };
        s.wait_until("the replica in sync and every sentinel knowing the others", |s| {
            let synced = s
                .cmd_on::<String>(replica, &["INFO", "replication"])
                .is_ok_and(|r| r.contains("master_link_status:up"));
            synced
                && s.sentinels.iter().all(|(p, _)| {
                    let others = s.cmd_on::<Vec<redis::Value>>(*p, &["SENTINEL", "SENTINELS", MASTER]);
                    let replicas = s.cmd_on::<Vec<redis::Value>>(*p, &["SENTINEL", "REPLICAS", MASTER]);
                    others.is_ok_and(|o| o.len() == 2) && replicas.is_ok_and(|r| r.len() == 1)
                })
        });
        s
    }

    /// The Sentinels' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|(p, _)| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// Points a proxy's config at these Sentinels, with the generous deadlines of
    /// [`super::redis_server::RedisServer::share`].
    pub fn share(&self, f: &mut tile_proxy::config::FileConfig) {
        f.redis_mode = tile_proxy::config::RedisMode::Sentinel;
        f.redis_nodes = self.urls();
        f.redis_master_name = Some(MASTER.into());
        f.redis.timeout = super::dur("3s");
        f.redis.write_timeout = super::dur("3s");
        f.redis.connect_timeout = super::dur("3s");
        // Pod time is moved by each pod's manual clock: as in RedisServer::share, the fleet
        // clock (re-measured from Redis TIME every tick) would undo those moves.
        f.redis.fleet_clock = false;
    }

    /// Runs a command on the server or sentinel at `port`.
    pub fn cmd_on<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> redis::RedisResult<T> {
        super::redis_server::cmd_at(port, args)
    }

    /// The primary's port, as the first Sentinel that answers names it.
    pub fn primary(&self) -> u16 {
        for (p, _) in &self.sentinels {
            if let Ok((_, port)) = self.cmd_on::<(String, u16)>(*p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]) {
                return port;
            }
        }
        panic!("no sentinel answers");
    }

    /// Every key on the server at `port`.
    pub fn keys_on(&self, port: u16) -> Vec<String> {
        self.cmd_on::<Vec<String>>(port, &["KEYS", "*"]).unwrap_or_default()
    }

    /// SIGKILLs the primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary();
        let (_, process) = self.servers.iter_mut().find(|(p, _)| *p == port).expect("a server of this test");
        if let Some(mut p) = process.take() {
            p.kill();
        }
        port
    }

    fn wait_until(&self, what: &str, done: impl Fn(&RedisSentinel) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
