//! Key and channel names: pure functions, no I/O.
//!
//! Every key of a topic carries the topic in a Redis Cluster hash tag
//! (`{...}`), so a topic's stream, its metadata, its pub/sub channel and its
//! idempotency records all live on one shard, and one Lua script may touch
//! them all. Inside the tag, `%`, `{` and `}` are percent-escaped: the tag then
//! ends at the first `}`, so no topic name can reach into another topic's
//! keys, and names without those characters stay readable
//! (`herald:{orders/123}:s`).

use herald_core::Topic;

/// Names of everything Herald keeps in Redis, under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (such as `herald:`), which is prepended to every
    /// key and channel as is.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn topic_key(&self, topic: &Topic, suffix: &str) -> String {
        let name = topic.as_str();
        let mut k = String::with_capacity(self.prefix.len() + name.len() + suffix.len() + 4);
        k.push_str(&self.prefix);
        k.push('{');
        escape_into(name, &mut k);
        k.push_str("}:");
        k.push_str(suffix);
        k
    }

    /// The channel every node listens on for cluster-wide requests (the
    /// server API's `disconnect`): a plain (not sharded) pub/sub channel,
    /// which Redis Cluster delivers to every node.
    pub fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// The topic's history: a stream whose entry ids are `<seq>-<published ms>`.
    pub fn stream(&self, topic: &Topic) -> String {
        self.topic_key(topic, "s")
    }

    /// The topic's position counters: a hash with `epoch` and `seq`.
    pub fn meta(&self, topic: &Topic) -> String {
        self.topic_key(topic, "m")
    }

    /// The sharded pub/sub channel that carries the topic's new events.
    pub fn channel(&self, topic: &Topic) -> String {
        self.topic_key(topic, "c")
    }

    /// The record of an idempotent publish with client id `id` on `topic`.
    pub fn idempotency(&self, topic: &Topic, id: &str) -> String {
        let mut k = self.topic_key(topic, "i:");
        k.push_str(id);
        k
    }

    /// The topic's present clients: a sorted set, member the client id,
    /// score the time (ms, Redis server clock) its entry expires unless
    /// the node holding it refreshes it.
    pub fn presence_members(&self, topic: &Topic) -> String {
        self.topic_key(topic, "pm")
    }

    /// The topic's present clients' entries: a hash from client id to
    /// `<node id>\n<member JSON>` (the node that holds the client, and what
    /// `GET /v1/presence` lists).
    pub fn presence_info(&self, topic: &Topic) -> String {
        self.topic_key(topic, "pi")
    }

    /// The nodes that have local subscribers of the topic (occupancy, for
    /// the webhooks): a sorted set, member a node id, score the time (ms,
    /// Redis server clock) its entry expires unless the node refreshes it.
    pub fn occupancy(&self, topic: &Topic) -> String {
        self.topic_key(topic, "o")
    }

    /// The topics that have occupancy entries: a sorted set, member the
    /// topic name, score the time (ms, Redis server clock) after which a
    /// sweeper looks for expired entries (a dead node's). One key, not tied
    /// to a topic.
    pub fn occupancy_index(&self) -> String {
        format!("{}occupied", self.prefix)
    }

    /// A one-time token. Not tied to a topic; tokens are URL-safe base64, so
    /// they hold no braces and the key is hashed whole.
    pub fn one_time_token(&self, token: &str) -> String {
        format!("{}ot:{token}", self.prefix)
    }

    /// The topic a channel name belongs to, if it is one of ours.
    pub fn topic_of_channel(&self, channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix('{')?;
        let escaped = rest.strip_suffix("}:c")?;
        Topic::new(&unescape(escaped)?).ok()
    }
}

fn escape_into(name: &str, out: &mut String) {
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    if s.contains('}') {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "7B" => '{',
            "7D" => '}',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    /// The hash tag Redis Cluster would hash: between the first `{` and the
    /// first `}` after it.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open + 1..].find('}').unwrap() + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn readable_names() {
        let k = Keys::new("herald:");
        assert_eq!(k.stream(&t("orders/123")), "herald:{orders/123}:s");
        assert_eq!(k.meta(&t("orders/123")), "herald:{orders/123}:m");
        assert_eq!(k.channel(&t("orders/123")), "herald:{orders/123}:c");
        assert_eq!(
            k.idempotency(&t("orders/123"), "abc"),
            "herald:{orders/123}:i:abc"
        );
        assert_eq!(
            k.presence_members(&t("orders/123")),
            "herald:{orders/123}:pm"
        );
        assert_eq!(k.presence_info(&t("orders/123")), "herald:{orders/123}:pi");
    }

    #[test]
    fn one_slot_per_topic() {
        let k = Keys::new("app:");
        for name in ["a", "a}b", "{x}", "100%", "%7D", "chat:room"] {
            let topic = t(name);
            let tag = hash_tag(&k.stream(&topic)).to_owned();
            assert_eq!(hash_tag(&k.meta(&topic)), tag);
            assert_eq!(hash_tag(&k.channel(&topic)), tag);
            assert_eq!(hash_tag(&k.idempotency(&topic, "}{")), tag);
            assert_eq!(hash_tag(&k.presence_members(&topic)), tag);
            assert_eq!(hash_tag(&k.presence_info(&topic)), tag);
            assert_eq!(k.topic_of_channel(&k.channel(&topic)), Some(topic));
        }
    }

    #[test]
    fn topics_never_share_keys() {
        let k = Keys::new("h:");
        // Without escaping, the first topic's idempotency key for id "x}:s"
        // would be the second topic's stream.
        assert_ne!(k.idempotency(&t("a"), "x}:s"), k.stream(&t("a}:i:x")));
        assert_ne!(k.stream(&t("a}b")), k.stream(&t("a%7Db")));
        assert_eq!(k.topic_of_channel("h:{a}:s"), None);
        assert_eq!(k.topic_of_channel("other:{a}:c"), None);
        assert_eq!(k.topic_of_channel("h:{a%zz}:c"), None);
    }
}
