//! The push path's head reading over arbitrary bytes, cut anywhere.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// A reader that hands out `input` in pieces cut at `cuts`.
struct Pieces {
    input: Vec<u8>,
    cuts: Vec<usize>,
    at: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let at = self.at;
        let end = self
            .cuts
            .iter()
            .copied()
            .find(|&c| c > at)
            .unwrap_or(self.input.len())
            .min(self.input.len())
            .min(at + buf.remaining());
        buf.put_slice(&self.input[at..end]);
        self.at = end;
        Poll::Ready(Ok(()))
    }
}

/// Runs [`first_request`] over `input` cut at `cuts`; returns what it
/// decided and the bytes it did not read.
fn first_of(input: &[u8], cuts: &[usize]) -> (First, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    let mut r = Pieces {
        input: input.to_vec(),
        cuts,
        at: 0,
    };
    let first = rt.block_on(first_request(&mut r));
    let unread = r.input[r.at..].to_vec();
    (first, unread)
}

/// What a decision means, comparable across splits: the direct request
/// (method, URI, headers) with every byte after its head, or all the
/// bytes hyper gets.
fn meaning(first: First, unread: Vec<u8>) -> String {
    match first {
        First::Direct(req, rest) => {
            let mut after = rest.to_vec();
            after.extend_from_slice(&unread);
            format!(
                "direct {} {:?} {:?}",
                req.uri(),
                req.headers(),
                String::from_utf8_lossy(&after)
            )
        }
        First::Other(prefix) => {
            let mut all = prefix.to_vec();
            all.extend_from_slice(&unread);
            format!("other {:?}", String::from_utf8_lossy(&all))
        }
        First::TooLarge => "too large".into(),
        First::UriTooLong => "uri too long".into(),
        First::Gone => "gone".into(),
    }
}

const REQUESTS: &[&str] = &[
    "GET /v1/poll?topic=a&timeout=0 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
    "GET /v1/sse?topic=a%2Fb&topic=c HTTP/1.1\nHost: x\nLast-Event-ID: 1\n\n",
    "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "GET /healthz HTTP/1.1\nHost: x\n\n",
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary bytes cut anywhere never panic, and nothing read is
    /// lost: hyper gets every byte, or the direct request and every byte
    /// after its head.
    #[test]
    fn arbitrary_bytes_never_panic(
        input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        cuts in proptest::collection::vec(0usize..600, 0..8),
    ) {
        let (first, unread) = first_of(&input, &cuts);
        match first {
            First::Other(prefix) => {
                let mut all = prefix.to_vec();
                all.extend_from_slice(&unread);
                proptest::prop_assert_eq!(all, input);
            }
            First::Direct(_, rest) => {
                let mut after = rest.to_vec();
                after.extend_from_slice(&unread);
                proptest::prop_assert!(input.ends_with(&after));
            }
            First::TooLarge | First::UriTooLong | First::Gone => {}
        }
    }

    /// A valid request cut anywhere means the same as when it arrives
    /// whole; except that a publish whose body did not come with its head
    /// goes to hyper with every byte.
    #[test]
    fn valid_requests_split_anywhere(
        which in 0..REQUESTS.len(),
        cuts in proptest::collection::vec(0usize..120, 0..10),
    ) {
        let input = REQUESTS[which].as_bytes();
        let (whole, unread) = first_of(input, &[]);
        let whole = meaning(whole, unread);
        let (split, unread) = first_of(input, &cuts);
        let split = meaning(split, unread);
        let to_hyper = format!("other {:?}", String::from_utf8_lossy(input));
        if input.starts_with(b"POST") && split == to_hyper {
            proptest::prop_assert!(whole.starts_with("direct /v1/publish"), "{}", whole);
        } else {
            proptest::prop_assert_eq!(split, whole);
        }
    }
}

/// Once an answer has switched protocols, the next read lets go of the
/// end-of-input channel (its receivers see it closed); before, it is kept.
#[tokio::test]
async fn the_end_of_input_channel_goes_once_an_answer_switches_protocols() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut client, server) = tokio::io::duplex(64);
    let mut io = Rewind::new(bytes::Bytes::new(), server);
    let (tx, rx) = herald_http::ReadClosed::channel();
    let upgraded = Arc::new(AtomicBool::new(false));
    let switched = Arc::new(AtomicBool::new(false));
    io.on_read_closed(tx, upgraded.clone());
    io.limit_stalled_writes(Arc::new(AtomicU64::new(30_000)), switched.clone());
    let mut buf = [0u8; 8];
    client.write_all(b"a").await.unwrap();
    assert_eq!(io.read(&mut buf).await.unwrap(), 1);
    assert!(rx.is_watched(), "kept while HTTP is spoken");
    upgraded.store(true, Ordering::Relaxed);
    switched.store(true, Ordering::Relaxed);
    client.write_all(b"b").await.unwrap();
    assert_eq!(io.read(&mut buf).await.unwrap(), 1);
    assert!(!rx.is_watched(), "released after the switch");
}

/// An event stream's client may send empty lines up to its allowance (a
/// burst, then a rate per second); beyond it the stream ends.
#[tokio::test]
async fn an_event_stream_takes_empty_lines_within_its_allowance() {
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    let (mut client, server) = tokio::io::duplex(4096);
    let body = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
    let kill = Arc::new(Notify::new());
    let k = kill.clone();
    let mut task =
        tokio::spawn(async move { stream(server, body, &k, Duration::from_secs(30)).await });
    // The whole burst, in pieces: let be.
    for _ in 0..(BLANK_BURST / 64) {
        client.write_all(&b"\r\n".repeat(32)).await.unwrap();
    }
    assert!(still_running(&mut task).await, "the burst ended the stream");
    // A second later the rate has earned a little more.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client.write_all(&b"\r\n".repeat(100)).await.unwrap();
    assert!(
        still_running(&mut task).await,
        "the rate's bytes ended the stream"
    );
    // A flood past the allowance ends it.
    client.write_all(&b"\n".repeat(2048)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut task)
        .await
        .expect("a flood of empty lines ends the stream")
        .unwrap();
    drop(kill);
}

/// Whether `task` is still running 200 ms from now.
async fn still_running(task: &mut tokio::task::JoinHandle<()>) -> bool {
    tokio::time::timeout(Duration::from_millis(200), task)
        .await
        .is_err()
}
