//! Tokens joined into `token` events, so a generation never publishes more
//! events than the topic's history keeps and a late viewer always reads the
//! whole answer.

use std::time::Duration;

use tokio::time::Instant;

/// Joins tokens into events, widening the window as the event count nears
/// the history limit so the whole answer always stays readable.
pub(super) struct Coalescer {
    base: Duration,
    cap: usize,
    published: usize,
    buf: String,
    since: Option<Instant>,
}

impl Coalescer {
    /// Joins tokens over `base` at first; `cap` is the topic's history limit
    /// (events).
    pub(super) fn new(base: Duration, cap: usize) -> Coalescer {
        Coalescer {
            base,
            cap,
            published: 0,
            buf: String::new(),
            since: None,
        }
    }

    /// How long tokens are joined now; `None` once the budget is spent (the
    /// rest of the answer goes out in the final flush).
    fn window(&self) -> Option<Duration> {
        // Leave room for the final `done`/`error` event (and a trailing flush).
        let budget = self.cap.saturating_sub(3);
        if self.published >= budget {
            None
        } else if self.published >= budget * 3 / 4 {
            Some(Duration::from_secs(10))
        } else if self.published >= budget / 2 {
            Some(Duration::from_secs(1))
        } else {
            Some(self.base)
        }
    }

    /// Adds text; the window starts with the first text after a flush.
    pub(super) fn push(&mut self, text: &str) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        self.buf.push_str(text);
    }

    /// When the waiting text is due, if any.
    pub(super) fn deadline(&self) -> Option<Instant> {
        Some(self.since? + self.window()?)
    }

    /// Whether the waiting text is due now.
    pub(super) fn due(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// The waiting text, counted as one published event; `None` when empty.
    pub(super) fn take(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        self.since = None;
        self.published += 1;
        Some(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescer_never_exceeds_the_budget() {
        let mut c = Coalescer::new(Duration::ZERO, 20);
        let mut events = 0;
        for i in 0..10_000 {
            c.push(&i.to_string());
            if (c.window().is_some_and(|w| w.is_zero()) || c.due()) && c.take().is_some() {
                events += 1;
            }
        }
        if c.take().is_some() {
            events += 1;
        }
        assert!(events <= 18, "{events}");
    }
}
