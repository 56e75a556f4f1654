//! One client adapter per transport, with one interface: the contract suite
//! is written once against [`Sub`] and runs on SSE, WebSocket and long polling.

use std::collections::VecDeque;
use std::time::Duration;

use herald_client::{Client, SseStream, WsClient};
use herald_core::Cursor;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Ws,
    Poll,
}

pub const ALL: [Kind; 3] = [Kind::Sse, Kind::Ws, Kind::Poll];

/// An event as the test sees it, whatever the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    /// The event name; `message` when unnamed (the SSE default).
    pub event: String,
    /// The data as SSE would show it: strings as text, other JSON compact.
    pub data: String,
    pub id: String,
}

impl Got {
    pub fn is_gap(&self) -> bool {
        self.event == "herald.gap"
    }
}

/// How a subscription ended or was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// An HTTP status (SSE, poll) or a WebSocket error code / close code.
    Status(u16),
    Code(String),
}

enum Inner {
    Sse(SseStream),
    Ws(WsClient),
    Poll {
        client: Client,
        cursor: Option<String>,
        buffer: VecDeque<Got>,
    },
}

/// A subscription over one transport.
pub struct Sub {
    pub kind: Kind,
    topics: Vec<String>,
    inner: Inner,
    /// The resume cursor of everything returned by `next` so far.
    resume: Cursor,
    /// Set once the server ended the subscription.
    pub ended: Option<String>,
    /// Events a WebSocket received while waiting for a publish answer.
    early: VecDeque<Got>,
}

fn data_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn got_from_json(v: &Value) -> Got {
    Got {
        event: v["event"].as_str().unwrap_or("message").to_owned(),
        data: data_text(&v["data"]),
        id: v["id"].as_str().unwrap_or_default().to_owned(),
    }
}

impl Sub {
    /// Opens a subscription to `topics`, resuming after `resume` when given.
    pub async fn open(
        client: &Client,
        kind: Kind,
        topics: &[&str],
        resume: Option<&str>,
    ) -> Result<Sub, Refused> {
        Sub::open_from(client, kind, topics, resume, &[]).await
    }

    /// [`Sub::open`] with a starting point: `start` holds the query
    /// parameters SSE and polling take (`since`, `history`); a WebSocket
    /// sends them as the `subscribe` fields of the same names.
    pub async fn open_from(
        client: &Client,
        kind: Kind,
        topics: &[&str],
        resume: Option<&str>,
        start: &[(&str, &str)],
    ) -> Result<Sub, Refused> {
        let start_of = |name: &str| {
            start
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
        };
        let resume_cursor = Cursor::decode(resume.unwrap_or("")).unwrap_or_default();
        let mut ws_early = VecDeque::new();
        let mut ws_start = resume_cursor.clone();
        let inner = match kind {
            Kind::Sse => match client.sse_with(topics, resume, start).await {
                Ok(s) => Inner::Sse(s),
                Err(herald_client::ClientError::Status { status, .. }) => {
                    return Err(Refused::Status(status.as_u16()))
                }
                Err(e) => panic!("sse: {e}"),
            },
            Kind::Ws => {
                let mut ws = client.ws().await.expect("ws connect");
                let mut early = VecDeque::new();
                for t in topics {
                    let since = resume.filter(|_| {
                        herald_core::Topic::new(t).is_ok_and(|tt| resume_cursor.get(&tt).is_some())
                    });
                    let since = since.map(|_| {
                        let tt = herald_core::Topic::new(t).unwrap();
                        Cursor::single(&tt, resume_cursor.get(&tt).unwrap()).encode()
                    });
                    let m = herald_core::wire::ws::ClientMessage::Subscribe {
                        topic: t.to_string(),
                        since: since.or(start_of("since").map(str::to_owned)),
                        history: start_of("history").map(|h| h.parse().expect("history")),
                    };
                    ws.send_message(m, None).await.expect("send");
                    loop {
                        let answer = tokio::time::timeout(Duration::from_secs(5), ws.next_json())
                            .await
                            .expect("ws answer")
                            .expect("ws")
                            .expect("open");
                        match answer["type"].as_str() {
                            Some("subscribed") => {
                                // Where this topic starts: part of the resume cursor
                                // even before its first event.
                                let start =
                                    Cursor::decode(answer["cursor"].as_str().unwrap()).unwrap();
                                let tt = herald_core::Topic::new(t).unwrap();
                                ws_start.set(&tt, start.get(&tt).unwrap());
                                break;
                            }
                            // Back-filled events of a topic subscribed before.
                            Some("event") => early.push_back(got_from_json(&answer)),
                            Some("error") => {
                                return Err(Refused::Code(
                                    answer["code"].as_str().unwrap().to_owned(),
                                ))
                            }
                            _ => panic!("unexpected {answer}"),
                        }
                    }
                }
                ws_early = early;
                Inner::Ws(ws)
            }
            Kind::Poll => {
                // Validate at once, the way SSE and WebSocket do.
                let r = client
                    .poll_with(topics, resume, Duration::ZERO, start)
                    .await;
                match r {
                    Ok(r) => {
                        let buffer = r.events.iter().map(got_from_json).collect();
                        Inner::Poll {
                            client: client.clone(),
                            cursor: Some(r.cursor),
                            buffer,
                        }
                    }
                    Err(herald_client::ClientError::Status { status, .. }) => {
                        return Err(Refused::Status(status.as_u16()))
                    }
                    Err(e) => panic!("poll: {e}"),
                }
            }
        };
        let mut sub = Sub {
            kind,
            topics: topics.iter().map(|s| s.to_string()).collect(),
            inner,
            resume: if kind == Kind::Ws {
                ws_start
            } else {
                resume_cursor
            },
            ended: None,
            early: ws_early,
        };
        if let Inner::Poll {
            cursor: Some(c),
            buffer,
            ..
        } = &sub.inner
        {
            if buffer.is_empty() {
                sub.resume = Cursor::decode(c).unwrap();
            }
        }
        Ok(sub)
    }

    /// The cursor to resume from: everything `next` returned so far.
    pub fn resume_token(&self) -> String {
        match &self.inner {
            // The browser's rule: the last id the stream set.
            Inner::Sse(s) => s.last_event_id().to_owned(),
            _ => self.resume.encode(),
        }
    }

    fn note(&mut self, got: &Got) {
        if let Ok(c) = Cursor::decode(&got.id) {
            for t in &self.topics {
                if let Ok(topic) = herald_core::Topic::new(t) {
                    if let Some(p) = c.get(&topic) {
                        self.resume.set(&topic, p);
                    }
                }
            }
        }
    }

    /// The next event within `wait`; `None` on timeout or when the server ended the subscription.
    pub async fn next(&mut self, wait: Duration) -> Option<Got> {
        let got = tokio::time::timeout(wait, self.next_inner())
            .await
            .ok()
            .flatten();
        if let Some(g) = &got {
            self.note(g);
        }
        got
    }

    async fn next_inner(&mut self) -> Option<Got> {
        if let Some(g) = self.early.pop_front() {
            return Some(g);
        }
        loop {
            match &mut self.inner {
                Inner::Sse(s) => match s.next_event().await {
                    Ok(Some(e)) => {
                        if e.event == "herald.disconnect" {
                            self.ended = Some(e.data);
                            continue;
                        }
                        return Some(Got {
                            event: e.event,
                            data: e.data,
                            id: e.id,
                        });
                    }
                    Ok(None) => {
                        self.ended.get_or_insert_with(|| "eof".into());
                        return None;
                    }
                    Err(e) => {
                        self.ended = Some(format!("error: {e}"));
                        return None;
                    }
                },
                Inner::Ws(ws) => match ws.next_json().await {
                    Ok(Some(v)) => match v["type"].as_str() {
                        Some("event") => return Some(got_from_json(&v)),
                        Some("close") => {
                            self.ended = Some(format!("close {}", v["code"]));
                            return None;
                        }
                        _ => continue,
                    },
                    Ok(None) => {
                        self.ended.get_or_insert_with(|| "eof".into());
                        return None;
                    }
                    Err(e) => {
                        self.ended = Some(format!("error: {e}"));
                        return None;
                    }
                },
                Inner::Poll {
                    client,
                    cursor,
                    buffer,
                } => {
                    if let Some(g) = buffer.pop_front() {
                        return Some(g);
                    }
                    let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                    match client
                        .poll(&topics, cursor.as_deref(), Duration::from_secs(10))
                        .await
                    {
                        Ok(r) => {
                            *cursor = Some(r.cursor);
                            buffer.extend(r.events.iter().map(got_from_json));
                        }
                        Err(e) => {
                            self.ended = Some(format!("error: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Publishes through this transport's own publish path (a WebSocket
    /// publishes on the socket; SSE and poll clients use `POST /v1/publish`).
    /// Returns the id, or the refusal's code.
    pub async fn publish(
        &mut self,
        client: &Client,
        topic: &str,
        data: Value,
        event: Option<&str>,
    ) -> Result<String, String> {
        match &mut self.inner {
            Inner::Ws(ws) => {
                let mut m =
                    serde_json::json!({"type": "publish", "topic": topic, "data": data, "ref": 1});
                if let Some(e) = event {
                    m["event"] = e.into();
                }
                ws.send_json(&m).await.map_err(|e| e.to_string())?;
                loop {
                    let v = tokio::time::timeout(Duration::from_secs(5), ws.next_json())
                        .await
                        .map_err(|_| "timeout".to_string())?
                        .map_err(|e| e.to_string())?
                        .ok_or("closed")?;
                    match v["type"].as_str() {
                        Some("published") => return Ok(v["id"].as_str().unwrap().to_owned()),
                        Some("error") => return Err(v["code"].as_str().unwrap().to_owned()),
                        Some("close") => return Err(format!("close {}", v["code"])),
                        Some("event") => self.early.push_back(got_from_json(&v)),
                        _ => continue,
                    }
                }
            }
            _ => {
                let mut body = serde_json::json!({"topic": topic, "data": data});
                if let Some(e) = event {
                    body["event"] = e.into();
                }
                let (status, v) = client
                    .publish_raw(body.to_string(), "application/json")
                    .await
                    .map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(v["id"].as_str().unwrap().to_owned())
                } else {
                    Err(v["error"]["code"].as_str().unwrap_or("?").to_owned())
                }
            }
        }
    }
}
