//! The throw-away Redis Cluster of `test_cluster` itself: the cluster and
//! engine tests built on it trust what these check (topology, failover,
//! resharding), so a harness fault is not mistaken for an engine fault.

use std::time::{Duration, Instant};

use herald_engine_redis::test_cluster::{
    key_slot, topic_key, topic_slot, RedisCluster, Role, MASTERS, SLOTS,
};

#[test]
fn starts_with_every_slot_served_by_a_master_with_a_replica() {
    let started = Instant::now();
    let cluster = RedisCluster::start();
    eprintln!("cluster started in {:?}", started.elapsed());

    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 2 * MASTERS, "{nodes:?}");
    let masters = cluster.masters();
    assert_eq!(masters, cluster.initial_masters());
    let served: u32 = nodes.iter().map(|n| n.slot_count()).sum();
    assert_eq!(served, u32::from(SLOTS));
    for m in &masters {
        let replica = cluster.replica_of(*m).expect("a replica");
        assert!(!masters.contains(&replica));
    }
    assert!(nodes.iter().all(|n| !n.failed));

    let url = cluster.url();
    assert!(url.starts_with("redis-cluster://127.0.0.1:"), "{url}");
    assert_eq!(url.matches("node=127.0.0.1:").count(), MASTERS - 1, "{url}");

    // Slots computed here agree with the cluster's, hash tags included.
    for key in ["plain", "herald:{orders/1}:s", "a{b}c", "{}x", "ünï{cødé}"] {
        assert_eq!(key_slot(key), cluster.slot_of(key), "{key}");
    }
    // Topics land where they are asked to, and a write there is served
    // there (elsewhere it is redirected).
    for m in &masters {
        let topics = cluster.topics_on(*m, "t/", 3);
        assert_eq!(topics.len(), 3);
        for t in &topics {
            assert_eq!(cluster.master_of_topic(t), *m, "{t}");
            assert_eq!(cluster.master_of_slot(topic_slot(t)), *m);
        }
        let key = topic_key(&topics[0]);
        assert_eq!(cluster.command(*m, &["SET", &key, "a b"]), "+OK\r\n");
        let other = masters.iter().find(|o| *o != m).unwrap();
        let moved = cluster.command(*other, &["GET", &key]);
        assert!(moved.starts_with("-MOVED"), "{moved}");
    }
}

#[test]
fn a_killed_master_is_replaced_by_its_replica_and_rejoins_as_a_replica() {
    let cluster = RedisCluster::start();
    let master = cluster.initial_masters()[0];
    let replica = cluster.replica_of(master).expect("a replica");
    let topic = cluster.topic_on(master, "fail/");
    let key = topic_key(&topic);
    assert_eq!(cluster.command(master, &["SET", &key, "kept"]), "+OK\r\n");
    // The write has reached the replica before the master dies.
    assert_eq!(cluster.command(master, &["WAIT", "1", "1000"]), ":1\r\n");

    let killed = Instant::now();
    cluster.kill(master);
    assert!(!cluster.is_up(master));
    let took = cluster.wait_healthy(Duration::from_secs(10));
    eprintln!("replica promoted {:?} after the kill", killed.elapsed());
    assert!(took < Duration::from_secs(10));
    // Every node's view follows by gossip, a moment apart.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.master_of_topic(&topic) != replica && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cluster.master_of_topic(&topic), replica);
    assert_eq!(cluster.masters().len(), MASTERS);
    let got = cluster.command(replica, &["GET", &key]);
    if got != "$4\r\nkept\r\n" {
        // Seen once in CI and never again since (nil here after `WAIT`
        // answered 1): what the promoted node says of itself, to find why.
        std::thread::sleep(Duration::from_millis(500));
        let again = cluster.command(replica, &["GET", &key]);
        let info = cluster.command(replica, &["INFO", "replication"]);
        let size = cluster.command(replica, &["DBSIZE"]);
        let nodes = cluster.command(replica, &["CLUSTER", "NODES"]);
        panic!(
            "the promoted replica {replica} lacks the write to {key} on {master}: {got:?}, \
             500 ms later {again:?}; DBSIZE {size:?}; {info}; CLUSTER NODES {nodes}"
        );
    }

    cluster.restart(master);
    cluster.wait_healthy(Duration::from_secs(10));
    let old = cluster
        .nodes()
        .into_iter()
        .find(|n| n.port == master)
        .unwrap();
    assert_eq!((old.role, old.master), (Role::Replica, Some(replica)));

    // A paused replica looks dead to the cluster; resumed, it is back.
    cluster.pause(master);
    assert!(!cluster.is_up(master));
    cluster.resume(master);
    cluster.wait_healthy(Duration::from_secs(10));
}

#[test]
fn reshard_moves_slots_and_their_keys() {
    let cluster = RedisCluster::start();
    let masters = cluster.initial_masters();
    let (from, to) = (masters[0], masters[1]);
    let topics = cluster.topics_on(from, "move/", 20);
    for t in &topics {
        assert_eq!(cluster.command(from, &["SET", &topic_key(t), t]), "+OK\r\n");
    }
    let count = |port: u16| {
        cluster
            .nodes()
            .into_iter()
            .find(|n| n.port == port)
            .unwrap()
            .slot_count()
    };
    let (before_from, before_to) = (count(from), count(to));
    let started = Instant::now();
    cluster.reshard(from, to, 1000);
    eprintln!("1000 slots moved in {:?}", started.elapsed());
    cluster.wait_healthy(Duration::from_secs(10));
    assert_eq!(count(from), before_from - 1000);
    assert_eq!(count(to), before_to + 1000);
    for t in &topics {
        let owner = cluster.master_of_topic(t);
        let value = cluster.command(owner, &["GET", &topic_key(t)]);
        assert_eq!(value, format!("${}\r\n{t}\r\n", t.len()), "{t} on {owner}");
    }
    assert!(
        topics.iter().any(|t| cluster.master_of_topic(t) == to),
        "some of the keys moved"
    );
}
