//! Subscriptions: resume from a cursor, then live delivery, with no gap and
//! no duplicate.
//!
//! Every transport reads events through a [`Subscription`], so resume is
//! written once. For each topic it (1) registers for live events first, (2)
//! back-fills from history after the client's position, page by page, and (3)
//! drops live events it already has. A live event that is not the next one in
//! sequence (a publish raced the back-fill, or a distributed engine skipped
//! one) sends the topic back to history to fill the hole, so delivery is exact
//! whatever the interleaving.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::engine::{EngineError, GapReason};
use crate::event::{Data, Event, Position};
use crate::fanout::{CloseReason, Popped, SubscriberQueue};
use crate::hub::HubInner;
use crate::topic::Topic;
use crate::wire;

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The next event of one of the topics.
    Event(Arc<Event>),
    /// Events of a topic may have been missed (see [`wire::reserved::GAP`]).
    Gap(Gap),
    /// The hub closed the subscription; the client should reconnect with its cursor.
    Closed(CloseReason),
}

/// Event data one back-fill page holds at most (one event always fits): a
/// resume whose client does not read pins no more than this per topic, whatever
/// the size of the events (the engine's own copies, read from disk, are not
/// shared between connections).
pub const BACKFILL_BYTES: usize = 1024 * 1024;

/// A gap signal: delivery of `topic` continues after `position`.
#[derive(Debug, Clone)]
pub struct Gap {
    /// The topic whose history has the gap.
    pub topic: Topic,
    /// Why events may be missing.
    pub reason: GapReason,
    /// The position delivery resumes after; the subscriber's cursor moves
    /// here.
    pub position: Position,
}

impl Gap {
    /// The gap's payload: `{"topic","reason"}` ([`wire::reserved::GapData`]).
    pub fn data(&self) -> Data {
        Data::Json(
            wire::reserved::GapData::encode(self.reason.as_str(), self.topic.as_str()).into(),
        )
    }

    /// The JSON event message (WebSocket, long polling) with this topic's cursor as id.
    pub fn json(&self) -> Bytes {
        let id = Cursor::single(&self.topic, self.position).encode();
        Bytes::from(wire::json::encode_event_parts(
            self.topic.as_str(),
            &id,
            Some(wire::reserved::GAP),
            &self.data(),
            crate::event::now_ms(),
        ))
    }
}

#[derive(Debug)]
struct TopicState {
    topic: Topic,
    /// Last position read into `pending` or taken live; `None` until a
    /// "from now" subscription has learnt the head.
    fetched: Option<Position>,
    /// Last position handed to the client: what its cursor says.
    delivered: Option<Position>,
    /// History must be read before live events of this topic are used.
    catching_up: bool,
    /// Events to ask the engine for in the next back-fill read: starts small
    /// and follows the size of the events seen, so that a read of large
    /// events (copies, when read from disk) stays near [`BACKFILL_BYTES`].
    page: usize,
    /// The topic's policy keeps no history (`history = 0`): nothing to
    /// fill a hole from, so any later live event is delivered as it comes.
    ephemeral: bool,
    /// After a failed history read of this topic: when to read again, and
    /// the pause used (it doubles up to [`READ_RETRY_MAX`]). The other
    /// topics of the subscription go on meanwhile.
    retry: Option<(tokio::time::Instant, std::time::Duration)>,
}

/// The first back-fill read of a topic asks for this many events.
const FIRST_PAGE: usize = 2;

/// One connection's subscription to any number of topics.
pub struct Subscription {
    hub: Arc<HubInner>,
    queue: Arc<SubscriberQueue>,
    topics: Vec<TopicState>,
    pending: VecDeque<Delivery>,
    closed: Option<CloseReason>,
}

/// The first pause after a failed history read (a back-fill, or the read a
/// hole in live events sends a subscriber to).
const READ_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest pause between history reads that keep failing. A
/// subscription is never ended for it: the engine is recovering (a Redis
/// failover, a network cut), and live events queue meanwhile, up to the
/// subscriber queue's bound.
const READ_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Where delivery of a topic starts (DESIGN.md, "History": starting
/// points). Every start is resolved to a position, then resumed from it
/// like a cursor, so back-fill, gaps and the hand-over to live events are
/// the same for all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Events published from now on.
    Now,
    /// After a position (a client's cursor).
    After(Position),
    /// Every retained event, then live (`since=earliest`).
    Earliest,
    /// The newest `n` retained events, then live (`history=N`;
    /// `since=latest` is `Last(1)`).
    Last(usize),
}

/// Why a topic could not be added.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    /// The subscription already holds the most topics it may; the number is
    /// that limit (maps to 400 `too_many_topics`).
    #[error("a subscription may hold at most {0} topics")]
    TooManyTopics(usize),
    /// The engine could not read the topic's history or position.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Subscription {
    pub(crate) fn new(hub: Arc<HubInner>, queue: Arc<SubscriberQueue>) -> Subscription {
        Subscription {
            hub,
            queue,
            topics: Vec::new(),
            pending: VecDeque::new(),
            closed: None,
        }
    }

    /// Adds `topic`, resuming after `since` (`None`: from now). Re-adding a
    /// topic restarts it from the new position. Returns the position the
    /// subscription starts from (before any back-filled event).
    pub async fn add(
        &mut self,
        topic: Topic,
        since: Option<Position>,
    ) -> Result<Position, SubscribeError> {
        // An ephemeral topic stores nothing to resume from: live only, and
        // no `herald.gap` for what was never kept.
        let ephemeral = self.hub.config.policies.resolve(&topic).is_ephemeral();
        let since = since.filter(|_| !ephemeral);
        if let Some(i) = self.index(&topic) {
            self.pending.retain(|d| !is_of(d, &topic));
            let st = &mut self.topics[i];
            st.fetched = since;
            st.delivered = since;
            st.catching_up = true;
        } else {
            let max = self.hub.config.max_topics_per_subscription;
            if self.topics.len() >= max {
                return Err(SubscribeError::TooManyTopics(max));
            }
            // Live first, then history: nothing published from here on can be missed.
            if self.hub.fanout.add(&topic, &self.queue) {
                self.hub.engine.watch(&topic);
                self.hub.occupancy_changed(&topic);
            }
            // Grown by doubling from one, not from Vec's first step of
            // four: most subscriptions hold one topic for their whole
            // life, and three unused states cost about 330 bytes.
            if self.topics.len() == self.topics.capacity() {
                self.topics.reserve_exact(self.topics.len().max(1));
            }
            self.topics.push(TopicState {
                topic: topic.clone(),
                fetched: since,
                delivered: since,
                catching_up: true,
                page: FIRST_PAGE,
                ephemeral,
                retry: None,
            });
        }
        let i = self.topics.len() - 1;
        let i = self.index(&topic).unwrap_or(i);
        self.topics[i].retry = None;
        if let Err(e) = self.catch_up(i).await {
            // Refused: the topic is not part of the subscription (its live
            // events would otherwise wait for a back-fill nobody asked for).
            self.remove(&topic);
            return Err(e.into());
        }
        let st = &self.topics[i];
        Ok(st.delivered.or(st.fetched).unwrap_or(Position::new(0, 0)))
    }

    /// Adds `topic`, starting at `start`: resolves it to a position with
    /// the engine's history reads, then resumes from there as [`add`]
    /// does. Returns the position the subscription starts from.
    ///
    /// [`add`]: Subscription::add
    pub async fn add_from(
        &mut self,
        topic: Topic,
        start: Start,
    ) -> Result<Position, SubscribeError> {
        let since = match start {
            Start::Now => None,
            Start::After(p) => Some(p),
            Start::Earliest => {
                let now = self.hub.engine.read(&topic, None, 1).await?;
                // A read from the epoch's start reports the place before
                // the oldest retained event, truncated or not.
                let first = Position::new(now.epoch, 0);
                Some(self.hub.engine.read(&topic, Some(first), 1).await?.from)
            }
            Start::Last(n) => Some(self.hub.engine.read_back(&topic, None, n).await?.from),
        };
        self.add(topic, since).await
    }

    /// Stops delivering `topic`. Returns whether it was subscribed.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let Some(i) = self.index(topic) else {
            return false;
        };
        self.topics.swap_remove(i);
        self.pending.retain(|d| !is_of(d, topic));
        if self.hub.fanout.remove(topic, self.queue.id()) {
            self.hub.engine.unwatch(topic);
            self.hub.occupancy_changed(topic);
        }
        true
    }

    /// The topics, in the order they were added.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.iter().map(|t| &t.topic)
    }

    /// How many topics the subscription holds.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The cursor of everything delivered so far, for every topic.
    pub fn cursor(&self) -> Cursor {
        let mut c = Cursor::new();
        for st in &self.topics {
            if let Some(p) = st.delivered {
                c.set(&st.topic, p);
            }
        }
        c
    }

    /// The position delivered so far for one topic.
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        self.index(topic).and_then(|i| self.topics[i].delivered)
    }

    /// Waits for the next delivery. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Delivery {
        match self.next_inner(true).await {
            Some(d) => d,
            None => Delivery::Closed(CloseReason::Shutdown),
        }
    }

    /// The next delivery if one is ready without waiting for a publish (it
    /// may still read history). Used to batch what is already queued.
    pub async fn next_ready(&mut self) -> Option<Delivery> {
        self.next_inner(false).await
    }

    /// The next delivery if one is ready without waiting at all: queued
    /// already, and no topic needing a history read first (`None` then,
    /// and [`next`](Self::next) reads it). Used to batch what is already
    /// queued; unlike [`next_ready`](Self::next_ready) it is not a future,
    /// so a connection's task is not sized for a history read it never
    /// makes there.
    pub fn try_next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.take_pending() {
                return Some(d);
            }
            if self.topics.iter().any(|t| t.catching_up) {
                return None;
            }
            let popped = self.queue.try_pop()?;
            if let Some(d) = self.take_popped(popped) {
                return Some(d);
            }
        }
    }

    /// What is owed before anything more is popped: the reason this
    /// subscription closed, else the oldest back-filled delivery (then
    /// recorded as delivered).
    fn take_pending(&mut self) -> Option<Delivery> {
        if let Some(reason) = self.closed {
            return Some(Delivery::Closed(reason));
        }
        let d = self.pending.pop_front()?;
        self.mark_delivered(&d);
        Some(d)
    }

    /// What a popped item gives: a live event's delivery ([`accept_live`](
    /// Self::accept_live); `None` when history has it or it begins a
    /// catch-up), or nothing yet for a close, which is recorded and then
    /// given by [`take_pending`](Self::take_pending).
    fn take_popped(&mut self, popped: Popped) -> Option<Delivery> {
        match popped {
            Popped::Closed(reason) => {
                self.closed = Some(reason);
                None
            }
            Popped::Event(e) => self.accept_live(e),
        }
    }

    async fn next_inner(&mut self, wait: bool) -> Option<Delivery> {
        loop {
            if let Some(d) = self.take_pending() {
                return Some(d);
            }
            // The clock is read only when a topic is catching up (a read of
            // it per delivery showed in fan-out profiles).
            let mut now = None;
            if let Some(i) = self.topics.iter().position(|t| {
                t.catching_up
                    && t.retry.is_none_or(|(at, _)| {
                        at <= *now.get_or_insert_with(tokio::time::Instant::now)
                    })
            }) {
                match self.catch_up(i).await {
                    Ok(()) => {
                        if let Some(st) = self.topics.get_mut(i) {
                            st.retry = None;
                        }
                    }
                    Err(e) => {
                        if let Some(st) = self.topics.get_mut(i) {
                            let pause = st
                                .retry
                                .map_or(READ_RETRY_FIRST, |(_, p)| (p * 2).min(READ_RETRY_MAX));
                            tracing::debug!(error = %e, topic = %st.topic, "history read failed; retrying");
                            st.retry = Some((
                                tokio::time::Instant::now() + crate::engine::jittered(pause),
                                pause,
                            ));
                        }
                    }
                }
                continue;
            }
            // Topics waiting to read again: the others' live events are
            // delivered meanwhile.
            let next_retry = self
                .topics
                .iter()
                .filter(|t| t.catching_up)
                .filter_map(|t| t.retry.map(|(at, _)| at))
                .min();
            let popped = if wait {
                match next_retry {
                    // Cancel-safe: the queue gives nothing up unless popped.
                    // Boxed: rare (a history read failed), and every idle
                    // connection's task would otherwise be sized for its timer.
                    Some(at) => match Box::pin(tokio::time::timeout_at(at, self.queue.pop())).await
                    {
                        Ok(p) => p,
                        Err(_) => continue,
                    },
                    None => self.queue.pop().await,
                }
            } else {
                self.queue.try_pop()?
            };
            if let Some(d) = self.take_popped(popped) {
                return Some(d);
            }
        }
    }

    fn accept_live(&mut self, e: Arc<Event>) -> Option<Delivery> {
        let i = self.index(&e.topic)?;
        if e.is_signal() {
            // herald.join / herald.leave: live only, no cursor to keep.
            return Some(Delivery::Event(e));
        }
        let st = &mut self.topics[i];
        if st.catching_up {
            return None; // history will have it
        }
        let fetched = st.fetched?;
        let later = e.position.epoch != fetched.epoch || e.position.seq > fetched.seq;
        if st.ephemeral && later {
            // Live only: an event this node's listener missed was never
            // stored, so there is nothing to fill a hole from.
            st.fetched = Some(e.position);
            st.delivered = Some(e.position);
            return Some(Delivery::Event(e));
        }
        if e.position.epoch == fetched.epoch {
            if e.position.seq <= fetched.seq {
                return None; // already back-filled
            }
            if e.position.seq == fetched.seq + 1 {
                st.fetched = Some(e.position);
                st.delivered = Some(e.position);
                return Some(Delivery::Event(e));
            }
        }
        // A hole or a new epoch: fill it from history.
        st.catching_up = true;
        None
    }

    fn mark_delivered(&mut self, d: &Delivery) {
        let (topic, pos) = match d {
            Delivery::Event(e) if e.is_signal() => return,
            Delivery::Event(e) => (&e.topic, e.position),
            Delivery::Gap(g) => (&g.topic, g.position),
            Delivery::Closed(_) => return,
        };
        if let Some(i) = self.index(topic) {
            self.topics[i].delivered = Some(pos);
        }
    }

    /// Reads the next page of `i`'s history into `pending`: at most
    /// `read_page` events and about [`BACKFILL_BYTES`] of their data.
    async fn catch_up(&mut self, i: usize) -> Result<(), EngineError> {
        let topic = self.topics[i].topic.clone();
        let after = self.topics[i].fetched;
        let page = self.topics[i]
            .page
            .clamp(1, self.hub.config.read_page.max(1));
        let read = self.hub.engine.read(&topic, after, page).await?;
        // The topic may have been removed or restarted while we read.
        let Some(i) = self.index(&topic) else {
            return Ok(());
        };
        if self.topics[i].fetched != after || !self.topics[i].catching_up {
            return Ok(());
        }
        let mut more = read.more();
        let mut events = read.events;
        // Held for a client that may not read: at most about
        // BACKFILL_BYTES of event data per page (always one event), the
        // rest is read again when this page has been delivered.
        let mut bytes = 0usize;
        if let Some(keep) = events.iter().position(|e| {
            bytes += e.data.len();
            bytes > BACKFILL_BYTES
        }) {
            let keep = keep.max(1);
            if keep < events.len() {
                events.truncate(keep);
                more = true;
            }
        }
        let st = &mut self.topics[i];
        if !events.is_empty() {
            let average = (bytes.min(usize::MAX / 2) / events.len()).max(1);
            st.page = (BACKFILL_BYTES / average).max(1);
        }
        if after.is_none() {
            // "From now": the client's cursor starts at the head.
            st.delivered = Some(read.from);
        }
        if let Some(reason) = read.gap {
            self.pending.push_back(Delivery::Gap(Gap {
                topic: topic.clone(),
                reason,
                position: read.from,
            }));
        }
        st.fetched = Some(events.last().map_or(read.from, |e| e.position));
        st.catching_up = more;
        self.pending.extend(events.into_iter().map(Delivery::Event));
        Ok(())
    }

    fn index(&self, topic: &Topic) -> Option<usize> {
        self.topics.iter().position(|t| &t.topic == topic)
    }

    /// Records the connection this subscription serves as one of `user`'s
    /// (see [`crate::fanout::Fanout::identify`]), so that the server API can
    /// list it and close it ([`crate::Hub::disconnect_user`]).
    pub fn identify(&self, user: &str, client: &str, transport: crate::metrics::Transport) {
        self.hub
            .fanout
            .identify(&self.queue, user, client, transport);
    }

    /// The subscription's id: unique in this process while it lives (a
    /// WebSocket connection's publish rate counts under it).
    pub fn id(&self) -> crate::fanout::SubscriberId {
        self.queue.id()
    }

    /// Events waiting in the live queue (for tests and metrics).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

fn is_of(d: &Delivery, topic: &Topic) -> bool {
    match d {
        Delivery::Event(e) => &e.topic == topic,
        Delivery::Gap(g) => &g.topic == topic,
        Delivery::Closed(_) => false,
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for st in &self.topics {
            if self.hub.fanout.remove(&st.topic, self.queue.id()) {
                self.hub.engine.unwatch(&st.topic);
                self.hub.occupancy_changed(&st.topic);
            }
        }
        self.hub.fanout.drop_queue(self.queue.id());
    }
}
