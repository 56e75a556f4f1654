//! Events to script arguments, and script answers and pub/sub messages back
//! to events. Pure functions over values.

use std::borrow::Cow;
use std::sync::Arc;

use fred::types::Value;
use herald_core::{Data, Event, NewEvent, Position, Topic};

/// `k`, `n`, `d` of one event, as the publish script takes them.
pub(crate) fn push_event_args(e: &NewEvent, args: &mut Vec<Value>) {
    let (kind, data) = match &e.data {
        Data::Text(s) => ("t", s),
        Data::Json(s) => ("j", s),
    };
    args.push(kind.into());
    args.push(e.name.as_deref().unwrap_or("").into());
    args.push(Value::from(&**data));
}

fn text(v: &Value) -> Result<Cow<'_, str>, String> {
    v.as_str()
        .ok_or_else(|| format!("unexpected value from Redis: {v:?}"))
}

fn number(v: &Value) -> Result<u64, String> {
    text(v)?
        .parse()
        .map_err(|_| format!("expected a number from Redis, got {v:?}"))
}

/// Splits a stream entry id `<seq>-<ms>`.
pub(crate) fn parse_id(id: &str) -> Result<(u64, u64), String> {
    let (seq, ms) = id
        .split_once('-')
        .ok_or_else(|| format!("bad stream id {id:?}"))?;
    match (seq.parse(), ms.parse()) {
        (Ok(s), Ok(m)) => Ok((s, m)),
        _ => Err(format!("bad stream id {id:?}")),
    }
}

fn event(
    topic: &Topic,
    epoch: u64,
    id: &str,
    kind: &str,
    name: &str,
    data: &str,
) -> Result<Arc<Event>, String> {
    let (seq, at) = parse_id(id)?;
    let data = match kind {
        "t" => Data::Text(data.into()),
        "j" => Data::Json(data.into()),
        other => return Err(format!("unknown data kind {other:?}")),
    };
    let mut new = NewEvent::new(topic.clone(), data);
    if !name.is_empty() {
        new.name = Some(name.into());
    }
    Ok(Arc::new(Event::new(new, Position::new(epoch, seq), at)))
}

/// The publish script's `{epoch, first seq, published ms}`.
pub(crate) fn publish_answer(answer: &[Value]) -> Result<(u64, u64, u64), String> {
    match answer {
        [epoch, first, at] => Ok((number(epoch)?, number(first)?, number(at)?)),
        other => Err(format!("unexpected publish answer {other:?}")),
    }
}

/// What the read script found, before the start rule is applied.
pub(crate) struct RawRead {
    pub epoch: u64,
    pub head: u64,
    pub first_retained: u64,
    pub events: Vec<Arc<Event>>,
}

/// The read script's `{epoch, head, first retained, entries...}`.
pub(crate) fn read_answer(topic: &Topic, answer: Vec<Value>) -> Result<RawRead, String> {
    if answer.len() < 3 {
        return Err(format!("unexpected read answer {answer:?}"));
    }
    let epoch = number(&answer[0])?;
    let head = number(&answer[1])?;
    let first_retained = number(&answer[2])?;
    let mut events = Vec::with_capacity(answer.len() - 3);
    for entry in answer.into_iter().skip(3) {
        let mut parts = entry.into_array();
        if parts.len() != 2 {
            return Err(format!("unexpected stream entry {parts:?}"));
        }
        let fields = parts.pop().map(Value::into_array).unwrap_or_default();
        let id = text(&parts[0])?.into_owned();
        let (mut kind, mut name, mut data) = (None, None, None);
        for pair in fields.chunks(2) {
            if let [k, v] = pair {
                match &*text(k)? {
                    "k" => kind = Some(text(v)?),
                    "n" => name = Some(text(v)?),
                    "d" => data = Some(text(v)?),
                    _ => {}
                }
            }
        }
        let (Some(kind), Some(data)) = (kind, data) else {
            return Err(format!("stream entry {id} lacks fields"));
        };
        events.push(event(
            topic,
            epoch,
            &id,
            &kind,
            name.as_deref().unwrap_or(""),
            &data,
        )?);
    }
    Ok(RawRead {
        epoch,
        head,
        first_retained,
        events,
    })
}

/// What a message on a topic's channel carries.
#[derive(Debug)]
pub(crate) enum Notification {
    /// A stored event (or an ephemeral one), with its position.
    Event(Arc<Event>),
    /// A signal ([`Event::is_signal`]: `herald.join` / `herald.leave`), at
    /// position 0:0: dispatched as it comes, never counted as a position.
    Signal(Arc<Event>),
}

/// The first line of a signal's notification; an event's is its epoch (a
/// number), so the two cannot be confused.
const SIGNAL_MARK: &str = "~";

/// The notification of a signal: `~ \n published ms \n k \n n \n d`.
pub(crate) fn signal_message(e: &Event) -> String {
    let (kind, data) = match &e.data {
        Data::Text(s) => ("t", s),
        Data::Json(s) => ("j", s),
    };
    let name = e.name.as_deref().unwrap_or("");
    let mut m = String::with_capacity(SIGNAL_MARK.len() + 24 + name.len() + data.len());
    m.push_str(SIGNAL_MARK);
    m.push('\n');
    m.push_str(&e.published_at_ms.to_string());
    m.push('\n');
    m.push_str(kind);
    m.push('\n');
    m.push_str(name);
    m.push('\n');
    m.push_str(data);
    m
}

/// A pub/sub notification: an event's `epoch \n id \n k \n n \n d` (from
/// the publish script), or a signal's (see [`signal_message`]).
pub(crate) fn decode_message(topic: &Topic, payload: &str) -> Result<Notification, String> {
    let mut parts = payload.splitn(5, '\n');
    let mut next = || parts.next().ok_or("truncated notification");
    let epoch = next()?;
    let id = next()?;
    let kind = next()?;
    let name = next()?;
    let data = next()?;
    if epoch == SIGNAL_MARK {
        let at: u64 = id.parse().map_err(|_| "bad time in signal")?;
        let e = event(topic, 0, &format!("0-{at}"), kind, name, data)?;
        if !e.is_signal() {
            return Err(format!("a signal named {name:?} is not a reserved event"));
        }
        return Ok(Notification::Signal(e));
    }
    let epoch = epoch.parse().map_err(|_| "bad epoch in notification")?;
    event(topic, epoch, id, kind, name, data).map(Notification::Event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_event(t: &Topic, payload: &str) -> Result<Arc<Event>, String> {
        match decode_message(t, payload)? {
            Notification::Event(e) => Ok(e),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn notification_round_trip() {
        let t = Topic::new("chat/1").unwrap();
        let e = decode_event(
            &t,
            "281474976710655\n7-1700000000123\nj\nmsg\n{\"a\":\"x\ny\"}",
        )
        .unwrap();
        assert_eq!(e.position, Position::new(281474976710655, 7));
        assert_eq!(e.published_at_ms, 1700000000123);
        assert_eq!(e.name.as_deref(), Some("msg"));
        assert_eq!(e.data, Data::Json("{\"a\":\"x\ny\"}".into()));
        let e = decode_event(&t, "5\n1-2\nt\n\n").unwrap();
        assert_eq!(e.name, None);
        assert_eq!(e.data, Data::Text("".into()));
        assert!(decode_message(&t, "5\n1-2\nt").is_err());
        assert!(decode_message(&t, "x\n1-2\nt\n\nd").is_err());
        assert!(decode_message(&t, "5\n1-2\nq\n\nd").is_err());
    }

    #[test]
    fn signal_round_trip() {
        let t = Topic::new("room/1").unwrap();
        let sent = Arc::new(Event::new(
            NewEvent::new(t.clone(), Data::Json("{\"a\":\"x\\ny\"}".into())).named("herald.leave"),
            Position::new(0, 0),
            1700000000123,
        ));
        let message = signal_message(&sent);
        let Notification::Signal(got) = decode_message(&t, &message).unwrap() else {
            panic!("expected a signal from {message:?}");
        };
        assert!(got.is_signal());
        assert_eq!(got.position, Position::new(0, 0));
        assert_eq!(got.published_at_ms, 1700000000123);
        assert_eq!(got.name.as_deref(), Some("herald.leave"));
        assert_eq!(got.data, sent.data);
        // A signal must be a reserved event, or it would count as a
        // position of the topic.
        assert!(decode_message(&t, "~\n1\nt\nmsg\nd").is_err());
        assert!(decode_message(&t, "~\n1\nt\n\nd").is_err());
        assert!(decode_message(&t, "~\nx\nt\nherald.join\nd").is_err());
    }

    #[test]
    fn read_answer_parses_entries() {
        let t = Topic::new("a").unwrap();
        let entry = Value::Array(vec![
            "3-99".into(),
            Value::Array(vec![
                "k".into(),
                "t".into(),
                "n".into(),
                "".into(),
                "d".into(),
                "hi".into(),
            ]),
        ]);
        let r = read_answer(&t, vec!["9".into(), "3".into(), "3".into(), entry]).unwrap();
        assert_eq!((r.epoch, r.head, r.first_retained), (9, 3, 3));
        assert_eq!(r.events[0].position, Position::new(9, 3));
        assert_eq!(r.events[0].data, Data::Text("hi".into()));
        assert!(read_answer(&t, vec!["9".into()]).is_err());
    }

    #[test]
    fn args_carry_kind_name_data() {
        let t = Topic::new("a").unwrap();
        let mut args = Vec::new();
        push_event_args(
            &NewEvent::new(t, Data::Json("[1]".into())).named("x"),
            &mut args,
        );
        let args: Vec<String> = args
            .iter()
            .map(|v| v.as_str().unwrap().into_owned())
            .collect();
        assert_eq!(args, ["j", "x", "[1]"]);
    }
}

/// The control message asking every node to close `user`'s connections:
/// `disconnect\n<user>`.
pub(crate) fn disconnect_message(user: &str) -> String {
    format!("disconnect\n{user}")
}

/// The user a control message names, if it is a disconnect.
pub(crate) fn decode_disconnect(message: &str) -> Option<&str> {
    message
        .strip_prefix("disconnect\n")
        .filter(|u| !u.is_empty())
}

#[cfg(test)]
mod control_tests {
    use super::*;

    #[test]
    fn disconnect_round_trip() {
        let m = disconnect_message("ada\nlovelace");
        assert_eq!(decode_disconnect(&m), Some("ada\nlovelace"));
        assert_eq!(decode_disconnect("disconnect\n"), None);
        assert_eq!(decode_disconnect("other\nada"), None);
    }
}
