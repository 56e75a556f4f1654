//! Herald as a library: its router nested in another axum app, served by
//! `axum::serve`, publishing from application code.

use herald_core::{Data, Hub, HubConfig, NewEvent, Topic};
use herald_http::HttpConfig;

#[tokio::test]
async fn nested_router_and_publish_from_code() {
    let hub = Hub::memory(HubConfig::default());
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .nest(
            "/realtime",
            herald_http::router(hub.clone(), HttpConfig::default()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = herald_client::Client::new(&format!("http://{addr}/realtime")).unwrap();
    let mut stream = client.sse(&["orders/42"], None).await.unwrap();
    let topic = Topic::new("orders/42").unwrap();
    let data = Data::from_json(&serde_json::json!({"status": "shipped"}));
    let published = hub
        .publish(NewEvent::new(topic, data).named("order-update"))
        .await
        .unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next_event())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.event, "order-update");
    assert_eq!(e.data, r#"{"status":"shipped"}"#);
    assert_eq!(e.id, published.id());
}
