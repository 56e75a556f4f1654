//! Tokens beyond the table: one-time tokens (single use, short-lived, race
//! safe), long-lived tokens refused in URLs, cookie WebSockets and the
//! `Origin`.

use super::*;

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
    // Expired refused: the token outlives its 300 ms (the sleep is the
    // scenario).
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
