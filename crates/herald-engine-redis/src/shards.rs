//! Connections per Redis master, and which master serves which key.
//!
//! fred's cluster client drives every node's connection from one router
//! task: while it reconnects to one dead master, commands for the healthy
//! masters wait behind it, so a single failover refused publishes on every
//! shard (about 60 % of the refusals measured in a failover were on healthy
//! shards). The engine therefore keeps its own small set of single-server
//! clients per master ([`Node`]) and routes each command by its key's hash
//! slot (CRC16 of the hash tag, Redis Cluster specification, "Key
//! distribution model"), from the layout `CLUSTER SLOTS` gives. A dead
//! master's commands fail at once (503) while the others go on, and the
//! layout is read again every second and after any redirection, so a
//! promoted replica or a migrated slot is followed within about a second.
//!
//! A single-server URL (`redis://`, `rediss://`) is one node serving every
//! slot; nothing is ever read from `CLUSTER SLOTS`.
//!
//! Each node also reports how many replicas are online (`INFO
//! replication`, lines `slaveN:…,state=online,…`), read every second: a
//! publish waits for one of them before it is acknowledged (see the crate
//! docs, "Guarantees").

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fred::clients::Pool;
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Client, Config, ReconnectPolicy, ServerConfig};
use fred::types::{ClusterHash, CustomCommand, Message, Value};
use herald_core::EngineError;
use tokio::sync::mpsc;

/// Hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The layout is read at most this often when commands keep being
/// redirected (a failover makes every command on the dead shard ask).
const REFRESH_MIN_GAP: Duration = Duration::from_millis(100);

/// How often the layout and the replica counts are read again.
pub(crate) const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// Pub/sub notifications waiting for the listener, per engine (each about
/// one event). Beyond it the forwarders wait, fred's own buffer fills, and
/// the listener is told it lagged and catches up from history.
const NODE_EVENTS: usize = 4096;

/// How each node's clients are set up.
#[derive(Clone, Debug)]
pub(crate) struct ClientSettings {
    /// Connections for commands per node.
    pub(crate) pool_size: usize,
    /// Connections for publishes per node: a publish that waits for its
    /// replicas (`WAIT`) holds its connection meanwhile, so it does not
    /// share one with reads and presence.
    pub(crate) publish_pool_size: usize,
    pub(crate) command_timeout: Duration,
    pub(crate) max_reconnect_delay: Duration,
}

/// What a node's subscriber connection tells the listener.
pub(crate) enum NodeEvent {
    /// A pub/sub message.
    Message(Message),
    /// The node's subscriber connection (re)connected: it holds no
    /// subscriptions.
    Reconnected(Arc<str>),
    /// Messages were dropped before the listener read them.
    Lagged,
}

/// One Redis server (a cluster master, or the single server).
pub(crate) struct Node {
    /// `host:port`.
    pub(crate) addr: Arc<str>,
    pool: Pool,
    publish: Pool,
    /// The pub/sub connection (`SSUBSCRIBE` of this node's channels).
    pub(crate) subscriber: Client,
    /// Replicas online, from the last `INFO replication`.
    replicas: AtomicUsize,
    forwarders: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Node {
    /// A connected command connection, or 503 at once.
    pub(crate) fn client(&self) -> Result<Client, EngineError> {
        let c = self.pool.next_connected();
        if c.is_connected() {
            Ok(c.clone())
        } else {
            Err(self.down())
        }
    }

    /// A connected publish connection (one a `WAIT` may hold), or 503.
    pub(crate) fn publish_client(&self) -> Result<Client, EngineError> {
        let c = self.publish.next_connected();
        if c.is_connected() {
            Ok(c.clone())
        } else {
            Err(self.down())
        }
    }

    fn down(&self) -> EngineError {
        EngineError::Unavailable(format!("redis {} is not connected", self.addr))
    }

    /// Replicas online when last asked (0 until first asked).
    pub(crate) fn replicas(&self) -> usize {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Every connection of the node is up (at start).
    fn fully_connected(&self) -> bool {
        self.subscriber.is_connected()
            && self.pool.clients().iter().all(|c| c.is_connected())
            && self.publish.clients().iter().all(|c| c.is_connected())
    }

    fn connected(&self) -> bool {
        self.pool.next_connected().is_connected()
    }

    /// Reads how many replicas are online (`INFO replication`); keeps the
    /// last count when the node does not answer within `timeout`.
    pub(crate) async fn read_replicas(&self, timeout: Duration) {
        let Ok(client) = self.client() else { return };
        let info = tokio::time::timeout(
            timeout,
            client.custom::<String, _>(command("INFO"), vec!["replication"]),
        )
        .await;
        if let Ok(Ok(text)) = info {
            self.replicas
                .store(online_replicas(&text), Ordering::Relaxed);
        }
    }

    fn close(&self) {
        for task in self
            .forwarders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let (pool, publish, subscriber) = (
            self.pool.clone(),
            self.publish.clone(),
            self.subscriber.clone(),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = pool.quit().await;
                let _ = publish.quit().await;
            });
        }
    }
}

fn command(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Random, false)
}

/// Counts `slaveN:` lines with `state=online` in an `INFO replication`
/// answer: a replica still syncing, or one the master has not yet noticed
/// is gone, is listed but cannot acknowledge writes it does not have; the
/// latter stays listed until the master's `repl-timeout` (60 s).
pub(crate) fn online_replicas(info: &str) -> usize {
    info.lines()
        .filter(|l| {
            l.strip_prefix("slave")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(n, fields)| {
                    n.bytes().all(|b| b.is_ascii_digit())
                        && fields.split(',').any(|f| f == "state=online")
                })
        })
        .count()
}

/// A slot range and the node serving it.
struct Range {
    start: u16,
    end: u16,
    node: Arc<Node>,
}

/// Every node of the deployment and who serves which slot.
pub(crate) struct Shards {
    template: Config,
    settings: ClientSettings,
    cluster: bool,
    nodes: Mutex<HashMap<Arc<str>, Arc<Node>>>,
    layout: RwLock<Arc<Vec<Range>>>,
    version: AtomicU64,
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    events: mpsc::Sender<NodeEvent>,
}

impl Shards {
    /// Parses `url` (see [`crate::RedisConfig::url`]) and makes a node for
    /// each host it names; nothing is connected to yet beyond starting the
    /// clients. The receiver gets every node's pub/sub traffic.
    pub(crate) fn new(
        url: &str,
        settings: ClientSettings,
    ) -> Result<(Arc<Shards>, mpsc::Receiver<NodeEvent>), crate::RedisConfigError> {
        let mut template = Config::from_url(url).map_err(|e| crate::RedisConfigError::Url {
            url: crate::redact_url(url),
            reason: e.details().to_string(),
        })?;
        // Start even when Redis is down; the reconnect policy takes over.
        template.fail_fast = false;
        let (cluster, seeds) = match &template.server {
            ServerConfig::Centralized { server } => (false, vec![server.clone()]),
            ServerConfig::Clustered { hosts, .. } => (true, hosts.clone()),
            _ => {
                return Err(crate::RedisConfigError::Url {
                    url: crate::redact_url(url),
                    reason: "only redis://, rediss://, redis-cluster:// and rediss-cluster:// URLs are supported".into(),
                })
            }
        };
        let (events, rx) = mpsc::channel(NODE_EVENTS);
        let shards = Arc::new(Shards {
            template,
            settings,
            cluster,
            nodes: Mutex::new(HashMap::new()),
            layout: RwLock::new(Arc::new(Vec::new())),
            version: AtomicU64::new(0),
            refreshing: tokio::sync::Mutex::new(None),
            events,
        });
        let mut first = None;
        for s in seeds {
            let node = shards.node(&s.host, s.port)?;
            first.get_or_insert(node);
        }
        if !cluster {
            if let Some(node) = first {
                shards.install(vec![Range {
                    start: 0,
                    end: SLOTS - 1,
                    node,
                }]);
            }
        }
        Ok((shards, rx))
    }

    /// Counts layout changes: the listener follows channels to their new
    /// node when it moves.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The node (made on first use) at `host:port`.
    fn node(&self, host: &str, port: u16) -> Result<Arc<Node>, crate::RedisConfigError> {
        let addr: Arc<str> = format!("{host}:{port}").into();
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(&addr) {
            return Ok(n.clone());
        }
        let mut config = self.template.clone();
        config.server = ServerConfig::new_centralized(host, port);
        let s = &self.settings;
        let max_delay = u32::try_from(s.max_reconnect_delay.as_millis()).unwrap_or(u32::MAX);
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                50,
                max_delay.max(50),
                2,
            ))
            .with_connection_config(|c| {
                c.connection_timeout = s.command_timeout;
                c.internal_command_timeout = s.command_timeout;
                // A publish must never run twice: a command whose connection
                // drops fails instead of being sent again.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = s.command_timeout;
                // Pub/sub messages are buffered here between the socket and
                // the forwarder; if it ever lags, the listener catches up
                // from history.
                p.broadcast_channel_capacity = 4096;
            });
        let client_error = |e: fred::error::Error| crate::RedisConfigError::Client(e.to_string());
        let pool = builder
            .build_pool(s.pool_size.max(1))
            .map_err(client_error)?;
        let publish = builder
            .build_pool(s.publish_pool_size.max(1))
            .map_err(client_error)?;
        let subscriber = builder.build().map_err(client_error)?;
        let node = Arc::new(Node {
            addr: addr.clone(),
            pool,
            publish,
            subscriber,
            replicas: AtomicUsize::new(0),
            forwarders: Mutex::new(Vec::new()),
        });
        node.forwarders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(forward(&node, self.events.clone()));
        node.pool.connect_pool();
        node.publish.connect_pool();
        node.subscriber.connect();
        nodes.insert(addr, node.clone());
        Ok(node)
    }

    /// Waits (up to `limit`) for the first connections and, on a cluster,
    /// the first layout.
    pub(crate) async fn wait_for_connect(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.cluster && self.layout_empty() {
                self.refresh().await;
            }
            let ready =
                !self.layout_empty() && self.layout_nodes().iter().all(|n| n.fully_connected());
            if ready {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn layout_empty(&self) -> bool {
        self.layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The nodes serving at least one slot.
    pub(crate) fn layout_nodes(&self) -> Vec<Arc<Node>> {
        let layout = self
            .layout
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out: Vec<Arc<Node>> = Vec::new();
        for r in layout.iter() {
            if !out.iter().any(|n| Arc::ptr_eq(n, &r.node)) {
                out.push(r.node.clone());
            }
        }
        out
    }

    /// The node serving `key`'s slot, or 503 when no node does (the
    /// layout is not known yet, or the slot is not served).
    pub(crate) fn node_for(&self, key: &str) -> Result<Arc<Node>, EngineError> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let layout = self.layout.read().unwrap_or_else(|e| e.into_inner());
        let i = layout.partition_point(|r| r.end < slot);
        match layout.get(i) {
            Some(r) if r.start <= slot => Ok(r.node.clone()),
            _ if layout.is_empty() => Err(EngineError::Unavailable(
                "redis: the cluster's slot layout is not known yet".into(),
            )),
            _ => Err(EngineError::Unavailable(format!(
                "redis: no master serves hash slot {slot}"
            ))),
        }
    }

    /// A connected command connection of the node serving `key`, or 503.
    pub(crate) fn client(&self, key: &str) -> Result<Client, EngineError> {
        self.node_for(key)?.client()
    }

    /// Reads the layout again (a cluster only; at most every
    /// [`REFRESH_MIN_GAP`], one reader at a time), asking connected nodes
    /// first.
    pub(crate) async fn refresh(&self) {
        if !self.cluster {
            return;
        }
        let mut last = self.refreshing.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_MIN_GAP) {
            return;
        }
        *last = Some(Instant::now());
        let mut candidates: Vec<Arc<Node>> = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        candidates.sort_by_key(|n| !n.connected());
        for node in candidates {
            let Ok(client) = node.client() else { continue };
            let answer = tokio::time::timeout(
                self.settings.command_timeout,
                client.custom::<Value, _>(command("CLUSTER"), vec!["SLOTS"]),
            )
            .await;
            let Ok(Ok(answer)) = answer else { continue };
            let host = node.addr.rsplit_once(':').map_or("", |(h, _)| h).to_owned();
            match parse_slots(&answer, &host) {
                Ok(ranges) if !ranges.is_empty() => {
                    let mut built = Vec::with_capacity(ranges.len());
                    for (start, end, host, port) in ranges {
                        match self.node(&host, port) {
                            Ok(node) => built.push(Range { start, end, node }),
                            Err(e) => {
                                tracing::warn!(%e, "cannot make a client for a cluster node");
                                return;
                            }
                        }
                    }
                    self.settle(&built).await;
                    self.install(built);
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(node = %node.addr, %e, "unusable CLUSTER SLOTS answer");
                    continue;
                }
            }
        }
    }

    /// Waits, up to the command timeout, for the connections of the
    /// masters `ranges` brings into the layout (a promoted replica, a new
    /// shard). Until they are up a read sent there fails at once with 503;
    /// the masters they replace are down or no longer serve the slots, so
    /// waiting here loses nothing. Masters already in the layout are not
    /// waited for (one that is down must not hold up a layout change).
    async fn settle(&self, ranges: &[Range]) {
        let current = self.layout_nodes();
        let mut fresh: Vec<&Arc<Node>> = ranges
            .iter()
            .map(|r| &r.node)
            .filter(|n| !current.iter().any(|c| Arc::ptr_eq(c, n)))
            .collect();
        fresh.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let deadline = Instant::now() + self.settings.command_timeout;
        while fresh.iter().any(|n| !n.fully_connected()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn install(&self, mut ranges: Vec<Range>) {
        ranges.sort_by_key(|r| r.start);
        let mut layout = self.layout.write().unwrap_or_else(|e| e.into_inner());
        let same = layout.len() == ranges.len()
            && layout.iter().zip(&ranges).all(|(a, b)| {
                a.start == b.start && a.end == b.end && Arc::ptr_eq(&a.node, &b.node)
            });
        if same {
            return;
        }
        if !layout.is_empty() {
            let masters: Vec<&str> = {
                let mut m: Vec<&str> = ranges.iter().map(|r| &*r.node.addr).collect();
                m.dedup();
                m
            };
            tracing::info!(
                ?masters,
                ranges = ranges.len(),
                "Redis cluster layout changed"
            );
        }
        *layout = Arc::new(ranges);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the layout and each master's replica count again; runs every
    /// [`UPKEEP_PERIOD`] for the engine's life.
    pub(crate) async fn upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(UPKEEP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
            for node in self.layout_nodes() {
                node.read_replicas(self.settings.command_timeout).await;
            }
        }
    }

    /// Closes every node's connections and forwarders.
    pub(crate) fn close(&self) {
        for node in self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            node.close();
        }
    }
}

/// Hands a node's pub/sub messages and reconnections to the listener.
fn forward(node: &Arc<Node>, events: mpsc::Sender<NodeEvent>) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = node.subscriber.message_rx();
    let mut reconnects = node.subscriber.reconnect_rx();
    let tx = events.clone();
    let on_messages = tokio::spawn(async move {
        loop {
            let event = match messages.recv().await {
                Ok(m) => NodeEvent::Message(m),
                Err(RecvError::Lagged(_)) => NodeEvent::Lagged,
                Err(RecvError::Closed) => return,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let addr = node.addr.clone();
    let on_reconnects = tokio::spawn(async move {
        loop {
            match reconnects.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            if events
                .send(NodeEvent::Reconnected(addr.clone()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    vec![on_messages, on_reconnects]
}

/// A `CLUSTER SLOTS` answer as `(start, end, host, port)` of each range's
/// master. An empty host means the node asked (`host`). Refuses answers
/// that are not the documented shape (Redis Cluster specification,
/// `CLUSTER SLOTS`) or name slots outside 0–16383.
pub(crate) fn parse_slots(
    answer: &Value,
    asked: &str,
) -> Result<Vec<(u16, u16, String, u16)>, String> {
    let Value::Array(ranges) = answer else {
        return Err("not an array".into());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else {
            return Err("a range is not an array".into());
        };
        let (Some(start), Some(end), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err("a range lacks its start, end or master".into());
        };
        let slot = |v: &Value| -> Result<u16, String> {
            v.as_i64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n < SLOTS)
                .ok_or_else(|| format!("bad slot number {v:?}"))
        };
        let (start, end) = (slot(start)?, slot(end)?);
        if start > end {
            return Err(format!("range {start}-{end} runs backwards"));
        }
        let host = master
            .first()
            .and_then(|v| v.as_string())
            .ok_or("a master has no host")?;
        let port = master
            .get(1)
            .and_then(Value::as_i64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or("a master has no port")?;
        let host = if host.is_empty() || host == "?" {
            asked.to_owned()
        } else {
            host
        };
        out.push((start, end, host, port));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_online_replicas_count() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7004,state=online,offset=10,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7005,state=wait_bgsave,offset=0,lag=0\r\n\
            master_repl_offset:10\r\n";
        assert_eq!(online_replicas(info), 1);
        assert_eq!(online_replicas("role:master\r\nconnected_slaves:0\r\n"), 0);
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Integer(start),
            Value::Integer(end),
            Value::Array(vec![Value::String(host.into()), Value::Integer(port)]),
        ])
    }

    #[test]
    fn slot_ranges_are_read() {
        let answer = Value::Array(vec![
            range(0, 5460, "127.0.0.1", 7000),
            range(5461, 16383, "", 7001),
        ]);
        let ranges = parse_slots(&answer, "10.0.0.1").unwrap();
        assert_eq!(ranges[0], (0, 5460, "127.0.0.1".to_owned(), 7000));
        assert_eq!(ranges[1], (5461, 16383, "10.0.0.1".to_owned(), 7001));
    }

    #[test]
    fn malformed_slot_ranges_are_refused() {
        for bad in [
            Value::Integer(3),
            Value::Array(vec![Value::Integer(1)]),
            Value::Array(vec![range(0, 16384, "h", 1)]),
            Value::Array(vec![range(10, 5, "h", 1)]),
            Value::Array(vec![range(-1, 5, "h", 1)]),
            Value::Array(vec![range(0, 5, "h", 0)]),
            Value::Array(vec![range(0, 5, "h", 70000)]),
        ] {
            assert!(parse_slots(&bad, "x").is_err(), "{bad:?}");
        }
    }
}
