//! A private Redis Cluster for one test: 3 primaries, each with one replica (6
//! `redis-server --cluster-enabled yes` processes on free ports of 127.0.0.1, nothing kept on
//! disk but each node's `nodes.conf` in a temporary folder), joined by `redis-cli --cluster
//! create ... --cluster-replicas 1`, ready once every node says `cluster_state:ok` and every
//! replica is in sync. Killed when dropped. A test kills one primary (SIGKILL) and waits for its
//! replica to take over (`cluster-node-timeout` 1 s).

use std::process::Command;
use std::time::{Duration, Instant};

use super::process::{free_port, Process};

/// How long a node may be unreachable before the others fail it over.
const NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

struct Node {
    port: u16,
    process: Option<Process>,
}

/// One line of `CLUSTER NODES`, as far as the tests need it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// Slot ranges (`0-5460`) of a primary.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Six nodes, three primaries with a replica each; panics if they do not form a cluster.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("a folder for the cluster");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node folder");
            nodes.push(start_node(&node_dir));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_until("the cluster formed", |c| c.healthy(3, 3));
        cluster
    }

    /// The seed URLs a proxy is configured with (every node).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// Points a proxy's config at this cluster, with the generous deadlines of
    /// [`super::redis_server::RedisServer::share`].
    pub fn share(&self, f: &mut tile_proxy::config::FileConfig) {
        f.redis_mode = tile_proxy::config::RedisMode::Cluster;
        f.redis_nodes = self.urls();
        f.redis.timeout = super::dur("3s");
        f.redis.write_timeout = super::dur("3s");
        f.redis.connect_timeout = super::dur("3s");
        // Pod time is moved by each pod's manual clock: as in RedisServer::share, the fleet
        // clock (re-measured from Redis TIME every tick) would undo those moves.
        f.redis.fleet_clock = false;
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.process.is_some()).map(|n| n.port).collect()
    }

    /// Runs a command on the node at `port`.
    pub fn cmd_on<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> redis::RedisResult<T> {
        super::redis_server::cmd_at(port, args)
    }

    /// `CLUSTER NODES` as a live node sees it.
    pub fn topology(&self) -> Vec<NodeInfo> {
        for port in self.live_ports() {
            if let Ok(text) = self.cmd_on::<String>(port, &["CLUSTER", "NODES"]) {
                return text.lines().filter_map(parse_node_line).collect();
            }
        }
        Vec::new()
    }

    /// Every node alive agrees the cluster is ok, sees `primaries` primaries serving all 16384
    /// slots and `replicas` replicas, and every live replica's link to its primary is up.
    fn healthy(&self, primaries: usize, replicas: usize) -> bool {
        for port in self.live_ports() {
            match self.cmd_on::<String>(port, &["CLUSTER", "INFO"]) {
                Ok(info) if info.contains("cluster_state:ok") => {}
                _ => return false,
            }
            let Ok(text) = self.cmd_on::<String>(port, &["CLUSTER", "NODES"]) else { return false };
            let nodes: Vec<NodeInfo> = text.lines().filter_map(parse_node_line).filter(|n| !n.failed).collect();
            let live_primaries: Vec<&NodeInfo> = nodes.iter().filter(|n| n.primary && !n.slots.is_empty()).collect();
            let covered: u32 = live_primaries.iter().flat_map(|n| &n.slots).map(|(a, b)| u32::from(b - a) + 1).sum();
            if live_primaries.len() != primaries || covered != 16384 {
                return false;
            }
            if nodes.iter().filter(|n| !n.primary).count() != replicas {
                return false;
            }
            let Ok(repl) = self.cmd_on::<String>(port, &["INFO", "replication"]) else { return false };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return false;
            }
        }
        true
    }

    fn wait_until(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}\n{:#?}", self.topology());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `key`'s slot (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.cmd_on(self.live_ports()[0], &["CLUSTER", "KEYSLOT", key]).expect("keyslot")
    }

    /// The port of the primary serving `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot = self.keyslot(key);
        self.topology()
            .into_iter()
            .find(|n| n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no live primary serves slot {slot}: {:#?}", self.topology()))
    }

    /// The ports of the primaries serving slots now.
    pub fn primaries(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .topology()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        p.sort();
        p
    }

    /// Every key on the live primaries.
    pub fn keys(&self) -> Vec<String> {
        let mut all = Vec::new();
        for port in self.primaries() {
            if let Ok(keys) = self.cmd_on::<Vec<String>>(port, &["KEYS", "*"]) {
                all.extend(keys);
            }
        }
        all
    }

    /// The keys on one node.
    pub fn keys_on(&self, port: u16) -> Vec<String> {
        self.cmd_on::<Vec<String>>(port, &["KEYS", "*"]).unwrap_or_default()
    }

    /// Subscribers of `channel` over every live node (each counts only its own).
    pub fn subscribers(&self, channel: &str) -> u64 {
        self.live_ports()
            .into_iter()
            .filter_map(|p| self.cmd_on::<(String, u64)>(p, &["PUBSUB", "NUMSUB", channel]).ok())
            .map(|(_, n)| n)
            .sum()
    }

    /// SIGKILLs the node at `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut p) = node.process.take() {
            p.kill();
        }
    }

    /// No failover, and the other slots served on: every replica stops taking over its primary
    /// (`cluster-replica-no-failover`), and every node keeps serving its slots while some are
    /// not covered (`cluster-require-full-coverage no`). A primary killed then leaves its slots
    /// unreachable for as long as a test needs, with no race against the failover.
    pub fn hold_failover(&self) {
        for port in self.live_ports() {
            for (name, value) in [("cluster-replica-no-failover", "yes"), ("cluster-require-full-coverage", "no")] {
                let _: () = self.cmd_on(port, &["CONFIG", "SET", name, value]).expect("config set");
            }
        }
    }

    /// Waits until the replica of a killed primary took over: 3 primaries serve every slot
    /// again (blocking; call it from `spawn_blocking` in async tests).
    pub fn wait_for_failover(&self) {
        self.wait_until("a replica took over the killed primary's slots", |c| c.healthy(3, 2));
    }
}

/// One cluster node on free ports (again on others if one was taken before it bound it).
fn start_node(dir: &std::path::Path) -> Node {
    let mut output = String::new();
    for _ in 0..5 {
        let port = free_port();
        let bus = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--cluster-port", &bus.to_string()]);
        cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        cmd.args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()]);
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        cmd.args(["--daemonize", "no", "--loglevel", "notice", "--dir", &dir.to_string_lossy()]);
        let process = Process::spawn(cmd);
        match process.try_line_blocking("redis-server ready", |l| l.contains("Ready to accept connections")) {
            Ok(_) => return Node { port, process: Some(process) },
            Err(out) => output = out,
        }
    }
    panic!("redis-server (cluster node) did not start (apt-get install redis-server):\n{output}");
}

/// `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node_line(line: &str) -> Option<NodeInfo> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
    // Comma-separated: `master`, `slave`, `myself`, `fail?`, `fail`, `noaddr`, `nofailover`...
    let flags: Vec<&str> = f[2].split(',').collect();
    let slots = f[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(NodeInfo {
        id: f[0].to_string(),
        port,
        primary: flags.contains(&"master"),
        failed: flags.contains(&"fail") || flags.contains(&"noaddr"),
        slots,
    })
}
