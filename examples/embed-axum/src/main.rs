//! Nest Herald inside your own axum application and publish from your code.
//!
//! Run: `cargo run -p embed-axum`, then
//! `curl -N 'localhost:3000/realtime/v1/sse?topic=orders/42'` in one terminal
//! and `curl -X POST localhost:3000/orders/42/ship` in another.
//!
//! Only the router (`herald-http`) is compiled in: your own server
//! (`axum::serve` here) accepts the connections, so there is no TLS server,
//! certificate generation or HTTP/1.1 push path from `herald-server`.
use axum::{extract::Path, routing::post, Router};
use herald_core::{Data, Hub, HubConfig, NewEvent, Topic};
use herald_http::HttpConfig;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let hub = Hub::memory(HubConfig::default());
    let app = Router::new()
        .route("/orders/{id}/ship", post(ship))
        .with_state(hub.clone())
        .nest("/realtime", herald_http::router(hub, HttpConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

/// Your business logic: after an order ships, tell whoever is watching it.
async fn ship(axum::extract::State(hub): axum::extract::State<Hub>, Path(id): Path<u64>) -> String {
    let topic = Topic::new(&format!("orders/{id}")).expect("valid topic");
    let data = Data::from_json(&serde_json::json!({"orderId": id, "status": "shipped"}));
    match hub
        .publish(NewEvent::new(topic, data).named("order-update"))
        .await
    {
        Ok(event) => format!("published {}\n", event.id()),
        Err(e) => format!("failed: {e}\n"),
    }
}
