//! Trace context on events: the W3C `traceparent` an event carries, the
//! spans of its publish, and the [`TraceBridge`] a process that exports
//! traces installs (see the [module docs](super)).

use std::sync::OnceLock;

use super::{Event, NewEvent};

/// A W3C Trace Context `traceparent` (Trace Context Level 1, §3.2):
/// `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`. 25 bytes, kept
/// parsed (an event carries it without an allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TraceParent {
    /// The trace's id; never all zeros.
    pub trace_id: [u8; 16],
    /// The id of the span this context names (the caller's span for a
    /// publisher's header); never all zeros.
    pub parent_id: [u8; 8],
    /// The trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` for anything the
    /// specification says to ignore: a length other than 55 for version
    /// `00`, version `ff`, upper-case or non-hex digits, an all-zero trace
    /// or parent id, missing dashes. A later version is read by its first
    /// four fields (then a `-` must follow them), as the specification
    /// asks. Surrounding spaces and tabs (optional whitespace in HTTP) are
    /// ignored.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        if v.len() < 55 {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Two lower-case hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

impl std::fmt::Display for TraceParent {
    /// The header value, version `00`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// What a process that exports traces does with trace contexts, for spans
/// made with `tracing` only (the core and the HTTP layer know no
/// exporter). The `herald` binary installs one that speaks OpenTelemetry
/// when it exports traces (`--otlp-endpoint`).
pub trait TraceBridge: Send + Sync + 'static {
    /// Makes the span `parent` names the parent of `span`, which was just
    /// made and not entered yet.
    fn set_parent(&self, span: &tracing::Span, parent: TraceParent);
    /// The context of `span` itself (its trace id and span id), or `None`
    /// when the span is not recorded.
    fn context(&self, span: &tracing::Span) -> Option<TraceParent>;
    /// Adds to `span` a link to the span `to` names.
    fn add_link(&self, span: &tracing::Span, to: TraceParent);
}

static TRACE_BRIDGE: OnceLock<Box<dyn TraceBridge>> = OnceLock::new();

/// Installs the process's [`TraceBridge`], once; false (and the first
/// stays) when one is installed already.
pub fn install_trace_bridge(bridge: Box<dyn TraceBridge>) -> bool {
    TRACE_BRIDGE.set(bridge).is_ok()
}

fn trace_bridge() -> Option<&'static dyn TraceBridge> {
    TRACE_BRIDGE.get().map(|b| &**b)
}

/// The `publish` span of one publish of `events` (a debug-level span with
/// the fields `events`, the batch's size, and `topic`, the first event's).
/// With a [`TraceBridge`] installed, its parent is the first event's trace
/// context (the publisher's `traceparent`), and then every event carries
/// the span's own context instead, for the spans that deliver it to link
/// to. Without one (or when the span is disabled), the events are left as
/// they are.
pub fn publish_span(events: &mut [NewEvent]) -> tracing::Span {
    let topic = events.first().map_or("", |e| e.topic.as_str());
    let span = tracing::debug_span!("publish", events = events.len(), topic);
    if let (Some(bridge), false) = (trace_bridge(), span.is_disabled()) {
        if let Some(parent) = events.first().and_then(|e| e.trace) {
            bridge.set_parent(&span, parent);
        }
        let own = bridge.context(&span);
        for e in events {
            e.trace = own;
        }
    }
    span
}

/// The `fanout` span of handing `event` to this process's subscribers,
/// entered, when the event carries a trace context and a [`TraceBridge`]
/// is installed: a child of the event's `publish` span, wherever the
/// engine dispatches (a writer thread, a Redis listener). `None` otherwise
/// (nothing is spent).
pub fn fanout_span(event: &Event) -> Option<tracing::span::EnteredSpan> {
    let trace = event.trace?;
    let bridge = trace_bridge()?;
    let span = tracing::debug_span!(parent: None, "fanout", topic = event.topic.as_str());
    if span.is_disabled() {
        return None;
    }
    bridge.set_parent(&span, trace);
    Some(span.entered())
}

impl Event {
    /// Links the current span (a connection's: `sse`, `ws`, `poll`) to
    /// the `publish` span of this event, when the event carries its
    /// context and a [`TraceBridge`] is installed; else does nothing.
    pub fn link_current_span(&self) {
        if let (Some(to), Some(bridge)) = (self.trace, trace_bridge()) {
            bridge.add_link(&tracing::Span::current(), to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_a_traceparent() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.parent_id[7], 0xb7);
        assert!(t.sampled());
        assert_eq!(t.to_string(), GOOD);
        assert_eq!(TraceParent::parse(&format!(" {GOOD}\t")), Some(t));
        // A later version: its first four fields, then a dash.
        let later = format!("cc{}-what-comes-next", &GOOD[2..]);
        assert_eq!(
            TraceParent::parse(&later).map(|t| t.trace_id),
            Some(t.trace_id)
        );
    }

    #[test]
    fn refuses_malformed_traceparents() {
        for bad in [
            "",
            "00",
            &GOOD[..54],
            &format!("{GOOD}-"),
            &GOOD.to_uppercase(),
            &GOOD.replace("-01", "-0x"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            &format!("ff{}", &GOOD[2..]),
            &GOOD.replacen('-', "_", 1),
            &format!("cc{}x", &GOOD[2..]),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }
}
