//! Authentication and authorization on every transport, table-driven:
//! every credential source × every transport × every kind of credential,
//! in process. The cells the auth table against the binary
//! (crates/herald/tests/authorize/) checks the same way are left to it.

#[path = "../support/mod.rs"]
mod support;

mod limits;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use herald_auth::{jwt, Auth, AuthConfig};
use herald_client::Client;
use herald_core::HubConfig;
use herald_http::HttpConfig;
use serde_json::json;
use support::{quick_http, TestServer};

const SECRET: &[u8] = b"contract-suite-secret-0123456789abcdef";
const RSA_PRIVATE: &[u8] = include_bytes!("../../../herald-auth/tests/keys/rsa_private.pem");
const PUBLISH_KEY: &str = "backend-publisher-key-0123456789";
const WAIT: Duration = Duration::from_secs(5);

const MINE: &str = "users/alice/inbox";
const THEIRS: &str = "users/bob/inbox";

fn auth_http() -> HttpConfig {
    HttpConfig {
        auth: Arc::new(
            Auth::new(AuthConfig {
                hs256_secret: Some(SECRET.to_vec()),
                public: vec!["news/**".into()],
                api_keys: vec![PUBLISH_KEY.into()],
                ..AuthConfig::default()
            })
            .unwrap(),
        ),
        ..quick_http()
    }
}

fn claims(ttl: i64) -> jwt::Claims {
    let now = herald_auth::now();
    jwt::Claims {
        sub: Some("alice".into()),
        exp: (now as i64 + ttl) as u64,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["users/{sub}/**".into()],
            publish: vec!["users/{sub}/**".into()],
            ..Default::default()
        },
        info: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cred {
    Valid,
    Expired,
    BadSignature,
    AlgNone,
    WrongAlgorithm,
    Missing,
}

fn token(c: Cred) -> Option<String> {
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    match c {
        Cred::Valid => Some(jwt::sign(&claims(120), SECRET, false, None).unwrap()),
        Cred::Expired => Some(jwt::sign(&claims(-120), SECRET, false, None).unwrap()),
        Cred::BadSignature => Some(
            jwt::sign(
                &claims(120),
                b"not-the-server-secret-0123456789",
                false,
                None,
            )
            .unwrap(),
        ),
        Cred::AlgNone => Some(format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_string(&claims(120)).unwrap())
        )),
        Cred::WrongAlgorithm => Some(jwt::sign(&claims(120), RSA_PRIVATE, true, None).unwrap()),
        Cred::Missing => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Header,
    Cookie,
    Query,
    OneTime,
    WsMessage,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Sse,
    Ws,
    Poll,
    Publish,
}

/// What happened: an HTTP status, a WebSocket close code, or "delivered".
#[derive(Debug, PartialEq)]
enum Outcome {
    Status(u16),
    Close(u16),
    Delivered,
}

/// Headers and query for a credential (None: the one-time exchange itself was refused).
async fn present(
    s: &TestServer,
    via: Via,
    tok: &Option<String>,
) -> Result<(Vec<(String, String)>, String), u16> {
    let Some(t) = tok else {
        return Ok((vec![], String::new()));
    };
    Ok(match via {
        Via::Header => (
            vec![("authorization".into(), format!("Bearer {t}"))],
            String::new(),
        ),
        Via::Cookie => (
            vec![("cookie".into(), format!("session=x; herald_token={t}"))],
            String::new(),
        ),
        Via::Query => (vec![], format!("token={t}")),
        Via::OneTime => {
            let r = s
                .client
                .request(
                    http::Method::POST,
                    "/v1/tokens",
                    &[("authorization", &format!("Bearer {t}"))],
                    bytes::Bytes::new(),
                )
                .await
                .unwrap();
            if r.status() != 200 {
                return Err(r.status().as_u16());
            }
            use http_body_util::BodyExt;
            let v: serde_json::Value =
                serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
            assert!(v["expires_in"].as_u64().unwrap() > 0);
            (vec![], format!("token={}", v["token"].as_str().unwrap()))
        }
        Via::WsMessage => (vec![], String::new()),
    })
}

async fn attempt(
    s: &TestServer,
    transport: Transport,
    via: Via,
    cred: Cred,
    topic: &str,
) -> Outcome {
    let tok = token(cred);
    let (headers, query) = match present(s, via, &tok).await {
        Ok(x) => x,
        Err(status) => return Outcome::Status(status),
    };
    let hdrs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let amp = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    match transport {
        Transport::Sse | Transport::Poll => {
            let path = if transport == Transport::Sse {
                format!("/v1/sse?topic={topic}{amp}")
            } else {
                format!("/v1/poll?topic={topic}&timeout=3{amp}")
            };
            // An event published while the request is open must reach an
            // allowed subscriber (a held poll answers with it): the backend
            // publishes until the subscriber has it, instead of guessing when
            // it subscribed. Nothing is published on the watched topic.
            let _publisher = (topic != THEIRS).then(|| republish(&s.client, topic));
            let resp = s
                .client
                .request(http::Method::GET, &path, &hdrs, bytes::Bytes::new())
                .await
                .unwrap();
            if resp.status() != 200 {
                return Outcome::Status(resp.status().as_u16());
            }
            use http_body_util::BodyExt;
            let mut body = resp.into_body();
            let mut text = String::new();
            while !text.contains("hello") {
                let f = tokio::time::timeout(WAIT, body.frame())
                    .await
                    .expect("event")
                    .unwrap()
                    .unwrap();
                text.push_str(&String::from_utf8_lossy(&f.into_data().unwrap()));
            }
            Outcome::Delivered
        }
        Transport::Publish => {
            let mut h = hdrs.clone();
            h.push(("content-type", "application/json"));
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            let body = json!({"topic": topic, "data": "x"}).to_string();
            let r = s
                .client
                .request(
                    http::Method::POST,
                    &format!("/v1/publish{q}"),
                    &h,
                    body.into(),
                )
                .await
                .unwrap();
            if r.status() == 200 {
                Outcome::Delivered
            } else {
                Outcome::Status(r.status().as_u16())
            }
        }
        Transport::Ws => {
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            let mut ws = match s.client.ws_with(&hdrs, &q).await {
                Ok(ws) => ws,
                Err(herald_client::ClientError::WebSocket(
                    tokio_tungstenite::tungstenite::Error::Http(r),
                )) => return Outcome::Status(r.status().as_u16()),
                Err(e) => panic!("{e}"),
            };
            if via == Via::WsMessage {
                if let Some(t) = &tok {
                    ws.send_json(&json!({"type": "auth", "token": t}))
                        .await
                        .unwrap();
                }
            }
            ws.subscribe(topic, None).await.unwrap();
            loop {
                let v = tokio::time::timeout(WAIT, ws.next_json())
                    .await
                    .expect("answer")
                    .unwrap()
                    .expect("open");
                match v["type"].as_str() {
                    Some("authenticated") => continue,
                    Some("subscribed") => break,
                    Some("close") => return Outcome::Close(v["code"].as_u64().unwrap() as u16),
                    _ => panic!("{v}"),
                }
            }
            publish_as_backend(&s.client, topic, "hello").await;
            let v = tokio::time::timeout(WAIT, ws.next_of_type("event"))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(v["data"], "hello");
            Outcome::Delivered
        }
    }
}

/// Publishes `hello` on `topic` as the backend every 50 ms until dropped.
fn republish(client: &Client, topic: &str) -> AbortOnDrop {
    let client = client.clone();
    let topic = topic.to_owned();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            publish_as_backend(&client, &topic, "hello").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }))
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn publish_as_backend(client: &Client, topic: &str, data: &str) {
    let (st, v) = client
        .clone()
        .with_token(PUBLISH_KEY)
        .publish_raw(
            json!({"topic": topic, "data": data}).to_string(),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
}

fn expected(transport: Transport, via: Via, cred: Cred, allowed_topic: bool) -> Outcome {
    let ws = transport == Transport::Ws;
    let invalid = !matches!(cred, Cred::Valid | Cred::Missing);
    if invalid && via == Via::OneTime {
        return Outcome::Status(401); // the exchange refuses it
    }
    match (cred, allowed_topic) {
        (Cred::Valid, true) => Outcome::Delivered,
        (Cred::Valid, false) if ws => Outcome::Close(4003),
        (Cred::Valid, false) => Outcome::Status(403),
        _ if ws => Outcome::Close(4001),
        _ => Outcome::Status(401),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_transport_and_credential() {
    let s = TestServer::start_with(HubConfig::default(), auth_http()).await;
    // Watch the forbidden topic the whole time: nothing published by a refused
    // attempt may ever reach it.
    let mut watcher = s
        .client
        .clone()
        .with_token(PUBLISH_KEY)
        .sse(&[THEIRS], None)
        .await
        .unwrap();
    let creds = [
        Cred::Valid,
        Cred::Expired,
        Cred::BadSignature,
        Cred::AlgNone,
        Cred::WrongAlgorithm,
        Cred::Missing,
    ];
    let mut checked = 0;
    for transport in [
        Transport::Sse,
        Transport::Ws,
        Transport::Poll,
        Transport::Publish,
    ] {
        for via in [
            Via::Header,
            Via::Cookie,
            Via::Query,
            Via::OneTime,
            Via::WsMessage,
        ] {
            if via == Via::WsMessage && transport != Transport::Ws {
                continue;
            }
            for cred in creds {
                if transport != Transport::Ws
                    && matches!(
                        cred,
                        Cred::Valid | Cred::Expired | Cred::BadSignature | Cred::Missing
                    )
                {
                    // The same cell as in the auth table against the binary
                    // (crates/herald/tests/authorize/), which checks it.
                    // Here: every WebSocket cell (close codes, not only
                    // "refused") and the forged algorithms.
                    continue;
                }
                for (topic, allowed) in [(MINE, true), (THEIRS, false)] {
                    if cred != Cred::Valid && !allowed {
                        continue; // an invalid credential is refused whatever the topic
                    }
                    let got = attempt(&s, transport, via, cred, topic).await;
                    let want = expected(transport, via, cred, allowed);
                    assert_eq!(
                        got, want,
                        "{transport:?} via {via:?} with {cred:?} on {topic}"
                    );
                    checked += 1;
                }
            }
        }
    }
    // 35 WebSocket cells, and 24 with a forged algorithm elsewhere.
    assert!(checked >= 59, "{checked}");
    // Public topics need no credential; anonymous publishing does.
    assert_eq!(
        attempt(&s, Transport::Sse, Via::Header, Cred::Missing, "news/today").await,
        Outcome::Delivered
    );
    assert_eq!(
        attempt(&s, Transport::Ws, Via::Header, Cred::Missing, "news/today").await,
        Outcome::Delivered
    );
    assert_eq!(
        attempt(
            &s,
            Transport::Poll,
            Via::Header,
            Cred::Missing,
            "news/today"
        )
        .await,
        Outcome::Delivered
    );
    assert_eq!(
        attempt(
            &s,
            Transport::Publish,
            Via::Header,
            Cred::Missing,
            "news/today"
        )
        .await,
        Outcome::Status(401)
    );
    // The only events the watcher ever saw are the backend's own "hello"s.
    let mut seen = 0;
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_millis(300), watcher.next_event()).await
    {
        assert_eq!(e.data, "hello", "a refused publish reached {THEIRS}");
        seen += 1;
    }
    assert_eq!(
        seen, 0,
        "no attempt on {THEIRS} was allowed, so no hello either"
    );
}
