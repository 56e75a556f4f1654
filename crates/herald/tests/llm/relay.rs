//! Generations through the relay: resume mid-generation on every transport,
//! several viewers, cancel, upstream failures as error events.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_mid_generation_on_every_transport() {
    let s = start().await;
    for kind in [Kind::Sse, Kind::Ws, Kind::Poll] {
        let prompt = format!("Tell me about {kind:?} [tokens:80]");
        let started = generate(&s.client, &prompt).await;
        let topic = started["topic"].as_str().unwrap();
        let mut sub = Sub::open(
            &s.client,
            kind,
            &[topic],
            Some(started["cursor"].as_str().unwrap()),
        )
        .await
        .unwrap();
        let mut text = String::new();
        for _ in 0..4 {
            let g = sub.next(WAIT).await.unwrap();
            assert_eq!(g.event, "token");
            text.push_str(
                serde_json::from_str::<Value>(&g.data).unwrap()["content"]
                    .as_str()
                    .unwrap(),
            );
        }
        // "Reload": drop the connection mid-generation, come back with the cursor.
        let token = sub.resume_token();
        drop(sub);
        // Away for a while (the scenario, not a wait): the generation goes
        // on without this viewer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut sub = Sub::open(&s.client, kind, &[topic], Some(&token))
            .await
            .unwrap();
        let (rest, end) = read_to_end(&mut sub).await;
        text.push_str(&rest);
        assert_eq!(
            text,
            tokens_for(&prompt, 80).concat(),
            "{kind:?}: lost or duplicated tokens"
        );
        assert_eq!(end.event, "done");
        let done: Value = serde_json::from_str(&end.data).unwrap();
        assert_eq!(done["finish_reason"], "stop");
        assert_eq!(done["usage"]["completion_tokens"], 80);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_and_a_late_one_see_the_same_answer() {
    let s = start().await;
    let prompt = "shared answer [tokens:50]";
    let started = generate(&s.client, prompt).await;
    let topic = started["topic"].as_str().unwrap().to_owned();
    let cursor = started["cursor"].as_str().unwrap().to_owned();
    let mut a = Sub::open(&s.client, Kind::Sse, &[&topic], Some(&cursor))
        .await
        .unwrap();
    let mut b = Sub::open(&s.client, Kind::Ws, &[&topic], Some(&cursor))
        .await
        .unwrap();
    let (ta, _) = read_to_end(&mut a).await;
    let (tb, _) = read_to_end(&mut b).await;
    // Nobody watching is fine too: a viewer arriving after the end reads it all.
    let mut late = Sub::open(&s.client, Kind::Poll, &[&topic], Some(&cursor))
        .await
        .unwrap();
    let (tl, _) = read_to_end(&mut late).await;
    let want = tokens_for(prompt, 50).concat();
    assert_eq!(
        (ta.as_str(), tb.as_str(), tl.as_str()),
        (want.as_str(), want.as_str(), want.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_upstream_request() {
    let s = start().await;
    let started = generate(&s.client, "a long one [tokens:500] [slow:100]").await;
    let (topic, id) = (
        started["topic"].as_str().unwrap(),
        started["id"].as_str().unwrap(),
    );
    let mut sub = Sub::open(
        &s.client,
        Kind::Sse,
        &[topic],
        Some(started["cursor"].as_str().unwrap()),
    )
    .await
    .unwrap();
    sub.next(WAIT).await.unwrap();
    assert_eq!(s.model.active.load(Ordering::Acquire), 1);
    let (st, v, _) = post(&s.client, &format!("/v1/llm/chat/{id}/cancel"), json!({})).await;
    assert_eq!((st, v["cancelled"].as_bool()), (200, Some(true)));
    let (_, end) = read_to_end(&mut sub).await;
    assert_eq!(end.event, "done");
    assert!(end.data.contains("cancelled"), "{}", end.data);
    for _ in 0..100 {
        if s.model.active.load(Ordering::Acquire) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.model.active.load(Ordering::Acquire),
        0,
        "the upstream request is still running"
    );
    let (st, _, _) = post(&s.client, "/v1/llm/chat/unknown/cancel", json!({})).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_error_events() {
    let llm = LlmConfig {
        idle_timeout: Duration::from_millis(600),
        ..LlmConfig::default()
    };
    let s = start_with(HttpConfig::default(), llm, Some(KEY), Some(KEY)).await;
    for (prompt, needle) in [
        ("[error-after:5] [tokens:20]", "failed mid-stream"),
        ("[drop-after:5] [tokens:20]", "upstream"),
        ("[stall-after:3] [tokens:20]", "idle timeout"),
    ] {
        let started = generate(&s.client, prompt).await;
        let mut sub = Sub::open(
            &s.client,
            Kind::Sse,
            &[started["topic"].as_str().unwrap()],
            Some(started["cursor"].as_str().unwrap()),
        )
        .await
        .unwrap();
        let (text, end) = read_to_end(&mut sub).await;
        assert_eq!(end.event, "error", "{prompt}");
        assert!(end.data.contains(needle), "{prompt}: {}", end.data);
        assert!(text.len() < tokens_for(prompt, 20).concat().len());
    }
    // A wrong key: the upstream's 401 is surfaced, the key itself never.
    let s = start_with(
        HttpConfig::default(),
        LlmConfig::default(),
        Some(KEY),
        Some("sk-wrong-key-0000"),
    )
    .await;
    let started = generate(&s.client, "hello").await;
    let mut sub = Sub::open(
        &s.client,
        Kind::Poll,
        &[started["topic"].as_str().unwrap()],
        Some(started["cursor"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let (_, end) = read_to_end(&mut sub).await;
    assert_eq!(end.event, "error");
    assert!(end.data.contains("401"), "{}", end.data);
    assert!(!end.data.contains("sk-wrong-key"));
    let (st, v, _) = post(
        &s.client,
        "/v1/chat/completions",
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(st, 401);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Incorrect API key"));
}
