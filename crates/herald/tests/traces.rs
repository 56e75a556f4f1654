//! OpenTelemetry traces (`--otlp-endpoint`): a real `herald serve` sends
//! OTLP over HTTP to a small receiver of this test, which decodes the
//! protobuf and checks the span tree of one publish: its parent taken from
//! the `traceparent` header, its `validate`, `store` and `fanout` children,
//! and the connections that delivered it (SSE, WebSocket, a poll) linking
//! to it; a WebSocket publish inside its connection's trace; a malformed
//! `traceparent` ignored, an unsampled one honoured.
#![cfg(feature = "otlp")]

mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use process::{ServeProcess, TempDir, BIN};

/// Every wait of this test: a delivery, an answer, the stop.
const WAIT: Duration = Duration::from_secs(30);

/// The publisher's trace context (W3C Trace Context's own example ids).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// What the receiver took: each export request, decoded.
type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest` is decoded and kept, answered `200` with an
/// empty `ExportTraceServiceResponse`; anything else is refused.
async fn receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let kept = kept.clone();
                async move { Ok::<_, hyper::Error>(export(req, &kept).await) }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, received)
}

async fn export(req: Request<Incoming>, kept: &Received) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/x-protobuf");
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND);
    }
    if !protobuf {
        return answer(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let Ok(body) = req.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST);
    };
    match ExportTraceServiceRequest::decode(body.to_bytes()) {
        Ok(request) => {
            kept.lock().unwrap().push(request);
            answer(StatusCode::OK)
        }
        Err(_) => answer(StatusCode::BAD_REQUEST),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span's attributes, as text (strings as they are, numbers printed).
fn attributes(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs
        .iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    attributes(&span.attributes).remove(key)
}

/// The one span named `name` whose attribute `key` is `value`.
fn the_span<'a>(spans: &'a [Span], name: &str, key: &str, value: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == name && attr(s, key).as_deref() == Some(value))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span with {key}={value}; got: {:#?}",
        summary(spans)
    );
    found[0]
}

/// Names, ids and attributes, for failure messages.
fn summary(spans: &[Span]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} trace={} id={} parent={} links={:?} {:?}",
                s.name,
                hex(&s.trace_id),
                hex(&s.span_id),
                hex(&s.parent_span_id),
                s.links
                    .iter()
                    .map(|l| format!("{}/{}", hex(&l.trace_id), hex(&l.span_id)))
                    .collect::<Vec<_>>(),
                attributes(&s.attributes)
            )
        })
        .collect()
}

fn links_to(span: &Span, target: &Span) -> bool {
    span.links
        .iter()
        .any(|l| l.trace_id == target.trace_id && l.span_id == target.span_id)
}

async fn publish(client: &herald_client::Client, topic: &str, traceparent: &str) {
    let body = serde_json::json!({"topic": topic, "data": {"n": 1}}).to_string();
    let r = tokio::time::timeout(
        WAIT,
        client.request(
            http::Method::POST,
            "/v1/publish",
            &[
                ("content-type", "application/json"),
                ("traceparent", traceparent),
            ],
            body.into(),
        ),
    )
    .await
    .expect("publish answered in time")
    .expect("publish");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_is_traced_from_its_traceparent_to_its_subscribers() {
    let (otlp, received) = receiver().await;
    let dir = TempDir::new("traces");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--otlp-endpoint", &format!("http://{otlp}")])
        .args(["--shutdown-drain", "100ms"])
        .env("HERALD_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = ServeProcess::spawn(cmd);
    let log = server.capture_stderr();
    let client = server.client.clone();

    // Two subscribers of the topic, over SSE and WebSocket.
    let mut sse = client.sse(&["traced/orders"], None).await.unwrap();
    let mut ws = client.ws().await.unwrap();
    ws.subscribe("traced/orders", None).await.unwrap();
    let subscribed = tokio::time::timeout(WAIT, ws.next_of_type("subscribed")).await;
    assert!(matches!(subscribed, Ok(Ok(Some(_)))), "{subscribed:?}");

    // The traced publish, and both deliveries.
    publish(
        &client,
        "traced/orders",
        &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    )
    .await;
    let e = tokio::time::timeout(WAIT, sse.next_event())
        .await
        .expect("SSE delivery in time")
        .unwrap()
        .unwrap();
    assert_eq!(e.data, r#"{"n":1}"#);
    let e = tokio::time::timeout(WAIT, ws.next_of_type("event")).await;
    assert!(matches!(e, Ok(Ok(Some(_)))), "{e:?}");
    // A poll reads it from the retained events: the same event, linked too.
    let polled = client.poll_with(
        &["traced/orders"],
        None,
        Duration::ZERO,
        &[("since", "earliest")],
    );
    let polled = tokio::time::timeout(WAIT, polled).await.unwrap().unwrap();
    assert_eq!(polled.events.len(), 1);

    // A WebSocket publish: its span is a child of the connection's.
    ws.send_json(&serde_json::json!({"type": "publish", "topic": "traced/ws", "data": 2}))
        .await
        .unwrap();
    let published = tokio::time::timeout(WAIT, ws.next_of_type("published")).await;
    assert!(matches!(published, Ok(Ok(Some(_)))), "{published:?}");

    // A malformed traceparent is ignored: that publish starts its own trace.
    publish(&client, "traced/bogus", "00-not-a-trace-context-01").await;
    // A caller's trace that is not sampled is not recorded here either.
    publish(
        &client,
        "traced/unsampled",
        &format!("00-{}-{PARENT_ID}-00", "1".repeat(32)),
    )
    .await;

    // A graceful stop sends what the batch holds: the WebSocket closes
    // first, the SSE stream is ended by the stop.
    let _ = tokio::time::timeout(WAIT, ws.socket.close(None)).await;
    let status = tokio::task::block_in_place(|| server.sigterm(WAIT));
    assert!(status.success(), "{status:?}; log:\n{}", log.text());

    let requests = received.lock().unwrap().clone();
    assert!(!requests.is_empty(), "no OTLP export; log:\n{}", log.text());
    let resources: Vec<_> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|rs| rs.resource.as_ref())
        .map(|r| attributes(&r.attributes))
        .collect();
    assert!(
        resources
            .iter()
            .all(|r| r.get("service.name").map(String::as_str) == Some("herald")),
        "{resources:?}"
    );
    let spans: Vec<Span> = requests
        .into_iter()
        .flat_map(|r| r.resource_spans)
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();

    // The publish: in the publisher's trace, a child of its span.
    let publish = the_span(&spans, "publish", "topic", "traced/orders");
    assert_eq!(hex(&publish.trace_id), TRACE_ID, "{:#?}", summary(&spans));
    assert_eq!(hex(&publish.parent_span_id), PARENT_ID);
    assert_eq!(attr(publish, "events").as_deref(), Some("1"));
    let mut children: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == publish.trace_id && s.parent_span_id == publish.span_id)
        .map(|s| s.name.as_str())
        .collect();
    children.sort_unstable();
    assert_eq!(
        children,
        ["fanout", "store", "validate"],
        "{:#?}",
        summary(&spans)
    );

    // Each connection that delivered it links to the publish span.
    let sse_span = the_span(&spans, "sse", "transport", "sse");
    assert_eq!(attr(sse_span, "topics").as_deref(), Some("1"));
    assert!(links_to(sse_span, publish), "{:#?}", summary(&spans));
    let ws_span = the_span(&spans, "ws", "transport", "ws");
    assert!(links_to(ws_span, publish), "{:#?}", summary(&spans));
    assert_eq!(attr(ws_span, "topics").as_deref(), Some("1"));
    let poll_span = the_span(&spans, "poll", "transport", "poll");
    assert!(links_to(poll_span, publish), "{:#?}", summary(&spans));
    assert_eq!(attr(poll_span, "topics").as_deref(), Some("1"));
    // Connections start traces of their own.
    for conn in [sse_span, ws_span, poll_span] {
        assert!(conn.parent_span_id.is_empty());
        assert_ne!(conn.trace_id, publish.trace_id);
    }

    // The WebSocket publish sits in the connection's trace.
    let ws_publish = the_span(&spans, "publish", "topic", "traced/ws");
    assert_eq!(ws_publish.trace_id, ws_span.trace_id);
    assert_eq!(ws_publish.parent_span_id, ws_span.span_id);

    // The malformed traceparent gave no parent.
    let bogus = the_span(&spans, "publish", "topic", "traced/bogus");
    assert!(bogus.parent_span_id.is_empty(), "{:#?}", summary(&spans));
    assert_ne!(hex(&bogus.trace_id), TRACE_ID);
    let unsampled = "1".repeat(32);
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) != unsampled),
        "{:#?}",
        summary(&spans)
    );
}
