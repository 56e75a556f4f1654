//! Authentication and authorization on every transport, table-driven:
//! every credential source × every transport × every kind of credential.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_auth::{jwt, Auth, AuthConfig};
use herald_client::Client;
use herald_core::HubConfig;
use herald_http::HttpConfig;
use serde_json::json;
use support::{quick_http, TestServer};

const SECRET: &[u8] = b"contract-suite-secret-0123456789abcdef";
const RSA_PRIVATE: &[u8] = include_bytes!("../../herald-auth/tests/keys/rsa_private.pem");
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
            // An event published shortly after the request starts must reach
            // an allowed subscriber (a held poll answers with it).
            let client = s.client.clone();
            let t = topic.to_owned();
            let publisher = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                publish_as_backend(&client, &t, "hello").await;
            });
            let resp = s
                .client
                .request(http::Method::GET, &path, &hdrs, bytes::Bytes::new())
                .await
                .unwrap();
            if resp.status() != 200 {
                publisher.abort();
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
    assert!(checked >= 100, "{checked}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_tokens_are_single_use_short_lived_and_race_safe() {
    let mut http = auth_http();
    http.auth = Arc::new(
        Auth::new(AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            one_time_ttl: Duration::from_millis(300),
            ..AuthConfig::default()
        })
        .unwrap(),
    );
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let bearer = format!("Bearer {}", token(Cred::Valid).unwrap());
    let issue = || async {
        let r = s
            .client
            .request(
                http::Method::POST,
                "/v1/tokens",
                &[("authorization", &bearer)],
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        use http_body_util::BodyExt;
        let v: serde_json::Value =
            serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let status = |path: String| {
        let c = s.client.clone();
        async move {
            c.request(http::Method::GET, &path, &[], bytes::Bytes::new())
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Second use refused.
    let ot = issue().await;
    assert_eq!(
        status(format!("/v1/poll?topic={MINE}&timeout=0&token={ot}")).await,
        200
    );
    assert_eq!(
        status(format!("/v1/poll?topic={MINE}&timeout=0&token={ot}")).await,
        401
    );
    // Expired refused.
    let ot = issue().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(format!("/v1/poll?topic={MINE}&timeout=0&token={ot}")).await,
        401
    );
    // Concurrent uses: exactly one wins.
    for _ in 0..5 {
        let ot = issue().await;
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                tokio::spawn(status(format!(
                    "/v1/poll?topic={MINE}&timeout=0&token={ot}"
                )))
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap() == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 1);
    }
    // The exchange needs a header or cookie credential, not a query token or nothing.
    let r = s
        .client
        .request(http::Method::POST, "/v1/tokens", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let short = token(Cred::Valid).unwrap();
    let r = s
        .client
        .request(
            http::Method::POST,
            &format!("/v1/tokens?token={short}"),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn long_lived_tokens_are_refused_in_urls() {
    let s = TestServer::start_with(HubConfig::default(), auth_http()).await;
    let long = jwt::sign(&claims(3600), SECRET, false, None).unwrap();
    let path = format!("/v1/sse?topic={MINE}&token={long}");
    let r = s
        .client
        .request(http::Method::GET, &path, &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    use http_body_util::BodyExt;
    let body =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("short-lived"), "{body}");
    assert!(!body.contains(&long), "the token must not be echoed");
    // The same token in a header is fine.
    let r = s
        .client
        .request(
            http::Method::GET,
            &format!("/v1/poll?topic={MINE}&timeout=0"),
            &[("authorization", &format!("Bearer {long}"))],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn cookie_websockets_check_the_origin() {
    let mut http = auth_http();
    http.ws_allowed_origins = vec!["https://app.example".into()];
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let cookie = format!("herald_token={}", token(Cred::Valid).unwrap());
    let evil = s
        .client
        .ws_with(
            &[("cookie", &cookie), ("origin", "https://evil.example")],
            "",
        )
        .await;
    match evil {
        Err(herald_client::ClientError::WebSocket(
            tokio_tungstenite::tungstenite::Error::Http(r),
        )) => {
            assert_eq!(r.status(), 403)
        }
        other => panic!("cross-site upgrade was not refused: {:?}", other.is_ok()),
    }
    let mut good = s
        .client
        .ws_with(
            &[("cookie", &cookie), ("origin", "https://app.example")],
            "",
        )
        .await
        .unwrap();
    good.subscribe(MINE, None).await.unwrap();
    assert_eq!(
        good.next_json().await.unwrap().unwrap()["type"],
        "subscribed"
    );
    // A bearer header is not ambient, so any origin may use it.
    let bearer = format!("Bearer {}", token(Cred::Valid).unwrap());
    assert!(s
        .client
        .ws_with(
            &[
                ("authorization", &bearer),
                ("origin", "https://evil.example")
            ],
            ""
        )
        .await
        .is_ok());
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_configured_origins() {
    let s = TestServer::start().await;
    let r = s
        .client
        .request(
            http::Method::OPTIONS,
            "/v1/publish",
            &[("origin", "https://app.example")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let http = HttpConfig {
        cors_origins: vec!["https://app.example".into()],
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let r = s
        .client
        .request(
            http::Method::OPTIONS,
            "/v1/publish",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/poll?topic=a&timeout=0",
            &[("origin", "https://other.example")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_answer_429_and_503_with_retry_after() {
    let http = HttpConfig {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..quick_http()
    };
    let s = TestServer::start_with(HubConfig::default(), http).await;
    let _a = s.client.sse(&["l"], None).await.unwrap();
    let _b = s.client.sse(&["l"], None).await.unwrap();
    // A long poll over the per-address limit: 429 with Retry-After.
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/poll?topic=l&timeout=0",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // An SSE stream over it: a refusal an EventSource understands (200,
    // retry:, herald.disconnect rate_limited, end), so the browser retries.
    let r = s
        .client
        .request(
            http::Method::GET,
            "/v1/sse?topic=l",
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    use http_body_util::BodyExt;
    let body =
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.starts_with("retry: "), "{body:?}");
    assert!(
        body.ends_with("event: herald.disconnect\ndata: {\"reason\":\"rate_limited\"}\n\n"),
        "{body:?}"
    );
    // Another loopback address is another client; the server-wide limit
    // then refuses SSE as `server_full`.
    let other = bind_from("127.0.0.2", s.addr).await;
    let _c = other;
    let other2 = raw_status_from("127.0.0.3", s.addr).await;
    assert_eq!(other2.0, 200);
    assert!(other2.1.contains("herald.disconnect"), "{}", other2.1);
    assert!(other2.1.contains("server_full"), "{}", other2.1);
    // Publishing is not a streaming connection: never limited.
    s.publish("l", json!(1), None).await;
}

/// Opens an SSE connection from `src` and keeps it open.
async fn bind_from(src: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let (stream, status, _) = sse_from(src, to).await;
    assert_eq!(status, 200);
    stream
}

/// The status and the whole answer (read to its end) of `GET /v1/sse` from `src`.
async fn raw_status_from(src: &str, to: std::net::SocketAddr) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let (mut stream, status, mut text) = sse_from(src, to).await;
    let mut buf = [0u8; 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (status, text)
}

/// Opens `GET /v1/sse` from the loopback address `src`; returns the open
/// stream, the status and the first bytes of the answer.
async fn sse_from(src: &str, to: std::net::SocketAddr) -> (tokio::net::TcpStream, u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut stream = sock.connect(to).await.unwrap();
    stream
        .write_all(b"GET /v1/sse?topic=l HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = text[9..12].parse().unwrap();
    (stream, status, text)
}
