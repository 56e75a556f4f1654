//! Topic policies: per-topic history, client publishing, publish rate,
//! presence and hooks,
//! chosen by topic pattern (the `[[topics]]` tables of `herald serve
//! --config`).
//!
//! Rules are tried in order and the first whose [`TopicPattern`] matches
//! wins; a topic no rule matches gets [`TopicPolicy::DEFAULT`], every field
//! unset, so it behaves exactly as without policies (the server-wide history
//! limits, grants alone decide publishing, no rate).
//!
//! A topic's policy is resolved once and cached: at most
//! [`MAX_CACHED_TOPICS`] entries, and the cache is emptied when full (a
//! topic then resolves again on its next use; rules are few and matching is
//! a walk over segments, so a miss is cheap). With no rule nothing is cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::engine::HistoryLimits;
use crate::metrics::{PolicyRefusal, PolicyRefusals};
use crate::topic::Topic;
use crate::topic_pattern::TopicPattern;

/// Topics whose resolved policy is remembered at most.
pub const MAX_CACHED_TOPICS: usize = 65_536;

/// What a policy sets for the topics it matches. `None` leaves the
/// server-wide default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicPolicy {
    /// Events kept per topic; `Some(0)` makes the topic ephemeral: events
    /// reach current subscribers only and are never stored (positions still
    /// increase, so cursors stay valid).
    pub history: Option<usize>,
    /// Events older than this are dropped.
    pub history_max_age: Option<Duration>,
    /// Whether a client credential (a JWT, cookie or one-time token, on any
    /// transport) may publish, given a publish grant; `Some(false)` leaves
    /// publishing to the publisher key. Default: grants decide.
    pub client_publish: Option<bool>,
    /// Publishes accepted per second per connection (WebSocket) or per
    /// caller (HTTP); beyond, `rate_limited`. Default: no rate.
    pub publish_rate: Option<u32>,
    /// Track who is subscribed (`GET /v1/presence`, the WebSocket
    /// `presence` message; see [`crate::presence`]). Default: off.
    pub presence: bool,
    /// Send `herald.join` / `herald.leave` to subscribers; implies
    /// [`TopicPolicy::presence`]. Default: off.
    pub join_leave: bool,
    /// Ask the application's subscribe hook before a client reads the
    /// topic (subscribe, history, presence), once its grants allow it.
    /// Default: off.
    pub subscribe_hook: bool,
    /// Ask the application's publish hook before a client publish (not the
    /// publisher key's) is stored; the hook may refuse it or replace its
    /// data. Default: off.
    pub publish_hook: bool,
}

impl TopicPolicy {
    /// The policy of a topic no rule matches: every field unset.
    pub const DEFAULT: TopicPolicy = TopicPolicy {
        history: None,
        history_max_age: None,
        client_publish: None,
        publish_rate: None,
        presence: false,
        join_leave: false,
        subscribe_hook: false,
        publish_hook: false,
    };

    /// Whether members are tracked (`presence` or `join_leave`).
    pub fn tracks_presence(&self) -> bool {
        self.presence || self.join_leave
    }

    /// Whether events of the topic are never stored (`history = 0`).
    pub fn is_ephemeral(&self) -> bool {
        self.history == Some(0)
    }

    /// The history limits of the topic: this policy's over `server`'s.
    pub fn history_limits(&self, server: HistoryLimits) -> HistoryLimits {
        HistoryLimits {
            max_events: self.history.unwrap_or(server.max_events),
            max_age: self.history_max_age.unwrap_or(server.max_age),
        }
    }

    /// Whether a client credential may publish here (given its grants).
    pub fn allows_client_publish(&self) -> bool {
        self.client_publish.unwrap_or(true)
    }
}

/// One rule: the topics it matches and what they get.
#[derive(Clone, Debug)]
pub struct PolicyRule {
    /// Which topics (a pattern without `{sub}`: a policy has no subject).
    pub pattern: TopicPattern,
    /// What they get.
    pub policy: TopicPolicy,
}

/// The ordered rules and the cache of resolutions. Shared by the hub, the
/// engines and the publish path through an `Arc`.
#[derive(Default)]
pub struct TopicPolicies {
    rules: Vec<(TopicPattern, Arc<TopicPolicy>)>,
    /// Topic → index of its rule (`None`: no rule matches).
    cache: RwLock<HashMap<Topic, Option<usize>>>,
    rates: PublishRates,
    /// Publishes each rule refused (`/metrics`, see [`TopicPolicies::count_refusal`]).
    refusals: PolicyRefusals,
}

impl std::fmt::Debug for TopicPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|(p, policy)| (p.as_str(), policy)))
            .finish()
    }
}

impl TopicPolicies {
    /// Policies from `rules`, first match wins.
    pub fn new(rules: Vec<PolicyRule>) -> TopicPolicies {
        TopicPolicies {
            refusals: PolicyRefusals::new(rules.len()),
            rules: rules
                .into_iter()
                .map(|r| (r.pattern, Arc::new(r.policy)))
                .collect(),
            cache: RwLock::new(HashMap::new()),
            rates: PublishRates::default(),
        }
    }

    /// Whether there is no rule (every topic gets the defaults).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule tracks presence.
    pub fn has_presence(&self) -> bool {
        self.rules.iter().any(|(_, p)| p.tracks_presence())
    }

    /// Whether any rule asks a hook (`subscribe_hook` or `publish_hook`).
    pub fn has_hooks(&self) -> bool {
        self.rules
            .iter()
            .any(|(_, p)| p.subscribe_hook || p.publish_hook)
    }

    /// Whether any rule makes topics ephemeral.
    pub fn has_ephemeral(&self) -> bool {
        self.rules.iter().any(|(_, p)| p.is_ephemeral())
    }

    /// The shortest `history_max_age` a rule sets, if any (an engine that
    /// expires on a timer runs it often enough for this one too).
    pub fn shortest_max_age(&self) -> Option<Duration> {
        self.rules
            .iter()
            .filter_map(|(_, p)| p.history_max_age)
            .min()
    }

    /// The policy of `topic`: the first matching rule's, else
    /// [`TopicPolicy::DEFAULT`]. Cached per topic (see the module docs).
    pub fn resolve(&self, topic: &Topic) -> Arc<TopicPolicy> {
        match self.rule_of(topic) {
            Some(i) => self.rules[i].1.clone(),
            None => default_policy(),
        }
    }

    /// The index of the rule `topic` gets, if any (cached).
    fn rule_of(&self, topic: &Topic) -> Option<usize> {
        if self.rules.is_empty() {
            return None;
        }
        if let Some(i) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return *i;
        }
        let rule = self
            .rules
            .iter()
            .position(|(pattern, _)| pattern.matches(topic, None));
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_TOPICS {
            cache.clear();
        }
        cache.insert(topic.clone(), rule);
        rule
    }

    /// Counts a publish of `topics` (one entry per event) by `caller`
    /// against each topic's `publish_rate`, all or nothing: either every
    /// event fits its rule's rate for this second and all are counted, or
    /// none is and the answer names the first topic over its rate.
    ///
    /// The rate counts the publishes a caller makes in one second to all
    /// the topics of one rule (`[[topics]]` table), so spreading them over
    /// many topics does not multiply it. `caller` names who is counted: a
    /// WebSocket connection, or an HTTP caller (see the HTTP crate).
    pub fn admit_publish(&self, caller: &str, topics: &[&Topic]) -> Result<(), RateLimited> {
        let mut wanted: Vec<(usize, u32, u32, &Topic)> = Vec::new();
        for t in topics {
            let Some(i) = self.rule_of(t) else { continue };
            let Some(rate) = self.rules[i].1.publish_rate else {
                continue;
            };
            match wanted.iter_mut().find(|w| w.0 == i) {
                Some(w) => w.2 += 1,
                None => wanted.push((i, rate, 1, t)),
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        self.rates
            .admit(caller, &wanted, unix_second())
            .inspect_err(|r| {
                if let Some(w) = wanted.iter().find(|w| w.3.as_str() == r.topic) {
                    self.refusals.count(w.0, PolicyRefusal::RateLimited);
                }
            })
    }

    /// Counts a client publish to `topic` refused by its rule for `reason`
    /// (`herald_policy_publish_refusals_total`; rate refusals are counted
    /// by [`TopicPolicies::admit_publish`] itself). Nothing for a topic no
    /// rule matches.
    pub fn count_refusal(&self, topic: &Topic, reason: PolicyRefusal) {
        if let Some(i) = self.rule_of(topic) {
            self.refusals.count(i, reason);
        }
    }

    /// The rules in order: each one's pattern and policy.
    pub(crate) fn rules(&self) -> &[(TopicPattern, Arc<TopicPolicy>)] {
        &self.rules
    }

    /// The refusal counters, by rule number.
    pub(crate) fn refusals(&self) -> &PolicyRefusals {
        &self.refusals
    }

    /// Rate counters held now (at most [`MAX_RATE_COUNTERS`]).
    pub fn rate_counters(&self) -> usize {
        self.rates.len()
    }

    /// The history limits of `topic` over the server-wide `server`.
    pub fn history_limits(&self, topic: &Topic, server: HistoryLimits) -> HistoryLimits {
        if self.rules.is_empty() {
            return server;
        }
        self.resolve(topic).history_limits(server)
    }

    /// Topics whose resolution is cached now (at most [`MAX_CACHED_TOPICS`]).
    pub fn cached(&self) -> usize {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Most (caller, rule) rate counters held. A counter lives one second; when
/// the table is full the counters of past seconds go, and if it is still
/// full (more callers publishing to rate-limited topics in the same second)
/// a new caller is let through uncounted rather than refused for what
/// others do.
pub const MAX_RATE_COUNTERS: usize = 100_000;

/// A publish over its topic's `publish_rate` (HTTP 429 `rate_limited` with
/// `Retry-After: 1`; WebSocket `error` with code `rate_limited`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "publishing to {topic} is limited to {rate} per second by its topic policy; retry in a second"
)]
pub struct RateLimited {
    /// The first topic over its rate.
    pub topic: String,
    /// Its rule's `publish_rate`.
    pub rate: u32,
}

/// (caller, rule index) → (second, publishes counted in it).
type Windows = HashMap<(Box<str>, usize), (u64, u32)>;

/// Fixed one-second windows per (caller, rule).
#[derive(Default)]
struct PublishRates {
    windows: Mutex<Windows>,
}

impl PublishRates {
    /// `wanted`: (rule, rate, events, first topic) per rule.
    fn admit(
        &self,
        caller: &str,
        wanted: &[(usize, u32, u32, &Topic)],
        second: u64,
    ) -> Result<(), RateLimited> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let used = |windows: &HashMap<(Box<str>, usize), (u64, u32)>, rule: usize| match windows
            .get(&(Box::<str>::from(caller), rule))
        {
            Some((s, n)) if *s == second => *n,
            _ => 0,
        };
        for (rule, rate, n, topic) in wanted {
            if used(&windows, *rule).saturating_add(*n) > *rate {
                return Err(RateLimited {
                    topic: topic.as_str().to_owned(),
                    rate: *rate,
                });
            }
        }
        for (rule, _, n, _) in wanted {
            let key = (Box::<str>::from(caller), *rule);
            if !windows.contains_key(&key) && windows.len() >= MAX_RATE_COUNTERS {
                windows.retain(|_, (s, _)| *s == second);
                if windows.len() >= MAX_RATE_COUNTERS {
                    continue;
                }
            }
            let w = windows.entry(key).or_insert((second, 0));
            if w.0 != second {
                *w = (second, 0);
            }
            w.1 += n;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Seconds since the Unix epoch (the rate windows).
fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The one shared default policy, so that unmatched topics cost no
/// allocation.
fn default_policy() -> Arc<TopicPolicy> {
    static DEFAULT: std::sync::OnceLock<Arc<TopicPolicy>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| Arc::new(TopicPolicy::DEFAULT))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &str, policy: TopicPolicy) -> PolicyRule {
        PolicyRule {
            pattern: TopicPattern::parse(p).unwrap(),
            policy,
        }
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn first_match_wins_and_others_get_defaults() {
        let ephemeral = TopicPolicy {
            history: Some(0),
            ..TopicPolicy::DEFAULT
        };
        let closed = TopicPolicy {
            client_publish: Some(false),
            publish_rate: Some(5),
            ..TopicPolicy::DEFAULT
        };
        let policies = TopicPolicies::new(vec![
            rule("cursors/**", ephemeral.clone()),
            rule("cursors/x", closed.clone()),
            rule("news/*", closed.clone()),
        ]);
        assert_eq!(*policies.resolve(&t("cursors/x")), ephemeral);
        assert_eq!(*policies.resolve(&t("cursors")), ephemeral);
        assert_eq!(*policies.resolve(&t("news/today")), closed);
        assert_eq!(*policies.resolve(&t("news/a/b")), TopicPolicy::DEFAULT);
        assert_eq!(*policies.resolve(&t("other")), TopicPolicy::DEFAULT);
        assert!(policies.resolve(&t("cursors/y")).is_ephemeral());
        assert!(!policies.resolve(&t("news/y")).allows_client_publish());
        assert!(policies.resolve(&t("other")).allows_client_publish());
    }

    #[test]
    fn history_limits_fall_back_to_the_server() {
        let server = HistoryLimits {
            max_events: 100,
            max_age: Duration::from_secs(60),
        };
        let policies = TopicPolicies::new(vec![rule(
            "short/**",
            TopicPolicy {
                history: Some(3),
                ..TopicPolicy::DEFAULT
            },
        )]);
        let l = policies.history_limits(&t("short/a"), server);
        assert_eq!((l.max_events, l.max_age), (3, Duration::from_secs(60)));
        let l = policies.history_limits(&t("long"), server);
        assert_eq!((l.max_events, l.max_age), (100, Duration::from_secs(60)));
        let none = TopicPolicies::default();
        assert_eq!(none.history_limits(&t("x"), server).max_events, 100);
        assert_eq!(none.cached(), 0, "no rule: nothing cached");
    }

    #[test]
    fn publish_rates_count_per_caller_and_rule() {
        let limited = TopicPolicy {
            publish_rate: Some(3),
            ..TopicPolicy::DEFAULT
        };
        let policies = TopicPolicies::new(vec![rule("game/**", limited)]);
        let (a, b, free) = (t("game/1"), t("game/2"), t("chat"));
        let rates = &policies.rates;
        let second = 1_000;
        let want = |n, topic| [(0usize, 3u32, n, topic)];
        assert!(rates.admit("c1", &want(2, &a), second).is_ok());
        // The rule's rate covers all its topics; all or nothing.
        let err = rates.admit("c1", &want(2, &b), second).unwrap_err();
        assert_eq!((err.topic.as_str(), err.rate), ("game/2", 3));
        assert!(rates.admit("c1", &want(1, &b), second).is_ok());
        assert!(rates.admit("c1", &want(1, &a), second).is_err());
        // Another caller, or the next second, starts afresh.
        assert!(rates.admit("c2", &want(3, &a), second).is_ok());
        assert!(rates.admit("c1", &want(3, &a), second + 1).is_ok());
        // Topics without a rate are never counted.
        for _ in 0..10 {
            assert!(policies.admit_publish("c3", &[&free]).is_ok());
        }
        assert!(policies.admit_publish("c3", &[&a, &a, &a, &a]).is_err());
        assert_eq!(policies.rate_counters(), 2);
    }

    #[test]
    fn rate_counters_are_bounded() {
        let rates = PublishRates::default();
        let topic = t("x");
        for i in 0..MAX_RATE_COUNTERS + 10 {
            let _ = rates.admit(&i.to_string(), &[(0, 1, 1, &topic)], 5);
        }
        assert!(rates.len() <= MAX_RATE_COUNTERS);
        // A later second frees the earlier ones.
        rates.admit("late", &[(0, 1, 1, &topic)], 6).unwrap();
        assert!(rates.len() <= 2);
    }

    #[test]
    fn the_cache_is_bounded() {
        let policies = TopicPolicies::new(vec![rule("a/*", TopicPolicy::DEFAULT)]);
        for i in 0..MAX_CACHED_TOPICS + 10 {
            policies.resolve(&t(&format!("b/{i}")));
            assert!(policies.cached() <= MAX_CACHED_TOPICS);
        }
        assert!(policies.cached() <= MAX_CACHED_TOPICS);
        // Resolution is the same after the cache was emptied.
        assert_eq!(*policies.resolve(&t("b/1")), TopicPolicy::DEFAULT);
    }
}
