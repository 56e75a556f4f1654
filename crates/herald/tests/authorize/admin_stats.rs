//! The admin page's stats topic (`herald serve --admin`): read only with
//! the publisher key or a token with the admin claim, never through a
//! public pattern or a token's patterns however wide, and written by
//! nobody through `/v1`, the publisher key included.

use super::*;

const STATS: &str = "herald/admin/stats";

fn wide_token(admin: bool, exp_in: i64) -> String {
    let now = herald_auth::now();
    jwt::sign(
        &jwt::Claims {
            sub: Some(if admin { "root" } else { "eve" }.into()),
            exp: now.saturating_add_signed(exp_in),
            iat: Some(now.saturating_sub(300)),
            nbf: None,
            herald: jwt::HeraldClaim {
                subscribe: vec!["**".into()],
                publish: vec!["**".into()],
                llm: false,
                admin,
            },
            info: None,
        },
        SECRET.as_bytes(),
        false,
        None,
    )
    .unwrap()
}

fn bearer(t: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {t}"))]
}

async fn status_of(
    s: &Server,
    method: http::Method,
    path: &str,
    headers: &[(String, String)],
) -> Got {
    let body = (method == http::Method::POST).then(|| json!({"topic": STATS, "data": "forged"}));
    match send(s, false, method, path, headers, body)
        .await
        .status()
        .as_u16()
    {
        // Past authorization: the topic tracks no presence.
        400 if path.starts_with("/v1/presence") => Got::Ok,
        st => status_got(st),
    }
}

/// Subscribing over SSE, long poll, WebSocket; history and presence reads.
async fn reads(
    s: &Server,
    headers: &[(String, String)],
    token: Option<&str>,
) -> Vec<(&'static str, Got)> {
    let t = "herald%2Fadmin%2Fstats";
    let mut got = vec![
        (
            "sse",
            status_of(s, http::Method::GET, &format!("/v1/sse?topic={t}"), headers).await,
        ),
        (
            "poll",
            status_of(
                s,
                http::Method::GET,
                &format!("/v1/poll?topic={t}&timeout=0"),
                headers,
            )
            .await,
        ),
        (
            "history",
            status_of(
                s,
                http::Method::GET,
                &format!("/v1/history?topic={t}"),
                headers,
            )
            .await,
        ),
        (
            "presence",
            status_of(
                s,
                http::Method::GET,
                &format!("/v1/presence?topic={t}"),
                headers,
            )
            .await,
        ),
    ];
    let mut ws = s.client.ws().await.unwrap();
    if let Some(t) = token {
        ws.send_json(&json!({"type": "auth", "token": t}))
            .await
            .unwrap();
    }
    ws.subscribe(STATS, None).await.unwrap();
    let ws_got = loop {
        let v = tokio::time::timeout(WAIT, ws.next_json())
            .await
            .expect("an answer")
            .unwrap()
            .expect("open");
        match (v["type"].as_str(), v["code"].as_str(), v["code"].as_u64()) {
            (Some("authenticated"), _, _) => continue,
            (Some("subscribed"), _, _) => break Got::Ok,
            (Some("error"), Some("forbidden"), _) | (Some("close"), _, Some(4003)) => {
                break Got::Forbidden
            }
            (Some("error"), Some("unauthorized"), _) | (Some("close"), _, Some(4001)) => {
                break Got::Unauthorized
            }
            _ => panic!("{v}"),
        }
    };
    got.push(("ws", ws_got));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_topic_is_read_by_admins_only_and_written_by_nobody() {
    // Every topic public: the stats topic still is not.
    let s = start(&["--admin", "--public", "**"]);
    let plain = wide_token(false, 120);
    let admin = wide_token(true, 120);
    let expired_admin = wide_token(true, -120);

    let all = |got: Vec<(&'static str, Got)>, want: Got, who: &str| {
        for (how, g) in got {
            assert_eq!(g, want, "{who} reading the stats over {how}");
        }
    };
    all(
        reads(&s, &[], None).await,
        Got::Unauthorized,
        "an anonymous caller",
    );
    all(
        reads(&s, &bearer(&plain), Some(&plain)).await,
        Got::Forbidden,
        "a token without the admin claim",
    );
    all(
        reads(&s, &bearer(&expired_admin), Some(&expired_admin)).await,
        Got::Unauthorized,
        "an expired admin token",
    );
    all(
        reads(&s, &bearer(&admin), Some(&admin)).await,
        Got::Ok,
        "an admin token",
    );
    // The publisher key reads it over HTTP (it is accepted only in the
    // Authorization header, so not in a WebSocket message).
    for (how, g) in reads(&s, &bearer(KEY), None).await {
        if how != "ws" {
            assert_eq!(g, Got::Ok, "the publisher key reading the stats over {how}");
        }
    }

    // Nobody publishes to it: not the publisher key, not an admin token
    // with `publish: ["**"]`, over HTTP or a WebSocket.
    for who in [KEY, admin.as_str(), plain.as_str()] {
        assert_eq!(
            status_of(&s, http::Method::POST, "/v1/publish", &bearer(who)).await,
            Got::Forbidden
        );
    }
    let batch =
        json!({"events": [{"topic": "news/1", "data": "ok"}, {"topic": STATS, "data": "forged"}]});
    let r = send(
        &s,
        false,
        http::Method::POST,
        "/v1/publish",
        &bearer(KEY),
        Some(batch),
    )
    .await;
    assert_eq!(r.status(), 403);
    let mut ws = s.client.ws().await.unwrap();
    ws.send_json(&json!({"type": "auth", "token": admin}))
        .await
        .unwrap();
    ws.send_json(&json!({"type": "publish", "topic": STATS, "data": "forged", "ref": 7}))
        .await
        .unwrap();
    let v = loop {
        let v = tokio::time::timeout(WAIT, ws.next_json())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if v["type"] != "authenticated" {
            break v;
        }
    };
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_u64()),
        (Some("error"), Some("forbidden"), Some(7)),
        "{v}"
    );

    // What an admin reads is the server's own snapshots, and only those.
    let mut stats = s
        .client
        .clone()
        .with_token(admin.clone())
        .sse(&[STATS], None)
        .await
        .unwrap();
    for _ in 0..2 {
        let e = tokio::time::timeout(WAIT, stats.next_event())
            .await
            .expect("a snapshot")
            .unwrap()
            .unwrap();
        assert_eq!(e.event, "stats");
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["engine"], "memory", "{v}");
        assert!(v["node"].as_str().is_some_and(|n| n.len() == 8), "{v}");
        assert_eq!(v["ready"], true, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_the_stats_topic_stays_closed_and_silent() {
    // The rule does not depend on --admin: the topic is never public.
    let s = start(&["--public", "**"]);
    let plain = wide_token(false, 120);
    all_forbidden(&s, &plain).await;
    let r = s
        .client
        .clone()
        .with_token(KEY)
        .poll(&[STATS], None, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(r.events.is_empty(), "no snapshot without --admin");
}

async fn all_forbidden(s: &Server, plain: &str) {
    for (how, g) in reads(s, &bearer(plain), Some(plain)).await {
        assert_eq!(
            g,
            Got::Forbidden,
            "a token without the admin claim over {how}"
        );
    }
}
