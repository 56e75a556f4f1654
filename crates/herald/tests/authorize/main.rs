//! The auth table: every action × every transport that carries it × every
//! credential source × every kind of credential, against the real
//! `herald serve` binary (DESIGN.md, "Every action is authorized, on every
//! transport"). Each cell states its expected outcome, and a watcher on the
//! forbidden topic checks that nothing a refused attempt sent ever reached it.
//!
//! Actions: subscribe (SSE, WebSocket, long poll, SSE over HTTP/2), publish
//! (HTTP, WebSocket, HTTP/2), token exchange (HTTP, HTTP/2), starting an LLM
//! generation (HTTP, HTTP/2), history reads (HTTP, HTTP/2), presence reads
//! (HTTP, WebSocket, HTTP/2; the server tracks presence on `users/**`). Sources: `Authorization: Bearer`, the cookie,
//! `?token=`, a one-time token from `POST /v1/tokens`, and the WebSocket
//! `auth` message.

#[path = "../process/mod.rs"]
mod process;

mod admin_stats;
mod forged;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use herald_auth::jwt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

const SECRET: &str = "authorize-table-secret-0123456789abcdef";
const KEY: &str = "authorize-table-publisher-key-0123";
const MINE: &str = "users/alice/inbox";
const THEIRS: &str = "users/bob/inbox";
const WAIT: Duration = Duration::from_secs(5);

use process::ServeProcess as Server;

fn start(extra: &[&str]) -> Server {
    let mut cmd = Command::new(process::BIN);
    cmd.args([
        "serve",
        "--engine",
        "memory",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--publish-key",
        KEY,
        "--public",
        "news/**",
        "--llm-offline-delay",
        "1ms",
    ])
    .args(extra);
    Server::spawn(cmd)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Subscribe,
    Publish,
    Exchange,
    Generate,
    History,
    Presence,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Sse,
    Ws,
    Poll,
    Http,
    SseH2,
    HttpH2,
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
enum Cred {
    /// A valid token granting the action.
    Allowed,
    /// A valid token that does not grant it (another user's topic, no `llm` claim).
    Forbidden,
    Expired,
    BadSignature,
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Got {
    Ok,
    Unauthorized,
    Forbidden,
}

fn token(action: Action, cred: Cred) -> Option<String> {
    let now = herald_auth::now();
    let claims = |exp: u64, llm: bool| jwt::Claims {
        sub: Some("alice".into()),
        exp,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["users/{sub}/**".into()],
            publish: vec!["users/{sub}/**".into()],
            llm,
            admin: false,
        },
        info: None,
    };
    let sign = |c: &jwt::Claims, key: &str| jwt::sign(c, key.as_bytes(), false, None).unwrap();
    match cred {
        Cred::Allowed => Some(sign(&claims(now + 120, action == Action::Generate), SECRET)),
        Cred::Forbidden => Some(sign(&claims(now + 120, false), SECRET)),
        Cred::Expired => Some(sign(&claims(now - 120, true), SECRET)),
        Cred::BadSignature => Some(sign(
            &claims(now + 120, true),
            "not-the-server-secret-0123456789abcdef",
        )),
        Cred::Missing => None,
    }
}

fn expected(action: Action, via: Via, cred: Cred) -> Got {
    match cred {
        Cred::Expired | Cred::BadSignature | Cred::Missing => Got::Unauthorized,
        // Only a header or cookie credential may be exchanged.
        Cred::Allowed if action == Action::Exchange => match via {
            Via::Header | Via::Cookie => Got::Ok,
            _ => Got::Unauthorized,
        },
        Cred::Allowed => Got::Ok,
        Cred::Forbidden => Got::Forbidden,
    }
}

fn status_got(status: u16) -> Got {
    match status {
        200 => Got::Ok,
        401 => Got::Unauthorized,
        403 => Got::Forbidden,
        other => panic!("unexpected status {other}"),
    }
}

/// Headers and query string presenting `tok` from `via`; `Err` when the
/// one-time exchange itself was refused.
async fn present(
    s: &Server,
    via: Via,
    tok: &Option<String>,
) -> Result<(Vec<(String, String)>, String), Got> {
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
                    Bytes::new(),
                )
                .await
                .unwrap();
            if r.status() != 200 {
                return Err(status_got(r.status().as_u16()));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
            assert!(v["expires_in"].as_u64().unwrap() > 0);
            (vec![], format!("token={}", v["token"].as_str().unwrap()))
        }
        Via::WsMessage => (vec![], String::new()),
    })
}

/// Sends one request over HTTP/1.1 (the shared client) or HTTP/2 (h2c by
/// prior knowledge, a connection of its own).
async fn send(
    s: &Server,
    h2: bool,
    method: http::Method,
    path: &str,
    headers: &[(String, String)],
    body: Option<serde_json::Value>,
) -> http::Response<Incoming> {
    let mut h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body_bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    if !body_bytes.is_empty() {
        h.push(("content-type", "application/json"));
    }
    if !h2 {
        return s
            .client
            .request(method, path, &h, body_bytes)
            .await
            .unwrap();
    }
    let addr = &s.base["http://".len()..];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", s.base));
    for (k, v) in &h {
        req = req.header(*k, *v);
    }
    sender
        .send_request(req.body(Full::new(body_bytes)).unwrap())
        .await
        .unwrap()
}

/// Reads `body` until `needle` shows up (bounded by [`WAIT`]).
async fn read_until(mut body: Incoming, needle: &str) {
    let mut text = String::new();
    while !text.contains(needle) {
        let f = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the event in time")
            .unwrap_or_else(|| panic!("the stream ended before {needle:?}: {text:?}"))
            .unwrap();
        if let Ok(d) = f.into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
    }
}

/// Publishes `hello` on `topic` as the backend every 50 ms until dropped.
fn republish(s: &Server, topic: &str) -> AbortOnDrop {
    let client = s.client.clone().with_token(KEY);
    let topic = topic.to_owned();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let body = json!({"topic": topic, "data": "hello"}).to_string();
            client.publish_raw(body, "application/json").await.unwrap();
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

async fn publish_as_backend(s: &Server, topic: &str, data: &str) {
    let (st, v) = s
        .client
        .clone()
        .with_token(KEY)
        .publish_raw(
            json!({"topic": topic, "data": data}).to_string(),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{v}");
}

async fn attempt(s: &Server, action: Action, transport: Transport, via: Via, cred: Cred) -> Got {
    let tok = token(action, cred);
    let (mut headers, query) = match present(s, via, &tok).await {
        Ok(x) => x,
        Err(got) => return got,
    };
    let topic = if cred == Cred::Forbidden {
        THEIRS
    } else {
        MINE
    };
    let q = |path: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}{sep}{query}")
        }
    };
    let h2 = matches!(transport, Transport::SseH2 | Transport::HttpH2);
    match (action, transport) {
        (Action::Subscribe, Transport::Ws) | (Action::Publish, Transport::Ws) => {
            ws_attempt(s, action, via, &tok, &headers, &q(""), topic).await
        }
        (Action::Subscribe, _) => {
            let path = if transport == Transport::Poll {
                q(&format!("/v1/poll?topic={topic}&timeout=3"))
            } else {
                q(&format!("/v1/sse?topic={topic}"))
            };
            // An event published while the request is open must reach an
            // allowed subscriber (a held poll answers with it): the backend
            // publishes until the subscriber has it, instead of guessing when
            // it subscribed. Only an attempt expected to succeed gets one:
            // the forbidden topic is watched.
            let _publisher = (cred == Cred::Allowed).then(|| republish(s, topic));
            let resp = send(s, h2, http::Method::GET, &path, &headers, None).await;
            if resp.status() != 200 {
                return status_got(resp.status().as_u16());
            }
            read_until(resp.into_body(), "hello").await;
            Got::Ok
        }
        (Action::Publish, _) => {
            let body = json!({"topic": topic, "data": "x"});
            let r = send(
                s,
                h2,
                http::Method::POST,
                &q("/v1/publish"),
                &headers,
                Some(body),
            )
            .await;
            status_got(r.status().as_u16())
        }
        (Action::Presence, Transport::Ws) => {
            ws_attempt(s, action, via, &tok, &headers, &q(""), topic).await
        }
        (Action::Presence, _) => {
            let path = q(&format!("/v1/presence?topic={topic}"));
            let r = send(s, h2, http::Method::GET, &path, &headers, None).await;
            status_got(r.status().as_u16())
        }
        (Action::History, _) => {
            let path = q(&format!("/v1/history?topic={topic}"));
            let r = send(s, h2, http::Method::GET, &path, &headers, None).await;
            status_got(r.status().as_u16())
        }
        (Action::Exchange, _) => {
            let r = send(s, h2, http::Method::POST, &q("/v1/tokens"), &headers, None).await;
            status_got(r.status().as_u16())
        }
        (Action::Generate, _) => {
            headers.retain(|(k, _)| k != "content-type");
            let body = json!({"messages": [{"role": "user", "content": "hi [tokens:2]"}]});
            let r = send(
                s,
                h2,
                http::Method::POST,
                &q("/v1/llm/chat"),
                &headers,
                Some(body),
            )
            .await;
            let st = r.status().as_u16();
            if st == 200 {
                // Let the two-token answer finish so per-user slots stay free
                // (a pause, not a wait on anything observable here).
                let v: serde_json::Value =
                    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes())
                        .unwrap();
                assert!(v["topic"].as_str().unwrap().starts_with("llm/"), "{v}");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            status_got(st)
        }
    }
}

async fn ws_attempt(
    s: &Server,
    action: Action,
    via: Via,
    tok: &Option<String>,
    headers: &[(String, String)],
    query: &str,
    topic: &str,
) -> Got {
    let hdrs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut ws = match s.client.ws_with(&hdrs, query).await {
        Ok(ws) => ws,
        Err(herald_client::ClientError::WebSocket(
            tokio_tungstenite::tungstenite::Error::Http(r),
        )) => return status_got(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    };
    if via == Via::WsMessage {
        if let Some(t) = tok {
            ws.send_json(&json!({"type": "auth", "token": t}))
                .await
                .unwrap();
        }
    }
    if action == Action::Subscribe {
        ws.subscribe(topic, None).await.unwrap();
    } else if action == Action::Presence {
        ws.send_json(&json!({"type": "presence", "topic": topic}))
            .await
            .unwrap();
    } else {
        ws.send_json(&json!({"type": "publish", "topic": topic, "data": "forged"}))
            .await
            .unwrap();
    }
    loop {
        let v = tokio::time::timeout(WAIT, ws.next_json())
            .await
            .expect("an answer")
            .unwrap()
            .expect("open");
        match v["type"].as_str() {
            Some("authenticated") => continue,
            Some("published") => return Got::Ok,
            Some("presence") => {
                assert_eq!(v["topic"], topic, "{v}");
                assert!(v["clients"].is_array(), "{v}");
                return Got::Ok;
            }
            Some("subscribed") => break,
            Some("error") => {
                return match v["code"].as_str() {
                    Some("unauthorized") => Got::Unauthorized,
                    Some("forbidden") => Got::Forbidden,
                    _ => panic!("{v}"),
                }
            }
            Some("close") => {
                return match v["code"].as_u64() {
                    Some(4001) => Got::Unauthorized,
                    Some(4003) => Got::Forbidden,
                    _ => panic!("{v}"),
                }
            }
            _ => panic!("{v}"),
        }
    }
    publish_as_backend(s, topic, "hello").await;
    let v = tokio::time::timeout(WAIT, ws.next_of_type("event"))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v["data"], "hello");
    Got::Ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_transport_source_and_credential() {
    let config = std::env::temp_dir().join(format!("herald-authorize-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[[topics]]\npattern = \"users/**\"\npresence = true\n",
    )
    .unwrap();
    let s = start(&[&format!("--config={}", config.display())]);
    // Watch the forbidden topic the whole time: nothing a refused attempt
    // sent may ever reach it.
    let mut watcher = s
        .client
        .clone()
        .with_token(KEY)
        .sse(&[THEIRS], None)
        .await
        .unwrap();
    let table: [(Action, &[Transport]); 6] = [
        (
            Action::Subscribe,
            &[
                Transport::Sse,
                Transport::Ws,
                Transport::Poll,
                Transport::SseH2,
            ],
        ),
        (
            Action::Publish,
            &[Transport::Http, Transport::Ws, Transport::HttpH2],
        ),
        (Action::Exchange, &[Transport::Http, Transport::HttpH2]),
        (Action::Generate, &[Transport::Http, Transport::HttpH2]),
        (Action::History, &[Transport::Http, Transport::HttpH2]),
        (
            Action::Presence,
            &[Transport::Http, Transport::Ws, Transport::HttpH2],
        ),
    ];
    let vias = [
        Via::Header,
        Via::Cookie,
        Via::Query,
        Via::OneTime,
        Via::WsMessage,
    ];
    let creds = [
        Cred::Allowed,
        Cred::Forbidden,
        Cred::Expired,
        Cred::BadSignature,
        Cred::Missing,
    ];
    let mut checked = 0;
    for (action, transports) in table {
        for &transport in transports {
            for via in vias {
                if via == Via::WsMessage && transport != Transport::Ws {
                    continue;
                }
                for cred in creds {
                    if action == Action::Exchange && cred == Cred::Forbidden {
                        continue; // exchanging grants nothing new: no topic to forbid
                    }
                    eprintln!("{action:?} over {transport:?} via {via:?} with {cred:?}");
                    let got = attempt(&s, action, transport, via, cred).await;
                    let want = if via == Via::OneTime
                        && matches!(cred, Cred::Expired | Cred::BadSignature)
                    {
                        Got::Unauthorized // the exchange refuses it
                    } else {
                        expected(action, via, cred)
                    };
                    assert_eq!(
                        got, want,
                        "{action:?} over {transport:?} via {via:?} with {cred:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&config);
    assert!(checked >= 250, "{checked} cells");
    // The forbidden topic only ever saw nothing: no attempt on it was allowed.
    let seen = tokio::time::timeout(Duration::from_millis(500), watcher.next_event()).await;
    assert!(
        seen.is_err(),
        "a refused attempt reached {THEIRS}: {:?}",
        seen.map(|e| e.map(|e| e.map(|e| e.data)))
    );
}
