//! Graceful shutdown completes on a channel, not by polling gauges.
//!
//! Whatever serves a connection holds a [`DrainToken`], a clone of the
//! sending half of a channel that never carries a message: the connection
//! task while it answers or streams on the HTTP/1.1 push path, and the
//! socket itself once hyper serves it, so that a WebSocket hyper upgrades
//! the socket to holds it until the WebSocket ends (on HTTP/2 the
//! connection, and with it its socket, lives as long as its streams). When
//! the last token is dropped the receiving half reads the end of the
//! channel, and the server knows every connection has finished.
//!
//! Idle connections (between requests, or in their TLS handshake) hold no
//! token: they have nothing to finish.

use tokio::sync::mpsc;

/// The server's side: hands out [`DrainWatch`]es while it accepts, then
/// waits for every token to be dropped.
#[derive(Debug)]
pub(crate) struct Drain {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

/// A connection's way to get a [`DrainToken`] when it has work to finish.
/// It does not hold off the end of a shutdown itself.
#[derive(Clone, Debug)]
pub(crate) struct DrainWatch(mpsc::WeakSender<()>);

/// Held while a connection has work to finish; see the module notes.
#[derive(Clone, Debug)]
pub(crate) struct DrainToken(#[allow(dead_code)] mpsc::Sender<()>);

impl Drain {
    /// A drain with no token out yet.
    pub(crate) fn new() -> Drain {
        let (tx, rx) = mpsc::channel(1);
        Drain { tx, rx }
    }

    /// A watch for one more connection.
    pub(crate) fn watch(&self) -> DrainWatch {
        DrainWatch(self.tx.downgrade())
    }

    /// Resolves once every token handed out has been dropped.
    pub(crate) async fn finished(self) {
        let Drain { tx, mut rx } = self;
        drop(tx);
        // Nothing is ever sent: `None` is the channel's end.
        while rx.recv().await.is_some() {}
    }
}

impl DrainWatch {
    /// A token, unless the drain has already finished.
    pub(crate) fn token(&self) -> Option<DrainToken> {
        self.0.upgrade().map(DrainToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn finishes_when_the_last_token_is_dropped() {
        let drain = Drain::new();
        let watch = drain.watch();
        let a = watch.token().unwrap();
        let b = a.clone();
        let finished = tokio::spawn(drain.finished());
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!finished.is_finished(), "a token is still held");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .unwrap()
            .unwrap();
        assert!(watch.token().is_none(), "no token once finished");
    }

    #[tokio::test]
    async fn a_watch_alone_does_not_hold_it_off() {
        let drain = Drain::new();
        let _watch = drain.watch();
        tokio::time::timeout(Duration::from_secs(5), drain.finished())
            .await
            .unwrap();
    }
}
