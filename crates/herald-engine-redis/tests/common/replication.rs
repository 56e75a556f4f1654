//! A master and its replica for the tests that need replication
//! (`replicas.rs`, `faults.rs`): throw-away `redis-server`s on free
//! loopback ports, signals to stall a replica, and a failover's lost
//! writes simulated on the master.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Event, Topic};
use herald_engine_redis::test_server::RedisServer;
use herald_engine_redis::RedisEngine;

/// Sends `sig` (`-STOP`, `-CONT`) to `pid`. Panics if it cannot.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// A master (AOF, fsync always) with one replica whose link is up.
pub fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start_persistent();
    let replica = RedisServer::start_persistent();
    let port = master.addr().port().to_string();
    replica.command(&["REPLICAOF", "127.0.0.1", &port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !master
        .command(&["INFO", "replication"])
        .contains("state=online")
    {
        assert!(Instant::now() < deadline, "the replica never came online");
        std::thread::sleep(Duration::from_millis(50));
    }
    (master, replica)
}

/// Drops the events of `published` after `keep` from the topic, as a
/// failover to a replica that had not received them does.
pub fn lose_after(
    redis: &RedisServer,
    e: &RedisEngine,
    t: &Topic,
    published: &[Arc<Event>],
    keep: u64,
) {
    for ev in published.iter().filter(|ev| ev.position.seq > keep) {
        let id = format!("{}-{}", ev.position.seq, ev.published_at_ms);
        redis.command(&["XDEL", &e.keys().stream(t), &id]);
    }
    redis.command(&["HSET", &e.keys().meta(t), "seq", &keep.to_string()]);
}
