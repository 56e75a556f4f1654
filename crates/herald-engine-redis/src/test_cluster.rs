//! A throw-away Redis Cluster for tests: 3 masters and 3 replicas, each a
//! `redis-server` on a free loopback port in a fresh folder, joined with
//! `redis-cli --cluster create`. Tests kill, pause, restart and reshard it
//! to prove the engine under faults; they never touch a Redis they did not
//! start.
//!
//! The binaries are `redis-server` and `redis-cli` on `PATH`, or
//! `$HERALD_REDIS_SERVER` and `$HERALD_REDIS_CLI`.
//!
//! Every node runs with:
//!
//! - `--appendonly yes --appendfsync everysec`: the policy the engine's
//!   guarantee is written for. A write reaches the replica (which is what
//!   survives the loss of a master) long before the once-a-second fsync;
//!   `always` would only slow the tests without covering a fault they
//!   inject (a SIGKILL loses nothing the kernel already holds).
//! - `--cluster-node-timeout 1000`: a dead master is noticed in about a
//!   second and its replica promoted a second or two later.
//! - `--cluster-require-full-coverage no`: while one master is down the
//!   other masters keep serving their slots (with `yes`, the default, the
//!   whole cluster refuses commands until the failover ends).
//! - `--cluster-replica-validity-factor 0`: a replica may always take over,
//!   however long its link was down (tests pause replicas on purpose).
//! - `--repl-diskless-sync-delay 0`: replicas sync at once instead of
//!   after the default 5 s.
//!
//! A node is started under a small shell that watches a pipe from the test
//! process: when the test binary exits (even killed, even with this value
//! in a `static` that is never dropped), the pipe closes and the shell kills
//! the node and removes its folder. The node's pid is the shell's own (the shell `exec`s it), so
//! kill, pause and resume signal exactly the process started here.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_core::Topic;

use crate::keys::Keys;

/// Masters in a cluster (each with one replica).
pub const MASTERS: usize = 3;
/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;
/// `cluster-node-timeout` of every node, in milliseconds.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A Redis Cluster this test owns: 3 masters, 3 replicas. Shareable
/// (`Arc`, or a `static`): every method takes `&self`.
pub struct RedisCluster {
    root: PathBuf,
    nodes: Vec<Node>,
    /// The masters when the cluster was created (the URL's seed nodes).
    seeds: Vec<u16>,
}

/// One `redis-server` of the cluster: its port and folder never change,
/// its process comes and goes.
struct Node {
    port: u16,
    dir: PathBuf,
    process: Mutex<Option<Process>>,
    paused: AtomicBool,
}

struct Process {
    child: Child,
    /// The watchdog's pipe: closing it without saying `keep` kills the node.
    watchdog: Option<ChildStdin>,
}

/// A node's role as the cluster sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves slots (or could: a master may hold none).
    Master,
    /// Copies a master, and takes over when it fails.
    Replica,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    /// The node's client port.
    pub port: u16,
    /// Its 40-character cluster node id.
    pub id: String,
    /// Master or replica.
    pub role: Role,
    /// A replica's master (its port); `None` for masters.
    pub master: Option<u16>,
    /// Slots served, as inclusive ranges (masters only; slots being
    /// migrated are not listed twice).
    pub slots: Vec<(u16, u16)>,
    /// Flagged `fail` or `fail?` by the node asked.
    pub failed: bool,
}

impl ClusterNode {
    /// Whether this node serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }

    /// How many slots it serves.
    pub fn slot_count(&self) -> u32 {
        self.slots.iter().map(|(a, b)| u32::from(b - a) + 1).sum()
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn server_binary() -> String {
    std::env::var("HERALD_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn cli_binary() -> String {
    std::env::var("HERALD_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

impl RedisCluster {
    /// Starts 6 nodes, creates the cluster (3 masters, one replica each) and
    /// returns once every node says `cluster_state:ok`, every slot is served
    /// and every replica's link is up (about 1–3 s).
    ///
    /// Panics if the binaries are missing or the cluster is not healthy
    /// within 30 s (with the reason and the nodes' log folder).
    pub fn start() -> RedisCluster {
        let root = std::env::temp_dir().join(format!(
            "herald-redis-cluster-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create the redis cluster test folder");
        // Built up in place so that a panic below still stops what started.
        let mut cluster = RedisCluster {
            root,
            nodes: Vec::new(),
            seeds: Vec::new(),
        };
        let mut taken = BTreeSet::new();
        for i in 0..2 * MASTERS {
            let dir = cluster.root.join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("create a node folder");
            // A free port can be taken between our probe and redis binding
            // it (or its bus port): retry on another.
            let mut started = None;
            for _ in 0..10 {
                let node = Node {
                    port: free_cluster_port(&taken),
                    dir: dir.clone(),
                    process: Mutex::new(None),
                    paused: AtomicBool::new(false),
                };
                if node.spawn() {
                    started = Some(node);
                    break;
                }
            }
            let node = started.unwrap_or_else(|| {
                panic!(
                    "could not start {} (is it installed?); logs in {}",
                    server_binary(),
                    dir.display()
                )
            });
            taken.insert(node.port);
            cluster.nodes.push(node);
        }
        let mut create = Command::new(cli_binary());
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        run(&mut create, "redis-cli --cluster create");
        cluster.wait_healthy(Duration::from_secs(30));
        let mut seeds: Vec<u16> = cluster
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Master && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        seeds.sort_unstable();
        assert_eq!(seeds.len(), MASTERS, "masters after create");
        cluster.seeds = seeds;
        cluster
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=127.0.0.1:P3`:
    /// the masters as created (the engine's URL form; the client learns the
    /// rest of the topology, replicas and later changes, from them).
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.seeds[0]);
        for (i, p) in self.seeds[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{p}"));
        }
        url
    }

    /// Every node's client port, whether it runs or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The masters when the cluster was created, by port.
    pub fn initial_masters(&self) -> Vec<u16> {
        self.seeds.clone()
    }

    /// The folder holding every node's folder (`n0`..`n5`: `redis.log`,
    /// `nodes.conf`, the append-only files).
    pub fn folder(&self) -> &Path {
        &self.root
    }

    fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    /// Whether the node on `port` runs and is not paused.
    pub fn is_up(&self, port: u16) -> bool {
        let n = self.node(port);
        n.running() && !n.paused.load(Ordering::SeqCst)
    }

    /// The cluster as it is now (`CLUSTER NODES`): every known node, its
    /// role and slots. Of the running nodes' views the most recent is taken
    /// (highest config epoch among slot owners), so a view not yet told
    /// of a failover does not win. Panics if no node answers.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let mut best: Option<(u64, Vec<ClusterNode>)> = None;
        for n in self.nodes.iter().filter(|n| self.is_up(n.port)) {
            let Ok(text) = query_text(n.port, &["CLUSTER", "NODES"]) else {
                continue;
            };
            let (epoch, view) = parse_nodes(&text);
            if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                best = Some((epoch, view));
            }
        }
        best.map(|(_, v)| v)
            .expect("no node of the cluster answers CLUSTER NODES")
    }

    /// The masters serving slots now, by port.
    pub fn masters(&self) -> Vec<u16> {
        let mut m: Vec<u16> = self
            .nodes()
            .iter()
            .filter(|n| n.role == Role::Master && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        m.sort_unstable();
        m
    }

    /// The slot of `key`, asked of the cluster (`CLUSTER KEYSLOT`).
    /// Panics if no node answers.
    pub fn slot_of(&self, key: &str) -> u16 {
        for n in self.nodes.iter().filter(|n| self.is_up(n.port)) {
            if let Ok(Reply::Int(slot)) = query(n.port, &["CLUSTER", "KEYSLOT", key]) {
                return u16::try_from(slot).expect("a slot");
            }
        }
        panic!("no node of the cluster answers CLUSTER KEYSLOT")
    }

    /// The port of the master serving `key`'s slot now (`CLUSTER KEYSLOT`,
    /// then `CLUSTER NODES`). Panics if no master serves it.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(self.slot_of(key))
    }

    /// The port of the master serving `slot` now. Panics if none does.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.nodes()
            .iter()
            .find(|n| n.role == Role::Master && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The port of the master serving `topic`'s keys (every key of a
    /// topic shares one hash tag, so one slot).
    pub fn master_of_topic(&self, topic: &str) -> u16 {
        self.master_of_key(&topic_key(topic))
    }

    /// A replica of the master on `master_port` that is not flagged failed,
    /// if any.
    pub fn replica_of(&self, master_port: u16) -> Option<u16> {
        self.nodes()
            .iter()
            .find(|n| n.role == Role::Replica && n.master == Some(master_port) && !n.failed)
            .map(|n| n.port)
    }

    /// `n` topic names `{prefix}0`, `{prefix}1`, ... (skipping those that do
    /// not qualify) whose keys live on the master on `master_port` now.
    /// Deterministic for a given slot layout. Panics if the master serves
    /// no slot.
    pub fn topics_on(&self, master_port: u16, prefix: &str, n: usize) -> Vec<String> {
        let view = self.nodes();
        let master = view
            .iter()
            .find(|m| m.port == master_port && m.role == Role::Master && !m.slots.is_empty())
            .unwrap_or_else(|| panic!("{master_port} is not a master serving slots"));
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .filter(|t| master.serves(topic_slot(t)))
            .take(n)
            .collect()
    }

    /// The first of [`RedisCluster::topics_on`].
    pub fn topic_on(&self, master_port: u16, prefix: &str) -> String {
        self.topics_on(master_port, prefix, 1).remove(0)
    }

    /// Kills the node on `port` (SIGKILL, its pid only) and waits for it to
    /// exit. Its folder stays, for [`RedisCluster::restart`].
    pub fn kill(&self, port: u16) {
        self.node(port).stop();
    }

    /// Stops the node on `port` without killing it (SIGSTOP): to the
    /// cluster it looks dead, its sockets stay open.
    pub fn pause(&self, port: u16) {
        let n = self.node(port);
        n.signal("STOP");
        n.paused.store(true, Ordering::SeqCst);
    }

    /// Lets a paused node go on (SIGCONT).
    pub fn resume(&self, port: u16) {
        let n = self.node(port);
        n.signal("CONT");
        n.paused.store(false, Ordering::SeqCst);
    }

    /// Starts a killed node again on the same port and folder: it comes
    /// back with its append-only file and `nodes.conf`, so it rejoins (as
    /// a replica, if its replica took over meanwhile). Returns once it
    /// answers `PING`; see [`RedisCluster::wait_healthy`] for the rest.
    /// Panics if it cannot start within 5 s.
    pub fn restart(&self, port: u16) {
        let n = self.node(port);
        n.stop();
        for _ in 0..50 {
            if n.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "could not restart the node on port {port}; log in {}",
            n.dir.display()
        );
    }

    /// Why the cluster is not healthy now, or `Ok` if it is: every running,
    /// unpaused node says `cluster_state:ok` and `cluster_slots_ok:16384`,
    /// every slot's master is one of them, every other running node is a
    /// replica, and every running replica's link to its master is up.
    pub fn health(&self) -> Result<(), String> {
        let up: Vec<&Node> = self.nodes.iter().filter(|n| self.is_up(n.port)).collect();
        for n in &up {
            let info = query_text(n.port, &["CLUSTER", "INFO"])
                .map_err(|e| format!("{}: CLUSTER INFO: {e}", n.port))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("{}: cluster_state is not ok", n.port));
            }
            if !info.contains(&format!("cluster_slots_ok:{SLOTS}")) {
                return Err(format!("{}: not every slot is ok in its view", n.port));
            }
            let repl = query_text(n.port, &["INFO", "replication"])
                .map_err(|e| format!("{}: INFO: {e}", n.port))?;
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return Err(format!("{}: replica link down", n.port));
            }
        }
        let view = self.nodes();
        let mut served = 0u32;
        for m in view.iter().filter(|m| m.role == Role::Master) {
            if m.slots.is_empty() {
                // A restarted master that lost its slots turns replica
                // once the cluster tells it so.
                if self.nodes.iter().any(|n| n.port == m.port) && self.is_up(m.port) {
                    return Err(format!("{} is a master without slots", m.port));
                }
                continue;
            }
            if m.failed || !self.is_up(m.port) {
                return Err(format!("master {} serves slots but is down", m.port));
            }
            served += m.slot_count();
        }
        if served != u32::from(SLOTS) {
            return Err(format!("{served} of {SLOTS} slots served"));
        }
        Ok(())
    }

    /// Waits until [`RedisCluster::health`] is `Ok`; returns how long that
    /// took. Panics with the last reason if it is not within `limit`.
    pub fn wait_healthy(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let why = match self.health() {
                Ok(()) => return started.elapsed(),
                Err(why) => why,
            };
            if started.elapsed() > limit {
                panic!(
                    "the cluster is not healthy after {limit:?}: {why}; logs in {}",
                    self.root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one command to the node on `port` and returns the raw reply
    /// (RESP text, such as `:5\r\n` or `$2\r\nok\r\n`). Arguments may hold
    /// any character. Panics if the node does not answer within 2 s.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        let mut raw = Vec::new();
        request(port, args, &mut raw).unwrap_or_else(|e| panic!("{port}: {args:?}: {e}"));
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// Moves `slots` slots (with their keys) from the master on `from_port`
    /// to the master on `to_port` with `redis-cli --cluster reshard`, and
    /// returns when it is done. Panics with its output if it fails.
    pub fn reshard(&self, from_port: u16, to_port: u16, slots: u32) {
        let from = node_id(from_port);
        let to = node_id(to_port);
        let mut cmd = Command::new(cli_binary());
        cmd.args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{from_port}"))
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"]);
        run(&mut cmd, "redis-cli --cluster reshard");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Node {
    fn process(&self) -> MutexGuard<'_, Option<Process>> {
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> bool {
        self.process().is_some()
    }

    /// Starts the node; `false` if it exited before answering (most likely
    /// its port or bus port was taken).
    fn spawn(&self) -> bool {
        // The shell keeps the pipe on fd 3 in a background job that, unless
        // told `keep` (EOF: the test process is gone), kills the node and
        // removes its folder (and the cluster's, once empty: a cluster in a
        // `static` is never dropped); then the shell becomes the node itself.
        let script = "exec 3<&0; { read -r word <&3; [ \"$word\" = keep ] || { kill -9 $$; \
                      i=0; while kill -0 $$ 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; \
                      rm -rf \"$HERALD_CLUSTER_NODE_DIR\"; rmdir \"${HERALD_CLUSTER_NODE_DIR%/*}\" 2>/dev/null; }; } & \
                      exec \"$0\" \"$@\" 0</dev/null 3<&-";
        let mut cmd = Command::new("sh");
        cmd.env("HERALD_CLUSTER_NODE_DIR", &self.dir)
            .arg("-c")
            .arg(script)
            .arg(server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--repl-diskless-sync-delay", "0"]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sh for {}: {e}", server_binary()));
        let watchdog = child.stdin.take();
        *self.process() = Some(Process { child, watchdog });
        self.paused.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(query(self.port, &["PING"]), Ok(Reply::Status(s)) if s == "PONG") {
                return true;
            }
            let mut process = self.process();
            if let Some(Ok(Some(_))) = process.as_mut().map(|p| p.child.try_wait()) {
                *process = None;
                return false;
            }
            drop(process);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// SIGKILL by pid, then reaps it. The watchdog is told `keep` first,
    /// so it never signals a pid that may since belong to another process.
    fn stop(&self) {
        if let Some(mut p) = self.process().take() {
            if let Some(mut w) = p.watchdog.take() {
                let _ = w.write_all(b"keep\n");
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    fn signal(&self, name: &str) {
        let process = self.process();
        let pid = process
            .as_ref()
            .map(|p| p.child.id())
            .unwrap_or_else(|| panic!("the node on port {} is not running", self.port));
        let ok = Command::new("sh")
            .args(["-c", "kill -s \"$0\" \"$1\"", name, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not send SIG{name} to {pid}");
    }
}

/// A port `p` below the ephemeral range whose bus port `p + 10000` is free
/// too (both must be below 65536, and away from ports the kernel hands out
/// to outgoing connections).
fn free_cluster_port(taken: &BTreeSet<u16>) -> u16 {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9);
    for _ in 0..1000 {
        // xorshift: spread over 10000..22767 without another crate.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let port = 10_000 + (seed % 12_767) as u16;
        if taken.contains(&port) || taken.contains(&(port + 10_000)) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node")
}

/// Runs a `redis-cli` command to its end; panics with its output if it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cli_binary()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // redis-cli reports some failures on stdout with exit status 0.
    if !out.status.success() || stdout.contains("[ERR]") {
        panic!(
            "{what} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn node_id(port: u16) -> String {
    query_text(port, &["CLUSTER", "MYID"]).unwrap_or_else(|e| panic!("{port}: CLUSTER MYID: {e}"))
}

/// The key of `topic`'s stream under the default prefix: its slot is the
/// slot of every key of the topic.
pub fn topic_key(topic: &str) -> String {
    let topic = Topic::new(topic).unwrap_or_else(|e| panic!("topic {topic:?}: {e}"));
    Keys::new("herald:").stream(&topic)
}

/// The slot of `topic`'s keys, computed here (see [`key_slot`]).
pub fn topic_slot(topic: &str) -> u16 {
    key_slot(&topic_key(topic))
}

/// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key, or of its hash tag (the text between the first `{` and the
/// next `}`, when not empty), modulo 16384. Pure; agrees with
/// `CLUSTER KEYSLOT`.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|b| *b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `CLUSTER NODES` text to nodes, with the highest config epoch of a node
/// serving slots (how recent the view is).
fn parse_nodes(text: &str) -> (u64, Vec<ClusterNode>) {
    struct Line {
        node: ClusterNode,
        master_id: String,
    }
    let port_of = |addr: &str| -> u16 {
        // ip:port@cport[,hostname]
        addr.split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    let mut epoch = 0;
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let flags = f[2];
        let slots: Vec<(u16, u16)> = f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|a| (a, a)),
            })
            .collect();
        if !slots.is_empty() {
            epoch = epoch.max(f[6].parse().unwrap_or(0));
        }
        let is_replica = flags.split(',').any(|x| x == "slave");
        lines.push(Line {
            node: ClusterNode {
                port: port_of(f[1]),
                id: f[0].to_owned(),
                role: if is_replica {
                    Role::Replica
                } else {
                    Role::Master
                },
                master: None,
                slots,
                failed: flags.split(',').any(|x| x == "fail" || x == "fail?"),
            },
            master_id: f[3].to_owned(),
        });
    }
    let ports: Vec<(String, u16)> = lines
        .iter()
        .map(|l| (l.node.id.clone(), l.node.port))
        .collect();
    let nodes = lines
        .into_iter()
        .map(|mut l| {
            if l.node.role == Role::Replica {
                l.node.master = ports
                    .iter()
                    .find(|(id, _)| *id == l.master_id)
                    .map(|(_, p)| *p);
            }
            l.node
        })
        .collect();
    (epoch, nodes)
}

/// A RESP2 reply. An array's elements are only kept as raw bytes: no
/// query here needs them parsed.
#[derive(Debug)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array,
}

/// One command, its reply parsed; `raw` receives the reply's bytes.
fn request(port: u16, args: &[&str], raw: &mut Vec<u8>) -> std::io::Result<Reply> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    s.write_all(&out)?;
    read_reply(&mut BufReader::new(s), raw)
}

fn query(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    request(port, args, &mut Vec::new())
}

/// The text of a status or bulk reply; an error reply is an error.
fn query_text(port: u16, args: &[&str]) -> Result<String, String> {
    match query(port, args) {
        Ok(Reply::Status(s)) | Ok(Reply::Bulk(Some(s))) => Ok(s),
        Ok(Reply::Error(e)) => Err(e),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn read_reply(r: &mut impl BufRead, raw: &mut Vec<u8>) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 {
        return Err(bad("connection closed mid-reply"));
    }
    raw.extend_from_slice(&line);
    let text = String::from_utf8_lossy(&line[1..]).trim_end().to_owned();
    let number = || text.parse::<i64>().map_err(|_| bad("a number"));
    Ok(match line[0] {
        b'+' => Reply::Status(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(number()?),
        b'$' => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                raw.extend_from_slice(&buf);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf[..n]).into_owned()))
            }
        },
        b'*' => match usize::try_from(number()?) {
            Err(_) => Reply::Array,
            Ok(n) => {
                for _ in 0..n {
                    read_reply(r, raw)?;
                }
                Reply::Array
            }
        },
        _ => return Err(bad("a RESP reply")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values from the Redis Cluster specification's examples.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(topic_slot("orders/1"), key_slot("orders/1"));
    }

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n\
b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected\n\
c3 127.0.0.1:7002@17002 slave a1 0 0 3 connected\n\
d4 127.0.0.1:7003@17003 master - 0 0 4 connected 5461-16383\n";
        let (epoch, nodes) = parse_nodes(text);
        assert_eq!(epoch, 4);
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert!(nodes[1].failed && nodes[1].slots.is_empty());
        assert_eq!(
            (nodes[2].role, nodes[2].master),
            (Role::Replica, Some(7000))
        );
        assert_eq!(nodes[3].slot_count(), 16384 - 5461);
    }
}
