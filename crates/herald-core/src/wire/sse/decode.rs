//! The decoder: a `text/event-stream` parser that follows the WHATWG HTML rules
//! ("Server-sent events", "Interpreting an event stream") exactly: lines end
//! in CRLF, LF or CR (also when a CRLF is split across chunks), a leading BOM
//! is dropped, `:` starts a comment, one space after the colon is removed,
//! `data` lines are joined with LF, an `id` containing NUL is ignored, the
//! last event id persists across events, an event with no data is not
//! dispatched (but its id is kept), and `retry` takes only ASCII digits.

/// A dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type; `message` when the stream named none.
    pub event: String,
    /// The `data` lines joined with LF (the last line's LF removed).
    pub data: String,
    /// The last event id in force when the event was dispatched.
    pub id: String,
}

/// Something the stream carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseItem {
    /// An event with data, as a browser dispatches it.
    Event(SseEvent),
    /// A comment line (without its leading colon).
    Comment(String),
    /// A `retry:` field: the reconnection delay in milliseconds.
    Retry(u64),
    /// A block that set the last event id but carried no data (browsers
    /// dispatch nothing for it, yet keep the id for the next reconnect).
    Id(String),
}

/// The incremental parser. Feed it chunks as they arrive.
#[derive(Default, Debug)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    data: String,
    event: String,
    id_buffer: String,
    last_event_id: String,
    block_had_id: bool,
}

impl SseParser {
    /// A parser at the start of a stream (a leading BOM is still to come).
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// The last event id, as a browser would send it in `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Parses a chunk (any split of the stream: inside a line, a CRLF, a
    /// BOM or a UTF-8 sequence); returns what it completed, in order.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        if !self.started && !chunk.is_empty() {
            // A BOM may arrive split over chunks; wait for three bytes.
            let mut probe = self.line.clone();
            probe.extend_from_slice(&chunk[..chunk.len().min(3)]);
            if probe.len() < 3 && b"\xEF\xBB\xBF".starts_with(&probe) {
                self.line = probe;
                return out;
            }
            self.started = true;
            if probe.starts_with(b"\xEF\xBB\xBF") {
                let skip = 3 - self.line.len();
                self.line.clear();
                chunk = &chunk[skip..];
            } else if !self.line.is_empty() {
                let pre = std::mem::take(&mut self.line);
                self.feed_bytes(&pre, &mut out);
            }
        }
        self.feed_bytes(chunk, &mut out);
        out
    }

    fn feed_bytes(&mut self, chunk: &[u8], out: &mut Vec<SseItem>) {
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, out);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(comment.trim_start_matches(' ').to_owned()));
            return;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id_buffer = value.to_owned();
                self.block_had_id = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        self.last_event_id = self.id_buffer.clone();
        let had_id = std::mem::take(&mut self.block_had_id);
        if self.data.is_empty() {
            self.event.clear();
            if had_id {
                out.push(SseItem::Id(self.last_event_id.clone()));
            }
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = std::mem::take(&mut self.event);
        out.push(SseItem::Event(SseEvent {
            event: if event.is_empty() {
                "message".into()
            } else {
                event
            },
            data,
            id: self.last_event_id.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(items: Vec<SseItem>) -> Vec<SseEvent> {
        items
            .into_iter()
            .filter_map(|i| match i {
                SseItem::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spec_examples() {
        let mut p = SseParser::new();
        let got = p.feed(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
        assert_eq!(got[0], SseItem::Comment("test stream".into()));
        let ev = events(got);
        assert_eq!(ev.len(), 3);
        assert_eq!(
            (ev[0].data.as_str(), ev[0].id.as_str()),
            ("first event", "1")
        );
        assert_eq!(
            (ev[1].data.as_str(), ev[1].id.as_str()),
            ("second event", "")
        );
        assert_eq!(ev[2].data, " third event");

        let mut p = SseParser::new();
        let ev = events(p.feed(b"data\n\ndata\ndata\n\ndata:\n"));
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "");
        assert_eq!(ev[1].data, "\n");
    }

    #[test]
    fn line_endings_split_anywhere() {
        let stream = b"\xEF\xBB\xBFevent: a\r\ndata: x\rdata: y\n\r\nid: 7\r\n\r\n: c\r\r";
        for split in 0..stream.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&stream[..split]);
            got.extend(p.feed(&stream[split..]));
            let ev = events(got.clone());
            assert_eq!(ev.len(), 1, "split at {split}: {got:?}");
            assert_eq!(ev[0].event, "a");
            assert_eq!(ev[0].data, "x\ny");
            assert_eq!(p.last_event_id(), "7", "an id-only event sets the last id");
        }
    }

    #[test]
    fn retry_and_nul_ids() {
        let mut p = SseParser::new();
        let got = p.feed(b"retry: 2000\nretry: 1x\nid: a\0b\ndata: d\n\n");
        assert_eq!(got[0], SseItem::Retry(2000));
        assert_eq!(events(got)[0].id, "");
    }

    proptest! {
        #[test]
        fn never_panics_and_chunking_is_irrelevant(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..200) {
            let cut = cut.min(bytes.len());
            let mut a = SseParser::new();
            let whole = a.feed(&bytes);
            let mut b = SseParser::new();
            let mut parts = b.feed(&bytes[..cut]);
            parts.extend(b.feed(&bytes[cut..]));
            prop_assert_eq!(whole, parts);
        }
    }
}
