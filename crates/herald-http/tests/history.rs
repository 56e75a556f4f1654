//! `GET /v1/history`: paging forward and backward gives every retained
//! event exactly once, in order; limits and bad input are 400s; a stale
//! cursor starts with `herald.gap`; reads are authorized like subscribes.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use herald_auth::{jwt, Auth, AuthConfig};
use herald_core::{Cursor, HubConfig, Position, Topic};
use herald_http::HttpConfig;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{quick_http, with_engine, EngineChoice, TestServer};

const TOPIC: &str = "log/1";
const PUBLISHED: usize = 120;
const RETAINED: usize = 110;

async fn get(s: &TestServer, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = s
        .client
        .request(
            http::Method::GET,
            &format!("/v1/history?{query}"),
            headers,
            Bytes::new(),
        )
        .await
        .expect("request");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).expect("JSON body"))
}

async fn page(s: &TestServer, query: &str) -> (Vec<u64>, String) {
    let (status, v) = get(s, query, &[]).await;
    assert_eq!(status, 200, "{query}: {v}");
    let events = v["events"].as_array().unwrap();
    for e in events {
        assert_eq!(
            (e["type"].as_str(), e["topic"].as_str()),
            (Some("event"), Some(TOPIC))
        );
        assert!(e["id"].is_string() && e["published_at"].is_u64(), "{e}");
    }
    let data = events
        .iter()
        .map(|e| e["data"]["n"].as_u64().unwrap())
        .collect();
    (data, v["cursor"].as_str().unwrap().to_owned())
}

async fn paging(engine: EngineChoice) {
    let mut hub = HubConfig::default();
    hub.history.max_events = RETAINED;
    let s = TestServer::start_with(hub, quick_http()).await;
    for n in 0..PUBLISHED {
        s.publish(TOPIC, json!({ "n": n }), None).await;
    }
    let retained: Vec<u64> = ((PUBLISHED - RETAINED) as u64..PUBLISHED as u64).collect();
    // Without a cursor: the newest `limit` (default 100), oldest first.
    let (newest, _) = page(&s, &format!("topic={TOPIC}")).await;
    assert_eq!(newest, retained[RETAINED - 100..]);
    for limit in [1, 7, 50, 1000] {
        // Forward from the oldest, page by page.
        let mut got = Vec::new();
        let mut after = "earliest".to_owned();
        loop {
            let (data, cursor) =
                page(&s, &format!("topic={TOPIC}&limit={limit}&after={after}")).await;
            assert!(data.len() <= limit);
            if data.is_empty() {
                assert_eq!(cursor, after, "{engine:?}: an empty page keeps its cursor");
                break;
            }
            got.extend(data);
            after = cursor;
        }
        assert_eq!(got, retained, "{engine:?} forward, limit {limit}");
        // The last forward cursor resumes after the newest event: quiet.
        let (data, _) = page(&s, &format!("topic={TOPIC}&after={after}")).await;
        assert!(data.is_empty());
        // Backward from the head, page by page.
        let mut got: Vec<u64> = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let q = match &before {
                Some(b) => format!("topic={TOPIC}&limit={limit}&before={b}"),
                None => format!("topic={TOPIC}&limit={limit}"),
            };
            let (mut data, cursor) = page(&s, &q).await;
            assert!(data.len() <= limit);
            if data.is_empty() {
                break;
            }
            data.extend(got);
            got = data;
            before = Some(cursor);
        }
        assert_eq!(got, retained, "{engine:?} backward, limit {limit}");
    }
    // A backward cursor is a resume cursor: forward from it gives its page again.
    let (last3, cursor) = page(&s, &format!("topic={TOPIC}&limit=3")).await;
    let (again, _) = page(&s, &format!("topic={TOPIC}&limit=3&after={cursor}")).await;
    assert_eq!(last3, again);

    // Stale cursors: a gap first, then from the oldest retained event.
    let topic = Topic::new(TOPIC).unwrap();
    let epoch = Cursor::decode(&cursor).unwrap().get(&topic).unwrap().epoch;
    for (stale, reason) in [
        (Position::new(epoch ^ 1, 5), "epoch_changed"),
        (Position::new(epoch, 2), "history_truncated"),
    ] {
        let c = Cursor::single(&topic, stale).encode();
        let (status, v) = get(&s, &format!("topic={TOPIC}&limit=2&after={c}"), &[]).await;
        assert_eq!(status, 200);
        let events = v["events"].as_array().unwrap();
        assert_eq!(events[0]["event"], "herald.gap", "{v}");
        assert_eq!(events[0]["data"]["reason"], reason, "{v}");
        assert_eq!(events[1]["data"]["n"], retained[0], "{v}");
    }

    // Bad input: 400 with the JSON error body.
    let other = Cursor::single(&Topic::new("else").unwrap(), Position::new(epoch, 1)).encode();
    for (q, code) in [
        (format!("topic={TOPIC}&limit=0"), "invalid_limit"),
        (format!("topic={TOPIC}&limit=1001"), "invalid_limit"),
        (format!("topic={TOPIC}&limit=ten"), "invalid_limit"),
        (format!("topic={TOPIC}&after=zzz"), "invalid_cursor"),
        (format!("topic={TOPIC}&before=%21"), "invalid_cursor"),
        (format!("topic={TOPIC}&after={other}"), "invalid_cursor"),
        (
            format!("topic={TOPIC}&after={cursor}&before={cursor}"),
            "invalid_query",
        ),
        ("limit=5".to_owned(), "invalid_topic"),
        ("topic=a%ff".to_owned(), "invalid_topic"),
    ] {
        let (status, v) = get(&s, &q, &[]).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{q}: {v}"
        );
        assert!(v["error"]["message"].is_string(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_memory() {
    with_engine(EngineChoice::Memory, paging(EngineChoice::Memory)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_redis() {
    with_engine(EngineChoice::Redis, paging(EngineChoice::Redis)).await
}

const SECRET: &[u8] = b"history-test-secret-0123456789abcdef";

/// History needs subscribe rights: 401 without a credential (unless the
/// topic is public), 403 on another user's topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_authorized() {
    let http = HttpConfig {
        auth: Arc::new(
            Auth::new(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                public: vec!["news/**".into()],
                ..AuthConfig::default()
            })
            .unwrap(),
        ),
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let now = herald_auth::now();
    let claims = jwt::Claims {
        sub: Some("alice".into()),
        exp: now + 120,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["users/{sub}/**".into()],
            ..Default::default()
        },
        info: None,
    };
    let bearer = format!(
        "Bearer {}",
        jwt::sign(&claims, SECRET, false, None).unwrap()
    );
    let auth = [("authorization", bearer.as_str())];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Headers, u16); 5] = [
        ("users/alice/inbox", &[], 401),
        ("users/alice/inbox", &auth, 200),
        ("users/bob/inbox", &auth, 403),
        ("news/today", &[], 200),
        ("news/today", &auth, 200),
    ];
    for (topic, headers, want) in cases {
        let (status, v) = get(&s, &format!("topic={topic}"), headers).await;
        assert_eq!(status, want, "{topic}: {v}");
        if want == 200 {
            assert_eq!(v["events"], json!([]));
        } else {
            assert!(v["error"]["code"].is_string(), "{v}");
        }
    }
}

/// A page holds at most `poll_max_bytes` of event JSON (one event always),
/// so a large `limit` over large events cannot pin a gigabyte per request;
/// paging on from each page's cursor still gives every event once, in
/// order, both ways. An ephemeral topic answers an empty page, no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_bounded_in_bytes_and_ephemeral_topics_answer_empty() {
    use herald_core::policy::{PolicyRule, TopicPolicies, TopicPolicy};
    let rule = PolicyRule {
        pattern: herald_core::topic_pattern::TopicPattern::parse("live/**").unwrap(),
        policy: TopicPolicy {
            history: Some(0),
            ..TopicPolicy::DEFAULT
        },
    };
    let hub = HubConfig {
        policies: Arc::new(TopicPolicies::new(vec![rule])),
        ..HubConfig::default()
    };
    let http = HttpConfig {
        poll_max_bytes: 100_000,
        ..quick_http()
    };
    let s = TestServer::start_with(hub, http).await;
    let big = "x".repeat(30_000);
    for n in 0..10 {
        s.publish("big/1", json!({ "n": n, "pad": big }), None)
            .await;
    }
    let numbers = |v: &Value| -> Vec<u64> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect()
    };
    // Forward: pages of 3 (3 × ~30 KB fit in 100 KB, 4 do not).
    let mut got = Vec::new();
    let mut after = "earliest".to_owned();
    for _ in 0..10 {
        let (status, v) = get(&s, &format!("topic=big/1&limit=1000&after={after}"), &[]).await;
        assert_eq!(status, 200);
        let page = numbers(&v);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3, "{page:?}");
        got.extend(page);
        after = v["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, (0..10).collect::<Vec<u64>>());
    // Backward: the newest that fit, then older pages.
    let mut got = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10 {
        let q = match &before {
            Some(c) => format!("topic=big/1&limit=1000&before={c}"),
            None => "topic=big/1&limit=1000".to_owned(),
        };
        let (_, v) = get(&s, &q, &[]).await;
        let page = numbers(&v);
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3, "{page:?}");
        got.splice(0..0, page);
        before = Some(v["cursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, (0..10).collect::<Vec<u64>>());
    // One event larger than the bound still comes, alone.
    s.publish(
        "huge/1",
        json!({ "n": 0, "pad": "y".repeat(200_000) }),
        None,
    )
    .await;
    let (_, v) = get(&s, "topic=huge/1&limit=10", &[]).await;
    assert_eq!(numbers(&v), [0]);

    // Ephemeral: nothing kept, no gap, whatever the cursor.
    let id = s.publish("live/1", json!("gone"), None).await;
    for q in [
        "topic=live/1".to_owned(),
        "topic=live/1&after=earliest".to_owned(),
        format!("topic=live/1&after={id}"),
        format!("topic=live/1&before={id}"),
    ] {
        let (status, v) = get(&s, &q, &[]).await;
        assert_eq!(status, 200, "{q}: {v}");
        assert_eq!(v["events"], json!([]), "{q}: {v}");
    }
}
