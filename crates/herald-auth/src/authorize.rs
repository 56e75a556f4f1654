//! The one authorization check ([`Auth::authorize`]), the exchange of a
//! credential for a one-time token, and topics granted at run time (an LLM
//! stream to its creator).

use std::time::{Duration, Instant};

use herald_core::Topic;

use crate::{now, Action, Auth, Denied, Principal, Source, RELAY_TOPIC_PREFIX};

/// Who may read a topic granted at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Anyone, with or without a credential.
    Everyone,
    /// These subjects.
    Subjects(Vec<String>),
}

/// Run-time grants held at most; the oldest expire first.
const MAX_GRANTS: usize = 100_000;

/// Why a caller without any credential is refused the server API.
const SERVER_API_CREDENTIAL: &str =
    "the server API needs the publisher key or a token with the admin claim";

impl Auth {
    /// The admin page's stats topic: once a second every node running the
    /// admin page (`herald serve --admin`) publishes a JSON snapshot of
    /// itself here, from inside the server. It reads like the server API:
    /// only the publisher key, a token with the admin claim, or anyone on
    /// a server without authentication may subscribe to it (or read its
    /// history or presence); no `--public` pattern and no token pattern
    /// opens it, however wide, and nobody publishes to it through `/v1`.
    pub const ADMIN_STATS_TOPIC: &'static str = "herald/admin/stats";

    /// The check of the server API (`POST /v1/disconnect`, `GET
    /// /v1/topics`, `GET /v1/connections`; DESIGN.md, "Your backend in the
    /// loop", "Server API"), which acts on no one topic: the publisher key,
    /// a token with the admin claim (top-level `"admin": true` or
    /// `herald.admin`), or anyone on a server without authentication. A
    /// token past its deadline is refused as in [`Auth::authorize`].
    ///
    /// Errors: [`Denied::Credential`] (401) without a credential or with an
    /// expired one, [`Denied::NotAdmin`] (403) for a token without the claim.
    pub fn authorize_server_api(&self, who: &Principal) -> Result<(), Denied> {
        if let Some(exp) = who.expires_at() {
            if now() >= exp.saturating_add(self.config.leeway_secs) {
                return Err(Denied::Credential(SERVER_API_CREDENTIAL));
            }
        }
        match who {
            Principal::Open | Principal::Publisher => Ok(()),
            Principal::User(g) if g.admin => Ok(()),
            Principal::User(_) => Err(Denied::NotAdmin),
            Principal::Anonymous => Err(Denied::Credential(SERVER_API_CREDENTIAL)),
        }
    }

    /// The one authorization check, used by every transport and endpoint
    /// for every [`Action`]. A principal whose credential has passed its
    /// deadline is refused as unauthenticated.
    ///
    /// Errors: [`Denied::Unauthenticated`] (401 / WebSocket 4001) without a
    /// credential or with an expired one, [`Denied::Forbidden`] (403 / 4003)
    /// when the credential does not grant the action on `topic`.
    pub fn authorize(&self, who: &Principal, action: Action, topic: &Topic) -> Result<(), Denied> {
        let forbidden = || Denied::Forbidden {
            action: action.verb(),
            topic: topic.as_str().to_owned(),
        };
        if action == Action::Publish && topic.as_str().starts_with(RELAY_TOPIC_PREFIX) {
            return Err(forbidden());
        }
        // The Mercure log (private updates included) and the hub's own
        // namespace are nobody's topics through `/v1`, whatever the
        // credential (the publisher key included).
        if crate::mercure::is_reserved(topic.as_str()) {
            return Err(forbidden());
        }
        if let Some(exp) = who.expires_at() {
            if now() >= exp.saturating_add(self.config.leeway_secs) {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()));
            }
        }
        let reads = matches!(
            action,
            Action::Subscribe | Action::Presence | Action::History
        );
        // The admin page's stats are read as the server API is, and
        // written only by the server itself.
        if topic.as_str() == Self::ADMIN_STATS_TOPIC {
            return match who {
                _ if !reads => Err(forbidden()),
                Principal::Open | Principal::Publisher => Ok(()),
                Principal::User(g) if g.admin => Ok(()),
                Principal::User(_) => Err(forbidden()),
                Principal::Anonymous => Err(Denied::Unauthenticated(topic.as_str().to_owned())),
            };
        }
        // A generation's stream is private to whom the relay granted it (its
        // creator, or whom it was shared with): no token pattern and no
        // public pattern reads it, however wide.
        let relay_topic = topic.as_str().starts_with(RELAY_TOPIC_PREFIX);
        let patterns = match (who, action) {
            (Principal::Open | Principal::Publisher, _) => return Ok(()),
            (_, Action::Generate) if self.config.public_llm => return Ok(()),
            (_, _) if reads && self.granted_to(topic, who.subject()) => return Ok(()),
            (Principal::Anonymous, _) if reads && relay_topic => {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()))
            }
            (_, _) if reads && relay_topic => return Err(forbidden()),
            (_, _) if reads && self.public.iter().any(|p| p.matches(topic, None)) => return Ok(()),
            (Principal::Anonymous, _) => {
                return Err(Denied::Unauthenticated(topic.as_str().to_owned()))
            }
            (Principal::User(g), Action::Generate) => {
                return if g.llm { Ok(()) } else { Err(forbidden()) }
            }
            (Principal::User(g), Action::Publish) => &g.publish,
            (Principal::User(g), _) => &g.subscribe,
        };
        if patterns.iter().any(|p| p.matches(topic, who.subject())) {
            Ok(())
        } else {
            Err(forbidden())
        }
    }

    /// Whether `who`, authenticated by a credential from `source`, may
    /// exchange it for a one-time token (`POST /v1/tokens`): on a server with
    /// authentication, only a credential from the `Authorization` header or
    /// the cookie may, never a token from a URL (nor another one-time token).
    pub fn authorize_exchange(
        &self,
        who: &Principal,
        source: Option<Source>,
    ) -> Result<(), Denied> {
        if !self.enabled {
            return Ok(());
        }
        let expired = who
            .expires_at()
            .is_some_and(|exp| now() >= exp.saturating_add(self.config.leeway_secs));
        if !who.is_authenticated()
            || expired
            || !matches!(source, Some(Source::Header | Source::Cookie))
        {
            return Err(Denied::Credential(
                "authenticate with an Authorization header or the cookie to get a one-time token",
            ));
        }
        // A publisher key stays in the Authorization header: it is never
        // turned into a credential that travels in a URL.
        if *who == Principal::Publisher {
            return Err(Denied::Credential(
                "publisher keys cannot be exchanged for one-time tokens",
            ));
        }
        Ok(())
    }

    /// Lets `readers` subscribe to `topic` for `ttl`, beside what their
    /// tokens grant (e.g. an LLM stream readable by its creator).
    pub fn grant_subscribe(&self, topic: &Topic, readers: Readers, ttl: Duration) {
        let now = Instant::now();
        let mut map = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_GRANTS {
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= MAX_GRANTS {
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (exp, _))| *exp)
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(topic.as_str().to_owned(), (now + ttl, readers));
    }

    fn granted_to(&self, topic: &Topic, subject: Option<&str>) -> bool {
        let map = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(topic.as_str()) {
            Some((exp, readers)) if *exp > Instant::now() => match readers {
                Readers::Everyone => true,
                Readers::Subjects(s) => subject.is_some_and(|sub| s.iter().any(|x| x == sub)),
            },
            _ => false,
        }
    }
}
