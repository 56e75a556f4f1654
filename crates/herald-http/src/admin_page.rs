//! The admin page (`herald serve --admin`, [`HttpConfig::admin`]): a static
//! page at `/admin/` and the stats it shows, which every node publishes to
//! [`STATS_TOPIC`] once a second.
//!
//! - `GET /admin/`, `/admin/admin.js`, `/admin/admin.css`: the page, embedded
//!   at compile time from `crates/herald-http/assets/admin/`. It holds no
//!   secret: it asks for the publisher key or a token with the admin claim
//!   (kept in the tab's `sessionStorage` only), reads the stats with
//!   Herald's own browser client (`/client/herald.js`, long polling, which
//!   sends the credential in the `Authorization` header) and calls the
//!   server API (`GET /v1/topics`, `GET /v1/connections`, `POST
//!   /v1/disconnect`) with it. Charts are drawn on a canvas by the page's
//!   own script; nothing is loaded from elsewhere, and a strict
//!   `Content-Security-Policy` says so. `GET /admin` redirects to `/admin/`.
//! - The stats task ([`run_stats`]): once a second a [`Snapshot`] of this
//!   node, published as event `stats` with [`Hub::publish_verbatim`] (never
//!   mirrored into the Mercure log). Who may read it is decided by
//!   [`Auth::authorize`](herald_auth::Auth::authorize), like every topic:
//!   the publisher key, an admin token, or anyone on a server without
//!   authentication; nobody publishes to it through `/v1`.
//!
//! Without `--admin` none of this exists: the paths answer 404 and no
//! snapshot is published.
//!
//! On an engine that spans nodes (Redis) each node publishes its own
//! snapshot to the same topic, and the page keeps the newest of each node,
//! dropping a node silent for more than 5 s. On a single node (memory,
//! embedded) a snapshot is published only while a page is watching, so an
//! idle server writes nothing.
//!
//! [`HttpConfig::admin`]: crate::HttpConfig::admin

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_core::{Data, Delivery, Hub, Metrics, NewEvent, Subscription, Topic, Transport};
use serde::{Deserialize, Serialize};

use crate::AppState;

/// The stats topic: `herald/admin/stats` (see
/// [`Auth::ADMIN_STATS_TOPIC`](herald_auth::Auth::ADMIN_STATS_TOPIC) for who
/// may read it).
pub const STATS_TOPIC: &str = herald_auth::Auth::ADMIN_STATS_TOPIC;

/// The event name of every snapshot.
pub const STATS_EVENT: &str = "stats";

/// How often a node publishes its snapshot.
pub const STATS_PERIOD: Duration = Duration::from_secs(1);

/// The busiest topics a snapshot lists at most.
pub const STATS_TOPICS: usize = 10;

/// How long the engine's readiness check of one snapshot may take before
/// the engine counts as not ready.
const READY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long publishing one snapshot may take; a slower engine loses that
/// snapshot (the next one carries the counts on).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The page's files.
const PAGE: &str = include_str!("../assets/admin/index.html");
const SCRIPT: &str = include_str!("../assets/admin/admin.js");
const STYLE: &str = include_str!("../assets/admin/admin.css");

/// Only the page's own files, its own origin's API, and no framing (the
/// page holds a credential and has buttons that act).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// One node's figures, the data of each `stats` event on [`STATS_TOPIC`]
/// (JSON, field names as here). Counts of publishes and deliveries leave
/// out the stats topic's own traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The node: the 8 hex digits that begin its connection ids (the
    /// `client` of `GET /v1/connections` and presence entries).
    pub node: String,
    /// The engine: `memory`, `embedded` or `redis`.
    pub engine: String,
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub at: u64,
    /// The time the interval counts cover, in milliseconds (about 1000).
    pub interval_ms: u64,
    /// Whether the engine answered its readiness check (as `/readyz` does).
    pub ready: bool,
    /// Why it did not, when it did not.
    pub engine_error: Option<String>,
    /// Open subscriber connections on this node by transport (a held long
    /// poll counts while held; the admin pages' own polls included).
    pub connections: Connections,
    /// Admin pages reading the stats from this node now.
    pub admin_viewers: usize,
    /// Events published through this node during the interval.
    pub published: u64,
    /// Events written to this node's subscribers during the interval.
    pub delivered: u64,
    /// `published` per second.
    pub publishes_per_s: f64,
    /// `delivered` per second.
    pub deliveries_per_s: f64,
    /// Events published through this node since it started.
    pub published_total: u64,
    /// Events written to this node's subscribers since it started.
    pub delivered_total: u64,
    /// Subscribers this node disconnected for falling behind, since it
    /// started.
    pub slow_consumer_disconnects: u64,
    /// The topics with the most subscribers on this node, the busiest
    /// first, at most [`STATS_TOPICS`].
    pub topics: Vec<TopicCount>,
    /// How many topics have subscribers on this node.
    pub topics_total: usize,
}

/// Open connections by transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    /// SSE streams.
    pub sse: i64,
    /// WebSockets.
    pub ws: i64,
    /// Held long polls.
    pub poll: i64,
}

/// A topic and its subscribers on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicCount {
    /// The topic.
    pub topic: String,
    /// Its subscribers on the node.
    pub subscribers: usize,
}

/// The hub's publish and delivery counters, less the stats task's own
/// share, sampled once per snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    published: u64,
    delivered: u64,
}

impl Counts {
    /// `raw` (the hub's counters) less `own` (the stats topic's traffic).
    fn net(raw: Counts, own: Counts) -> Counts {
        Counts {
            published: raw.published.saturating_sub(own.published),
            delivered: raw.delivered.saturating_sub(own.delivered),
        }
    }

    /// What happened since `before` (counters only grow; a smaller value,
    /// from an estimate of the own share, counts as nothing).
    fn since(self, before: Counts) -> Counts {
        Counts {
            published: self.published.saturating_sub(before.published),
            delivered: self.delivered.saturating_sub(before.delivered),
        }
    }

    /// Each count at least `floor`'s: a net count may dip for a moment
    /// (the own share of a delivery counted before the transport counts
    /// it), and must not be counted twice when it comes back.
    fn at_least(self, floor: Counts) -> Counts {
        Counts {
            published: self.published.max(floor.published),
            delivered: self.delivered.max(floor.delivered),
        }
    }
}

/// Per second over `interval`, to one decimal.
fn rate(n: u64, interval: Duration) -> f64 {
    let secs = interval.as_secs_f64().max(0.001);
    (n as f64 / secs * 10.0).round() / 10.0
}

/// The node id of `hub`: the prefix of its connection ids.
fn node_id(hub: &Hub) -> String {
    let id = hub.new_client_id();
    id.split('-').next().unwrap_or_default().to_owned()
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The stats topic.
pub fn stats_topic() -> Topic {
    Topic::new(STATS_TOPIC).expect("the stats topic's name is valid")
}

/// The routes, when the admin page is on; none otherwise (404). Starts the
/// stats task ([`run_stats`]) on the current Tokio runtime: build one
/// router with the admin page per hub, or each publishes its own snapshots.
pub(crate) fn routes(app: &AppState) -> Router<AppState> {
    if !app.config.admin {
        return Router::new();
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(run_stats(app.hub.clone()));
    }
    Router::new()
        .route("/admin", get(redirect))
        .route("/admin/", get(page))
        .route("/admin/index.html", get(page))
        .route("/admin/admin.js", get(script))
        .route("/admin/admin.css", get(style))
}

/// Relative, so that it holds wherever the router is nested.
async fn redirect() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("admin/"))],
    )
        .into_response()
}

async fn page() -> Response {
    serve(PAGE, "text/html; charset=utf-8")
}

async fn script() -> Response {
    serve(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    serve(STYLE, "text/css; charset=utf-8")
}

fn serve(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// What the stats task keeps between two snapshots.
struct Sampler {
    node: String,
    /// The engine spans nodes: publish every snapshot, for the pages on
    /// the other nodes.
    spans_nodes: bool,
    last: Counts,
    last_at: tokio::time::Instant,
    /// The stats topic's own traffic so far: snapshots published here,
    /// and snapshots (of every node) handed to this node's admin pages.
    own: Counts,
}

impl Sampler {
    fn new(hub: &Hub) -> Sampler {
        let raw = raw_counts(hub.metrics());
        Sampler {
            node: node_id(hub),
            spans_nodes: hub.engine().presence_store().is_some(),
            last: raw,
            last_at: tokio::time::Instant::now(),
            own: Counts::default(),
        }
    }

    /// The counts since the last call: (since the node started, since the
    /// last call, over how long).
    fn advance(&mut self, hub: &Hub) -> (Counts, Counts, Duration) {
        let total = Counts::net(raw_counts(hub.metrics()), self.own).at_least(self.last);
        let d = total.since(self.last);
        let interval = self.last_at.elapsed();
        self.last = total;
        self.last_at = tokio::time::Instant::now();
        (total, d, interval)
    }

    /// The next snapshot: counts since the last one (or the last
    /// [`Sampler::advance`]).
    async fn take(&mut self, hub: &Hub, viewers: usize) -> Snapshot {
        let m = hub.metrics();
        let (total, d, interval) = self.advance(hub);
        let topic = stats_topic();
        let (list, mut topics_total) = hub.busiest_topics(STATS_TOPICS + 1);
        if hub.subscribers(&topic) > 0 {
            topics_total = topics_total.saturating_sub(1);
        }
        let topics = list
            .into_iter()
            .filter(|(t, _)| *t != topic)
            .take(STATS_TOPICS)
            .map(|(t, n)| TopicCount {
                topic: t.as_str().to_owned(),
                subscribers: n,
            })
            .collect();
        let engine_error = match tokio::time::timeout(READY_TIMEOUT, hub.engine().ready()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer to the readiness check in {} ms",
                READY_TIMEOUT.as_millis()
            )),
        };
        Snapshot {
            node: self.node.clone(),
            engine: hub.engine().name().to_owned(),
            at: now_ms(),
            interval_ms: interval.as_millis() as u64,
            ready: engine_error.is_none() && !hub.is_shutting_down(),
            engine_error,
            connections: Connections {
                sse: m.open(Transport::Sse),
                ws: m.open(Transport::WebSocket),
                poll: m.open(Transport::Poll),
            },
            admin_viewers: viewers,
            published: d.published,
            delivered: d.delivered,
            publishes_per_s: rate(d.published, interval),
            deliveries_per_s: rate(d.delivered, interval),
            published_total: total.published,
            delivered_total: total.delivered,
            slow_consumer_disconnects: m.slow_consumer_disconnects.load(Relaxed),
            topics,
            topics_total,
        }
    }
}

fn raw_counts(m: &Metrics) -> Counts {
    Counts {
        published: m.events_published.load(Relaxed),
        delivered: m.events_delivered.load(Relaxed),
    }
}

/// A subscription of the stats task itself to [`STATS_TOPIC`], held while
/// admin pages read from this node: every snapshot handed to them passes
/// it too, so that their deliveries can be left out of the counts. `None`
/// when the engine could not subscribe (tried again at the next snapshot).
async fn watch(hub: &Hub) -> Option<Subscription> {
    let mut s = hub.subscribe();
    match s.add(stats_topic(), None).await {
        Ok(_) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "the admin stats could not watch their topic");
            None
        }
    }
}

/// Publishes this node's [`Snapshot`] to [`STATS_TOPIC`] every
/// [`STATS_PERIOD`], until the hub shuts down. On an engine that does not
/// span nodes, only while an admin page is watching. A snapshot the
/// engine refuses is logged once per failure streak; the next one carries
/// the counts on.
pub async fn run_stats(hub: Hub) {
    let topic = stats_topic();
    let mut sampler = Sampler::new(&hub);
    let mut watcher: Option<Subscription> = None;
    let mut tick = tokio::time::interval(STATS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = hub.shutdown_signal();
    tokio::pin!(shutdown);
    let mut failing = false;
    loop {
        let step = {
            let next = async {
                match watcher.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                d = next => Step::Delivered(d),
                _ = tick.tick() => Step::Tick,
            }
        };
        match step {
            // Handed to every admin page on this node (the watcher is one
            // of the topic's subscribers, and not counted).
            Step::Delivered(Delivery::Event(_)) => {
                sampler.own.delivered += hub.subscribers(&topic).saturating_sub(1) as u64;
            }
            Step::Delivered(Delivery::Gap(_)) => {}
            Step::Delivered(Delivery::Closed(_)) => watcher = None,
            Step::Tick => {
                let viewers = hub
                    .subscribers(&topic)
                    .saturating_sub(usize::from(watcher.is_some()));
                // Watch only while pages do: the watcher alone would make
                // the topic look occupied (to webhooks, for instance).
                if viewers == 0 {
                    watcher = None;
                } else if watcher.is_none() && !hub.is_shutting_down() {
                    watcher = watch(&hub).await;
                }
                if viewers == 0 && !sampler.spans_nodes {
                    // Nobody to tell: keep the counts current, publish nothing.
                    sampler.advance(&hub);
                    continue;
                }
                let snapshot = sampler.take(&hub, viewers).await;
                let Ok(v) = serde_json::to_value(&snapshot) else {
                    continue;
                };
                let event = NewEvent::new(topic.clone(), Data::from_json(&v)).named(STATS_EVENT);
                let sent = tokio::time::timeout(PUBLISH_TIMEOUT, hub.publish_verbatim(vec![event]));
                match sent.await {
                    Ok(Ok(_)) => {
                        sampler.own.published += 1;
                        failing = false;
                    }
                    Ok(Err(e)) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "the admin stats could not be published");
                    }
                    Err(_) if !failing => {
                        failing = true;
                        tracing::warn!("the admin stats were not published in time");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What woke the stats task.
enum Step {
    Delivered(Delivery),
    Tick,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_out_the_own_share_and_never_go_back() {
        let raw = Counts {
            published: 10,
            delivered: 30,
        };
        let own = Counts {
            published: 3,
            delivered: 5,
        };
        let net = Counts::net(raw, own);
        assert_eq!(
            net,
            Counts {
                published: 7,
                delivered: 25
            }
        );
        // An estimate of the own share above the raw count is nothing, not
        // a wrap-around.
        let before = Counts {
            published: 8,
            delivered: 20,
        };
        assert_eq!(
            net.since(before),
            Counts {
                published: 0,
                delivered: 5
            }
        );
        assert_eq!(
            net.at_least(before),
            Counts {
                published: 8,
                delivered: 25
            }
        );
        assert_eq!(rate(7, Duration::from_millis(500)), 14.0);
        assert_eq!(rate(1, Duration::from_secs(3)), 0.3);
    }

    #[tokio::test]
    async fn snapshots_count_publishes_connections_and_topics() {
        let hub = Hub::memory(herald_core::HubConfig::default());
        let mut sampler = Sampler::new(&hub);
        assert_eq!(sampler.node.len(), 8, "{}", sampler.node);
        assert!(!sampler.spans_nodes);
        let t = Topic::new("orders/1").unwrap();
        let mut sub = hub.subscribe();
        sub.add(t.clone(), None).await.unwrap();
        let mut stats = hub.subscribe();
        stats.add(stats_topic(), None).await.unwrap();
        let _c = hub.metrics().connection(Transport::WebSocket);
        for i in 0..3 {
            hub.publish(NewEvent::new(t.clone(), Data::Text(i.to_string().into())))
                .await
                .unwrap();
        }
        let s = sampler.take(&hub, 1).await;
        assert_eq!((s.published, s.published_total), (3, 3));
        assert_eq!(
            s.connections,
            Connections {
                sse: 0,
                ws: 1,
                poll: 0
            }
        );
        assert!(s.ready && s.engine_error.is_none());
        assert_eq!(s.engine, "memory");
        // The stats topic is not among the busiest.
        assert_eq!(
            s.topics,
            vec![TopicCount {
                topic: "orders/1".into(),
                subscribers: 1
            }]
        );
        assert_eq!(s.topics_total, 1);
        // A snapshot published by the task is not counted as traffic.
        sampler.own.published += 1;
        hub.publish_verbatim(vec![NewEvent::new(stats_topic(), Data::Text("{}".into()))])
            .await
            .unwrap();
        let s = sampler.take(&hub, 1).await;
        assert_eq!((s.published, s.published_total), (0, 3));
        let json = serde_json::to_value(&s).unwrap();
        for k in [
            "node",
            "engine",
            "at",
            "interval_ms",
            "ready",
            "engine_error",
            "connections",
            "admin_viewers",
            "published",
            "delivered",
            "publishes_per_s",
            "deliveries_per_s",
            "published_total",
            "delivered_total",
            "slow_consumer_disconnects",
            "topics",
            "topics_total",
        ] {
            assert!(json.get(k).is_some(), "{k} in {json}");
        }
    }

    #[tokio::test]
    async fn pages_are_served_with_a_strict_policy() {
        let r = page().await;
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(PAGE.contains("admin.js") && PAGE.contains("admin.css"));
        assert!(SCRIPT.contains("../client/herald.js"));
        assert!(SCRIPT.contains(STATS_TOPIC));
        // Nothing from elsewhere.
        for body in [PAGE, SCRIPT, STYLE] {
            assert!(!body.contains("https://") && !body.contains("http://"));
        }
    }
}
