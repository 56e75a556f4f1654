//! Network faults between Herald and Redis, on one machine: Redis and two
//! `herald serve --engine redis` processes (nodes A and B) each run in a
//! network namespace of their own, wired by a switch namespace, and the
//! test cuts or degrades the wire between node A and Redis only.
//!
//! - `partition_of_one_node_from_redis`: A loses Redis completely (packets
//!   dropped both ways, nothing reset) while B keeps publishing. A answers
//!   503 to publishes and `/readyz` within [`CUT_TO_503`], keeps its open SSE
//!   and WebSocket streams, and after the heal is ready again within
//!   [`HEAL_TO_READY`] and hands its streams every event B published, once
//!   and in order, within [`HEAL_TO_CAUGHT_UP`]. B never notices.
//! - `latency_and_loss`: 50 ms ± 10 ms of round trip and about 1 % loss
//!   between A and Redis (`tc netem`): publishes through A are still
//!   acknowledged and every subscriber gets every event in order.
//!
//! # The lab ([`Lab`])
//!
//! Namespaces `hpart-PID-TEST-{sw,redis,a,b}`. The switch namespace `sw`
//! holds two bridges: `back` joins Redis, A and B (10.213.X.0/25), `front`
//! joins A, B and this test in the root namespace (10.213.X.128/25). The
//! test talks to the nodes over `front` only, so a fault on A's `back` port
//! sits between A and Redis and nowhere else. X is claimed per run by the
//! name of the root namespace's veth (`hpfX`): two runs at once never share
//! a subnet.
//!
//! It needs root on Linux (`ip netns`, `ip link`, `tc`). When namespaces
//! cannot be made, each test says so loudly and returns; when the kernel
//! has no `sch_netem`, only `latency_and_loss` is skipped, loudly. Every
//! process is killed by its pid and every namespace deleted on drop, panics
//! included; namespaces left by a run that was killed outright are removed
//! by the next run.

mod process;
#[path = "../../herald-http/tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use herald_client::Client;
use process::{StderrLog, TempDir};
use serde_json::json;
use support::transport::{Got, Kind, Sub};

/// Cut → node A answers 503 to a publish and to `/readyz` (the default
/// command timeout is 2 s, so about 2–3 s is expected).
const CUT_TO_503: Duration = Duration::from_secs(10);
/// Heal → node A's `/readyz` is 200 again.
const HEAL_TO_READY: Duration = Duration::from_secs(15);
/// Heal → node A's open streams hold every event published before the heal.
const HEAL_TO_CAUGHT_UP: Duration = Duration::from_secs(15);
/// How long the partition lasts once A has noticed it.
const HOLD: Duration = Duration::from_secs(3);
/// Topics B publishes to, round robin.
const TOPICS: [&str; 3] = ["net/0", "net/1", "net/2"];
/// Prefix of every namespace this suite makes.
const PREFIX: &str = "hpart";

// ---------------------------------------------------------------------------
// The lab: namespaces, links, processes.

/// Runs `program args`; its stdout, or its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> String {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Removes namespaces (and the processes in them) left behind by runs of
/// this suite whose process no longer exists (killed before its drops ran).
fn sweep_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = run("ip", &["netns", "pids", name]) {
            for p in pids.split_whitespace() {
                let _ = run("kill", &["-KILL", p]);
            }
        }
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// The namespaces, links and processes of one test; all removed on drop.
struct Lab {
    test: &'static str,
    /// The third octet of this run's addresses, 10.213.X.0/24.
    x: u8,
    /// Namespaces made so far (deleted on drop).
    namespaces: Vec<String>,
    /// The root namespace's end of the `front` bridge.
    root_link: Option<String>,
    /// Processes started so far, killed by pid on drop (newest first).
    children: Vec<(String, Child)>,
    redis_dir: TempDir,
}

/// A `herald serve` in the lab, reached from the root namespace.
struct Node {
    name: &'static str,
    client: Client,
    base: String,
    log: StderrLog,
}

impl Lab {
    /// Builds the network of the module docs, or says why namespaces cannot
    /// be made here (`Err`, the only failure that is not a panic).
    fn build(test: &'static str) -> Result<Lab, String> {
        sweep_stale();
        let mut lab = Lab {
            test,
            x: 0,
            namespaces: Vec::new(),
            root_link: None,
            children: Vec::new(),
            redis_dir: TempDir::new("partition-redis"),
        };
        let sw = lab.ns("sw");
        run("ip", &["netns", "add", &sw])?;
        lab.namespaces.push(sw.clone());
        for role in ["redis", "a", "b"] {
            let ns = lab.ns(role);
            ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        for bridge in ["back", "front"] {
            ip(&["-n", &sw, "link", "add", bridge, "type", "bridge"]);
            ip(&["-n", &sw, "link", "set", bridge, "up"]);
        }
        lab.claim_subnet();
        for (role, net) in [
            ("redis", "back"),
            ("a", "back"),
            ("a", "front"),
            ("b", "back"),
            ("b", "front"),
        ] {
            let ns = lab.ns(role);
            let port = format!("{role}-{net}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", net, "netns", &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", net, "up"]);
            let addr = format!("{}/25", lab.addr(role, net));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", net]);
            ip(&["-n", &ns, "link", "set", net, "up"]);
        }
        // A and Redis know each other's hardware address for good, so that
        // while the wire is cut no neighbour lookup fails: a failed lookup
        // makes the kernel report "host unreachable" to the sender, and the
        // cut must be pure silence.
        let (a, redis) = (lab.ns("a"), lab.ns("redis"));
        let (a_mac, redis_mac) = (mac(&a, "back"), mac(&redis, "back"));
        let (a_ip, redis_ip) = (lab.addr("a", "back"), lab.addr("redis", "back"));
        for (ns, peer, lladdr) in [(&a, &redis_ip, &redis_mac), (&redis, &a_ip, &a_mac)] {
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                peer,
                "lladdr",
                lladdr,
                "dev",
                "back",
                "nud",
                "permanent",
            ]);
        }
        Ok(lab)
    }

    /// [`Lab::build`], or `None` after saying loudly why the test `name`
    /// cannot run.
    fn build_or_explain(test: &'static str, name: &str) -> Option<Lab> {
        match Lab::build(test) {
            Ok(lab) => Some(lab),
            Err(why) => {
                eprintln!(
                    "\n!!!!!!!!!!\n!!! SKIPPED {name}: network namespaces cannot be made here \
                     (needs root on Linux with iproute2): {why}\n!!!!!!!!!!\n"
                );
                None
            }
        }
    }

    /// The namespace of `role` (`sw`, `redis`, `a`, `b`).
    fn ns(&self, role: &str) -> String {
        format!("{PREFIX}-{}-{}-{role}", std::process::id(), self.test)
    }

    /// The address of `role` on `net` (`back`, `front`).
    fn addr(&self, role: &str, net: &str) -> String {
        let host = match (role, net) {
            ("redis", "back") => 1,
            ("a", "back") => 2,
            ("b", "back") => 3,
            ("root", "front") => 129,
            ("a", "front") => 130,
            ("b", "front") => 131,
            _ => panic!("no address for {role} on {net}"),
        };
        format!("10.213.{}.{host}", self.x)
    }

    /// Picks X and plugs the root namespace into `front` with a veth named
    /// `hpfX`: the kernel refuses a second link of that name, so the name is
    /// the claim on the subnet.
    fn claim_subnet(&mut self) {
        let sw = self.ns("sw");
        let used = ip(&["-4", "-o", "addr", "show"]) + &ip(&["-4", "route", "show"]);
        let start = (std::process::id() as usize * 7 + self.test.len() * 31) % 230;
        for i in 0..230 {
            let x = (16 + (start + i) % 230) as u8;
            if used.contains(&format!("10.213.{x}.")) {
                continue;
            }
            let link = format!("hpf{x}");
            if run(
                "ip",
                &[
                    "link", "add", &link, "type", "veth", "peer", "name", "root", "netns", &sw,
                ],
            )
            .is_err()
            {
                continue;
            }
            self.root_link = Some(link.clone());
            self.x = x;
            ip(&[
                "addr",
                "add",
                &format!("{}/25", self.addr("root", "front")),
                "dev",
                &link,
            ]);
            ip(&["link", "set", &link, "up"]);
            ip(&["-n", &sw, "link", "set", "root", "master", "front", "up"]);
            return;
        }
        panic!("no free 10.213.X.0/24 for the lab");
    }

    fn redis_url(&self) -> String {
        format!("redis://{}:6379", self.addr("redis", "back"))
    }

    /// Starts `redis-server` in its namespace, bound to its `back` address,
    /// persisting every write, and waits until it answers.
    fn start_redis(&mut self) {
        let bin = std::env::var("HERALD_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let ns = self.ns("redis");
        let bind = self.addr("redis", "back");
        let dir = self.redis_dir.path().to_string_lossy().into_owned();
        let child = Command::new("ip")
            .args([
                "netns", "exec", &ns, &bin, "--bind", &bind, "--port", "6379",
            ])
            .args(["--protected-mode", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", &dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.children.push(("redis-server".into(), child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.redis(&["PING"]).contains("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One Redis command, sent from Redis's own namespace; its reply.
    fn redis(&self, command: &[&str]) -> String {
        let ns = self.ns("redis");
        let host = self.addr("redis", "back");
        let mut args = vec!["netns", "exec", &ns, "redis-cli", "-h", &host, "-p", "6379"];
        args.extend_from_slice(command);
        run("ip", &args).unwrap_or_default()
    }

    /// Starts `herald serve --engine redis` in `role`'s namespace, listening
    /// on its `front` address, and waits until it is ready.
    async fn start_node(&mut self, role: &'static str) -> Node {
        let ns = self.ns(role);
        let listen = format!("{}:0", self.addr(role, "front"));
        let url = self.redis_url();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, process::BIN, "serve"])
            .args(["--listen", &listen, "--engine", "redis"])
            .args(["--redis-url", &url])
            // Not a loopback address, but on a network only this test reaches.
            .arg("--insecure")
            .env("HERALD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald");
        let log = StderrLog::capture(&mut child);
        let stdout = child.stdout.take().expect("stdout");
        self.children.push((format!("herald {role}"), child));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let base = line
            .trim()
            .strip_prefix("herald listening on ")
            .unwrap_or_else(|| panic!("node {role} did not start: {line:?}\n{}", log.text()))
            .to_owned();
        let node = Node {
            name: role,
            client: Client::new(&base).expect("client"),
            base,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while status(&node.client, "/readyz").await != 200 {
            assert!(
                Instant::now() < deadline,
                "node {role} never ready:\n{}",
                node.log.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// Cuts `role` off Redis: its port on the `back` bridge goes down. A
    /// port that is down drops every frame in both directions without a
    /// word — no RST, no ICMP (and no failed neighbour lookup, see
    /// [`Lab::build`]) — which is what a dead switch or a partitioned cloud
    /// network looks like: each side learns only from its own timeouts.
    /// (Killing the connections, or a route that is refused, would tell the
    /// node at once and test a much easier case.) Its `front` port, where
    /// the clients are, stays up.
    fn cut(&self, role: &str) {
        ip(&[
            "-n",
            &self.ns("sw"),
            "link",
            "set",
            &format!("{role}-back"),
            "down",
        ]);
    }

    /// Undoes [`Lab::cut`].
    fn heal(&self, role: &str) {
        ip(&[
            "-n",
            &self.ns("sw"),
            "link",
            "set",
            &format!("{role}-back"),
            "up",
        ]);
    }

    /// Adds `tc netem SPEC` on both ends of `role`'s `back` wire (the node's
    /// side: towards Redis; the switch's side: towards the node). Fails when
    /// the kernel has no `sch_netem`.
    fn netem(&self, role: &str, spec: &[&str]) -> Result<(), String> {
        let port = format!("{role}-back");
        for (ns, dev) in [(self.ns(role), "back"), (self.ns("sw"), port.as_str())] {
            let mut args = vec!["netns", "exec", &ns, "tc", "qdisc", "add", "dev", dev];
            args.extend(["root", "netem"]);
            args.extend_from_slice(spec);
            run("ip", &args)?;
        }
        Ok(())
    }
}

/// The hardware address of `dev` in namespace `ns`.
fn mac(ns: &str, dev: &str) -> String {
    let out = ip(&["-n", ns, "-o", "link", "show", "dev", dev]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no hardware address in {out:?}"))
        .to_owned()
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Newest first: the nodes, then Redis.
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A namespace's veths go with it, the root namespace's end too.
        for ns in self.namespaces.drain(..).rev() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        if let Some(link) = self.root_link.take() {
            let _ = run("ip", &["link", "del", &link]);
        }
    }
}

// ---------------------------------------------------------------------------
// Clients: publishers, probes and subscribers running beside the test.

/// The status of `GET path`, 0 when there is no answer within 5 s.
async fn status(client: &Client, path: &str) -> u16 {
    let get = client.request(http::Method::GET, path, &[], Default::default());
    match tokio::time::timeout(Duration::from_secs(5), get).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

/// One request of a probe loop.
#[derive(Clone, Debug)]
struct Answer {
    sent: Instant,
    answered: Instant,
    /// The HTTP status; 0 when there was no answer within 5 s.
    status: u16,
    /// For publishes: the topic (index in the publisher's list) and the
    /// sequence number.
    topic: usize,
    n: u64,
}

type Answers = Arc<Mutex<Vec<Answer>>>;

/// Publishes `{"t": TOPIC_INDEX, "n": N}` round robin over `topics`, one at
/// a time every `pace`, until `stop` or `count` publishes (at most 90 s).
fn spawn_publisher(
    client: Client,
    topics: &'static [&'static str],
    pace: Duration,
    count: u64,
    stop: Arc<AtomicBool>,
) -> (Answers, tokio::task::JoinHandle<()>) {
    let answers = Answers::default();
    let log = answers.clone();
    let task = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        for n in 0..count {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            let topic = n as usize % topics.len();
            let body = json!({"topic": topics[topic], "data": {"t": topic, "n": n}}).to_string();
            let sent = Instant::now();
            let publish = client.publish_raw(body, "application/json");
            let status = match tokio::time::timeout(Duration::from_secs(5), publish).await {
                Ok(Ok((s, _))) => s.as_u16(),
                _ => 0,
            };
            log.lock().unwrap().push(Answer {
                sent,
                answered: Instant::now(),
                status,
                topic,
                n,
            });
            tokio::time::sleep(pace).await;
        }
    });
    (answers, task)
}

/// What a probe asks.
#[derive(Clone, Copy)]
enum Probe {
    /// `GET /readyz`.
    Ready,
    /// `POST /v1/publish` to a topic of its own, which nobody reads.
    Publish(&'static str),
}

/// Asks `probe` every `every` without waiting for the answer before
/// sending the next (a request that hangs for the command timeout does not
/// hide when the next one would have been answered), until `stop` (at most
/// 600 requests, each given 5 s).
fn spawn_probes(client: Client, probe: Probe, every: Duration, stop: Arc<AtomicBool>) -> Answers {
    let answers = Answers::default();
    let log = answers.clone();
    tokio::spawn(async move {
        for n in 0..600u64 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let (client, log) = (client.clone(), log.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let status = match probe {
                    Probe::Ready => status(&client, "/readyz").await,
                    Probe::Publish(topic) => {
                        let body = json!({"topic": topic, "data": n}).to_string();
                        let publish = client.publish_raw(body, "application/json");
                        match tokio::time::timeout(Duration::from_secs(5), publish).await {
                            Ok(Ok((s, _))) => s.as_u16(),
                            _ => 0,
                        }
                    }
                };
                log.lock().unwrap().push(Answer {
                    sent,
                    answered: Instant::now(),
                    status,
                    topic: 0,
                    n,
                });
            });
            tokio::time::sleep(every).await;
        }
    });
    answers
}

/// A subscriber read by a task of its own, everything it gets logged.
struct Reader {
    name: String,
    got: Arc<Mutex<Vec<(Got, Instant)>>>,
    /// Why the server ended the subscription (`herald.disconnect`, a close
    /// or the end of the stream), if it did.
    ended: Arc<Mutex<Option<String>>>,
}

async fn spawn_reader(node: &Node, kind: Kind, stop: Arc<AtomicBool>) -> Reader {
    let mut sub = Sub::open(&node.client, kind, &TOPICS, None)
        .await
        .expect("subscribe");
    let reader = Reader {
        name: format!("{kind:?} on {}", node.name),
        got: Arc::default(),
        ended: Arc::default(),
    };
    let (got, ended) = (reader.got.clone(), reader.ended.clone());
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let next = sub.next(Duration::from_millis(200)).await;
            if let Some(g) = next {
                got.lock().unwrap().push((g, Instant::now()));
            }
            if let Some(why) = &sub.ended {
                *ended.lock().unwrap() = Some(why.clone());
                break;
            }
        }
    });
    reader
}

impl Reader {
    /// The `(topic, n)` of every event received, in order, and every
    /// event that is not one of the publishers' (a gap, for one).
    fn events(&self) -> (Vec<(usize, u64)>, Vec<Got>) {
        let mut ours = Vec::new();
        let mut other = Vec::new();
        for (g, _) in self.got.lock().unwrap().iter() {
            match seq(g) {
                Some(s) if g.event == "message" => ours.push(s),
                _ => other.push(g.clone()),
            }
        }
        (ours, other)
    }

    fn has_all(&self, want: &[(usize, u64)]) -> bool {
        let have: HashSet<(usize, u64)> = self.events().0.into_iter().collect();
        want.iter().all(|w| have.contains(w))
    }

    /// What is wrong with the events received, given what was acknowledged
    /// (in publish order): per topic, exactly those, once each, in order.
    fn delivery_errors(&self, acked: &[(usize, u64)], topics: usize) -> Vec<String> {
        let (ours, other) = self.events();
        let mut errors = Vec::new();
        for t in 0..topics {
            let want: Vec<u64> = acked.iter().filter(|a| a.0 == t).map(|a| a.1).collect();
            let have: Vec<u64> = ours.iter().filter(|a| a.0 == t).map(|a| a.1).collect();
            if want != have {
                let missing: Vec<u64> =
                    want.iter().filter(|n| !have.contains(n)).copied().collect();
                errors.push(format!(
                    "{}: topic {t}: {} acknowledged, {} received; missing {missing:?}; \
                     received {have:?}",
                    self.name,
                    want.len(),
                    have.len()
                ));
            }
        }
        if !other.is_empty() {
            errors.push(format!("{}: unexpected events {other:?}", self.name));
        }
        if let Some(why) = self.ended.lock().unwrap().as_ref() {
            errors.push(format!("{}: the server ended the stream: {why}", self.name));
        }
        errors
    }
}

/// The `(t, n)` of a publisher's event.
fn seq(g: &Got) -> Option<(usize, u64)> {
    let v: serde_json::Value = serde_json::from_str(&g.data).ok()?;
    Some((v["t"].as_u64()? as usize, v["n"].as_u64()?))
}

/// Polls `f` every 20 ms for at most `limit`; how long it took, or `None`.
async fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// The last `n` lines of a node's log.
fn tail(node: &Node, n: usize) -> String {
    let text = node.log.text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_of_one_node_from_redis() {
    let Some(mut lab) = Lab::build_or_explain("cut", "partition_of_one_node_from_redis") else {
        return;
    };
    lab.start_redis();
    let a = lab.start_node("a").await;
    let b = lab.start_node("b").await;
    println!("lab 10.213.{}.0/24: A {}, B {}", lab.x, a.base, b.base);

    let stop_readers = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for node in [&a, &b] {
        for kind in [Kind::Sse, Kind::Ws] {
            readers.push(spawn_reader(node, kind, stop_readers.clone()).await);
        }
    }
    // The first two are on A.
    let a_readers = &readers[..2];

    // B publishes all along: before, during and after the partition.
    let stop_b = Arc::new(AtomicBool::new(false));
    let (b_pubs, b_task) = spawn_publisher(
        b.client.clone(),
        &TOPICS,
        Duration::from_millis(50),
        2_000,
        stop_b.clone(),
    );
    let stop_probes = Arc::new(AtomicBool::new(false));
    let b_ready = spawn_probes(
        b.client.clone(),
        Probe::Ready,
        Duration::from_millis(100),
        stop_probes.clone(),
    );
    let warm = within(Duration::from_secs(10), || {
        readers.iter().all(|r| r.events().0.len() >= 6)
    })
    .await;
    assert!(warm.is_some(), "the subscribers never got the first events");

    // The cut.
    lab.cut("a");
    let cut = Instant::now();
    let a_pubs = spawn_probes(
        a.client.clone(),
        Probe::Publish("probe/a"),
        Duration::from_millis(100),
        stop_probes.clone(),
    );
    let a_ready = spawn_probes(
        a.client.clone(),
        Probe::Ready,
        Duration::from_millis(100),
        stop_probes.clone(),
    );
    let first = |answers: &Answers, from: Instant, status: u16| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.answered >= from && x.status == status)
            .map(|x| x.answered - from)
            .min()
    };
    within(CUT_TO_503 + Duration::from_secs(2), || {
        first(&a_pubs, cut, 503).is_some() && first(&a_ready, cut, 503).is_some()
    })
    .await;
    let cut_to_publish_503 = first(&a_pubs, cut, 503);
    let cut_to_ready_503 = first(&a_ready, cut, 503);
    tokio::time::sleep(HOLD).await;
    // Acknowledged by B after the cut; the heal follows at once.
    let during: Vec<(usize, u64)> = b_pubs
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.sent >= cut && p.status == 200)
        .map(|p| (p.topic, p.n))
        .collect();
    let a_got_during: usize = a_readers
        .iter()
        .map(|r| {
            let have: HashSet<_> = r.events().0.into_iter().collect();
            during.iter().filter(|d| have.contains(d)).count()
        })
        .sum();
    let a_ended_during: Vec<String> = a_readers
        .iter()
        .filter_map(|r| {
            r.ended
                .lock()
                .unwrap()
                .clone()
                .map(|e| format!("{}: {e}", r.name))
        })
        .collect();

    // The heal.
    lab.heal("a");
    let heal = Instant::now();
    let before_heal: Vec<(usize, u64)> = b_pubs
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.status == 200)
        .map(|p| (p.topic, p.n))
        .collect();
    let heal_to_ready = within(HEAL_TO_READY + Duration::from_secs(2), || {
        first(&a_ready, heal, 200).is_some()
    })
    .await
    .and_then(|_| first(&a_ready, heal, 200));
    let caught_up = within(HEAL_TO_CAUGHT_UP + Duration::from_secs(2), || {
        a_readers.iter().all(|r| r.has_all(&before_heal))
    })
    .await
    .map(|_| heal.elapsed());
    let heal_to_publish_200 = first(&a_pubs, heal, 200);

    // A little more after the heal, then everything published must arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_b.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(10), b_task).await;
    let acked: Vec<(usize, u64)> = b_pubs
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.status == 200)
        .map(|p| (p.topic, p.n))
        .collect();
    within(Duration::from_secs(10), || {
        readers.iter().all(|r| r.has_all(&acked))
    })
    .await;
    // Room for a duplicate to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_probes.store(true, Ordering::SeqCst);
    // The last probes' answers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_readers.store(true, Ordering::SeqCst);

    // What happened.
    let b_all = b_pubs.lock().unwrap().clone();
    let b_refused: Vec<&Answer> = b_all.iter().filter(|p| p.status != 200).collect();
    let b_ready_all = b_ready.lock().unwrap().clone();
    let b_not_ready = b_ready_all.iter().filter(|p| p.status != 200).count();
    let a_all = a_pubs.lock().unwrap().clone();
    let a_partition: Vec<&Answer> = a_all.iter().filter(|p| p.answered < heal).collect();
    let a_partition_200 = a_partition.iter().filter(|p| p.status == 200).count();
    let a_partition_other: Vec<u16> = a_partition
        .iter()
        .filter(|p| p.status != 503)
        .map(|p| p.status)
        .collect();
    let a_acked = a_all.iter().filter(|p| p.status == 200).count();
    // Sent while cut off, answered after the heal.
    let a_straddling: Vec<u16> = a_all
        .iter()
        .filter(|p| p.sent < heal && p.answered >= heal)
        .map(|p| p.status)
        .collect();
    let probe_len: usize = lab
        .redis(&["XLEN", "herald:{probe/a}:s"])
        .trim()
        .parse()
        .unwrap_or(0);
    let a_ready_partition: Vec<u16> = a_ready
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.sent >= cut + cut_to_ready_503.unwrap_or(CUT_TO_503) && p.answered < heal)
        .map(|p| p.status)
        .collect();

    println!("partition of node A from Redis ({}):", lab.redis_url());
    println!(
        "  cut → first 503 to a publish through A:   {} (bound {CUT_TO_503:?})",
        secs(cut_to_publish_503)
    );
    println!(
        "  cut → /readyz 503 on A:                   {} (bound {CUT_TO_503:?})",
        secs(cut_to_ready_503)
    );
    println!(
        "  partition: {:.2} s; publishes through A answered during it: {} ({} × 503, \
         {a_partition_200} × 200, others {a_partition_other:?}); /readyz on A after its first \
         503: {:?}",
        (heal - cut).as_secs_f64(),
        a_partition.len(),
        a_partition.iter().filter(|p| p.status == 503).count(),
        a_ready_partition
    );
    println!(
        "  B published {} events during the partition; A's subscribers got {a_got_during} of \
         their {} deliveries before the heal; streams ended on A during it: {a_ended_during:?}",
        during.len(),
        during.len() * a_readers.len()
    );
    println!(
        "  heal → /readyz 200 on A:                  {} (bound {HEAL_TO_READY:?})",
        secs(heal_to_ready)
    );
    println!(
        "  heal → first publish 200 through A:       {}",
        secs(heal_to_publish_200)
    );
    println!(
        "  heal → A's open streams caught up:        {} (bound {HEAL_TO_CAUGHT_UP:?})",
        secs(caught_up)
    );
    println!(
        "  probe topic: {} publishes through A, {a_acked} acknowledged, {} events in Redis: \
         {} refused publishes were stored after all (sent during the partition and written \
         when the heal let them through); sent during it and answered after the heal: \
         {a_straddling:?}",
        a_all.len(),
        probe_len,
        probe_len.saturating_sub(a_acked)
    );
    println!(
        "  B: {} publishes, {} refused; /readyz on B: {} asked, {b_not_ready} not 200",
        b_all.len(),
        b_refused.len(),
        b_ready_all.len()
    );
    let mut errors = Vec::new();
    for r in &readers {
        errors.extend(r.delivery_errors(&acked, TOPICS.len()));
        println!("  {}: {} events", r.name, r.events().0.len());
    }
    if !errors.is_empty() || caught_up.is_none() || heal_to_ready.is_none() {
        println!("  node A's log (last lines):\n{}", tail(&a, 30));
    }

    // The contract.
    assert!(
        cut_to_publish_503.is_some_and(|d| d <= CUT_TO_503),
        "A did not answer 503 to a publish within {CUT_TO_503:?} of the cut"
    );
    assert!(
        cut_to_ready_503.is_some_and(|d| d <= CUT_TO_503),
        "A's /readyz was not 503 within {CUT_TO_503:?} of the cut"
    );
    assert_eq!(
        a_partition_200, 0,
        "A acknowledged a publish while cut off Redis"
    );
    assert!(
        a_partition_other.is_empty(),
        "A answered publishes during the partition with {a_partition_other:?}, not 503"
    );
    assert!(
        a_ready_partition.iter().all(|s| *s == 503),
        "A's /readyz during the partition: {a_ready_partition:?}"
    );
    assert!(
        a_ended_during.is_empty(),
        "A ended open streams: {a_ended_during:?}"
    );
    assert!(b_refused.is_empty(), "B refused publishes: {b_refused:?}");
    assert_eq!(b_not_ready, 0, "B's /readyz was not 200 throughout");
    assert!(
        !during.is_empty(),
        "B published nothing during the partition"
    );
    assert!(
        heal_to_ready.is_some_and(|d| d <= HEAL_TO_READY),
        "A's /readyz was not 200 within {HEAL_TO_READY:?} of the heal"
    );
    assert!(
        caught_up.is_some_and(|d| d <= HEAL_TO_CAUGHT_UP),
        "A's open streams did not catch up within {HEAL_TO_CAUGHT_UP:?} of the heal:\n{}",
        errors.join("\n")
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_loss() {
    let Some(mut lab) = Lab::build_or_explain("netem", "latency_and_loss") else {
        return;
    };
    // 25 ms ± 5 ms and 0.5 % loss each way: a round trip between A and
    // Redis takes 50 ms ± 10 ms and loses about 1 % of its packets.
    if let Err(why) = lab.netem("a", &["delay", "25ms", "5ms", "loss", "0.5%"]) {
        eprintln!(
            "\n!!!!!!!!!!\n!!! SKIPPED latency_and_loss: `tc qdisc add ... netem` is refused, \
             this kernel has no sch_netem (or tc lacks it): {why}\n!!! The latency and loss \
             between node A and Redis were NOT tested on this machine.\n!!!!!!!!!!\n"
        );
        return;
    }
    lab.start_redis();
    let a = lab.start_node("a").await;
    let b = lab.start_node("b").await;
    println!("lab 10.213.{}.0/24: A {}, B {}", lab.x, a.base, b.base);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for node in [&a, &b] {
        for kind in [Kind::Sse, Kind::Ws] {
            readers.push(spawn_reader(node, kind, stop.clone()).await);
        }
    }
    // 90 publishes through A, one at a time.
    let (a_pubs, a_task) = spawn_publisher(
        a.client.clone(),
        &TOPICS,
        Duration::ZERO,
        90,
        Arc::default(),
    );
    let done = tokio::time::timeout(Duration::from_secs(30), a_task)
        .await
        .is_ok();
    let answers: Vec<Answer> = a_pubs.lock().unwrap().clone();
    let acked: Vec<(usize, u64)> = answers
        .iter()
        .filter(|p| p.status == 200)
        .map(|p| (p.topic, p.n))
        .collect();
    let delivered = within(Duration::from_secs(15), || {
        readers.iter().all(|r| r.has_all(&acked))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut took: Vec<Duration> = answers.iter().map(|p| p.answered - p.sent).collect();
    took.sort();
    let refused: Vec<u16> = answers
        .iter()
        .filter(|p| p.status != 200)
        .map(|p| p.status)
        .collect();
    println!(
        "latency and loss between A and Redis: {} publishes through A, refused {refused:?}; \
         publish time min {:?}, median {:?}, max {:?}; delivered to all in {}",
        answers.len(),
        took.first(),
        took.get(took.len() / 2),
        took.last(),
        secs(delivered)
    );
    let mut errors = Vec::new();
    for r in &readers {
        errors.extend(r.delivery_errors(&acked, TOPICS.len()));
        println!("  {}: {} events", r.name, r.events().0.len());
    }
    assert!(done, "90 publishes through A did not finish in 30 s");
    assert!(
        refused.is_empty(),
        "publishes through A refused: {refused:?}"
    );
    // Every publish is at least one round trip to Redis: proof that the
    // delay is really on the wire.
    assert!(
        took[took.len() / 2] >= Duration::from_millis(40),
        "median publish {:?}: is the delay applied?",
        took[took.len() / 2]
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
