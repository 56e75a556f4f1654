//! Shared test support: a real server on a real port, and one client adapter
//! per transport so the contract suite runs the same scenario on each.
//!
//! Servers use the memory engine, or the Redis engine (each on its own
//! throw-away `redis-server`) inside [`with_engine`]`(EngineChoice::Redis, ..)`,
//! or on one Redis Cluster shared by the test binary, each server under a key
//! prefix of its own, inside `with_engine(EngineChoice::RedisCluster, ..)`.
#![allow(dead_code)]

pub mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use herald_client::Client;
use herald_core::{Engine, Hub, HubConfig, MemoryEngine};
use herald_engine_redis::test_cluster::RedisCluster;
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::{RedisConfig, RedisEngine};
use herald_http::HttpConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A Herald server running in this process on a loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: Client,
    pub hub: Hub,
    pub engine: Arc<dyn Engine>,
    /// The Redis server behind a Redis engine (kept alive with the server).
    pub redis: Option<Arc<RedisServer>>,
    pub hub_config: HubConfig,
    pub http_config: HttpConfig,
    /// The accept loop's TCP and TLS counters.
    pub server_metrics: Arc<herald_server::ServerMetrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Which engine [`TestServer::start`] and [`TestServer::start_with`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    Memory,
    /// A Redis engine on a `redis-server` of its own.
    Redis,
    /// A Redis engine on the binary's shared Redis Cluster ([`shared_cluster`]),
    /// under a key prefix of its own.
    RedisCluster,
}

tokio::task_local! {
    static ENGINE: EngineChoice;
}

/// Runs `f` with servers on `engine`: the same scenario, another engine.
pub async fn with_engine<F: std::future::Future>(engine: EngineChoice, f: F) -> F::Output {
    ENGINE.scope(engine, f).await
}

/// A Redis engine on `redis` with test timings.
pub async fn redis_engine(redis: &RedisServer, hub_config: &HubConfig) -> Arc<RedisEngine> {
    let mut config = RedisConfig::new(&redis.url(), hub_config.history);
    config.command_timeout = Duration::from_millis(500);
    config.max_reconnect_delay = Duration::from_millis(200);
    Arc::new(RedisEngine::connect(config).await.expect("redis engine"))
}

/// [`RedisConfig`] for `url` (a `redis://` or `redis-cluster://` URL) with
/// test timings: commands time out after 500 ms, reconnections back off up
/// to 200 ms.
pub fn redis_config(url: &str, hub_config: &HubConfig) -> RedisConfig {
    let mut config = RedisConfig::new(url, hub_config.history);
    config.command_timeout = Duration::from_millis(500);
    config.max_reconnect_delay = Duration::from_millis(200);
    config
}

/// A Redis engine on `url` with test timings ([`redis_config`]).
pub async fn redis_engine_url(url: &str, hub_config: &HubConfig) -> Arc<RedisEngine> {
    let config = redis_config(url, hub_config);
    Arc::new(RedisEngine::connect(config).await.expect("redis engine"))
}

/// One Redis Cluster for the whole test binary, started on first use (a
/// cluster per test would cost seconds each). Statics are never dropped:
/// its nodes die with the binary (see `test_cluster`). Tests share it
/// under distinct key prefixes ([`cluster_engine`]).
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: LazyLock<RedisCluster> = LazyLock::new(RedisCluster::start);
    &CLUSTER
}

/// A Redis engine on [`shared_cluster`] whose keys no other engine of this
/// binary shares (prefix `herald:tN:`).
pub async fn cluster_engine(hub_config: &HubConfig) -> Arc<RedisEngine> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Starting the cluster blocks for a few seconds: not on a runtime thread.
    let url = tokio::task::spawn_blocking(|| shared_cluster().url())
        .await
        .expect("start the shared redis cluster");
    let mut config = redis_config(&url, hub_config);
    config.prefix = format!("herald:t{}:", NEXT.fetch_add(1, Ordering::Relaxed));
    Arc::new(RedisEngine::connect(config).await.expect("redis engine"))
}

pub fn quick_http() -> HttpConfig {
    HttpConfig {
        keepalive: Duration::from_secs(5),
        ..HttpConfig::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(HubConfig::default(), quick_http()).await
    }

    pub async fn start_with(hub_config: HubConfig, http_config: HttpConfig) -> TestServer {
        let choice = ENGINE.try_with(|e| *e).unwrap_or(EngineChoice::Memory);
        let (engine, redis): (Arc<dyn Engine>, _) = match choice {
            EngineChoice::Memory => (Arc::new(MemoryEngine::new(hub_config.history)), None),
            EngineChoice::Redis => {
                let redis = Arc::new(RedisServer::start());
                (redis_engine(&redis, &hub_config).await, Some(redis))
            }
            EngineChoice::RedisCluster => (cluster_engine(&hub_config).await, None),
        };
        let mut s = TestServer::start_on(
            "127.0.0.1:0".parse().unwrap(),
            engine,
            hub_config,
            http_config,
        )
        .await;
        s.redis = redis;
        s
    }

    /// Starts on `addr` over an existing engine (a restart keeps its history).
    pub async fn start_on(
        addr: SocketAddr,
        engine: Arc<dyn Engine>,
        hub_config: HubConfig,
        http_config: HttpConfig,
    ) -> TestServer {
        let hub = Hub::new(engine.clone(), hub_config.clone());
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = listener.expect("bind");
        let addr = listener.local_addr().unwrap();
        let router = herald_http::router(hub.clone(), http_config.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let options = herald_server::ServeOptions {
            close_timeout: Some(http_config.write_timeout),
            ..Default::default()
        };
        let server_metrics = options.metrics.clone();
        let task = tokio::spawn({
            let hub = hub.clone();
            async move {
                herald_server::serve_with(listener, router, hub, options, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            }
        });
        let base = format!("http://{addr}");
        TestServer {
            addr,
            client: Client::new(&base).unwrap(),
            base,
            hub,
            engine,
            redis: None,
            hub_config,
            http_config,
            server_metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Stops, then starts again on the same address over the same engine.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        let mut s = TestServer::start_on(
            self.addr,
            self.engine.clone(),
            self.hub_config.clone(),
            self.http_config.clone(),
        )
        .await;
        s.redis = self.redis.take();
        s
    }

    pub async fn publish(
        &self,
        topic: &str,
        data: serde_json::Value,
        event: Option<&str>,
    ) -> String {
        self.client
            .publish(topic, data, event)
            .await
            .expect("publish")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits (bounded) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
