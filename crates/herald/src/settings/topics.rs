//! The `[[topics]]` tables of the config file: topic policies by pattern
//! (DESIGN.md, "Topic policies"), checked key by key so that a wrong one is
//! named with its table's number.

use std::sync::Arc;

use anyhow::bail;
use herald_core::engine::HistoryLimits;
use herald_core::policy::{PolicyRule, TopicPolicies, TopicPolicy};
use herald_core::topic_pattern::TopicPattern;
use toml::{Table, Value};

use crate::duration::parse_duration;

/// The keys a `[[topics]]` table takes.
const KEYS: &[&str] = &[
    "pattern",
    "history",
    "history_max_age",
    "presence",
    "join_leave",
    "client_publish",
    "publish_rate",
    "subscribe_hook",
    "publish_hook",
];

/// The policies of `tables`, in order (first match wins), checked against
/// the server-wide `history` limits.
///
/// Errors: the first wrong key, as `[[topics]] #N (pattern "P"): ...`
/// (tables numbered from 1): a missing or invalid pattern, an unknown key, a
/// value of the wrong type, a negative or too large number, `history` above
/// `--history`, a duration that does not parse, and `join_leave = true`
/// beside `presence = false` (join/leave events need presence; `join_leave`
/// alone turns presence on).
pub(super) fn policies(
    tables: &[Table],
    history: HistoryLimits,
) -> anyhow::Result<Arc<TopicPolicies>> {
    let mut rules: Vec<PolicyRule> = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let r = rule(i + 1, table, history)?;
        // First match wins: a table behind the same pattern, or behind
        // `**`, can never match. That is a mistake in the file.
        if let Some(j) = rules
            .iter()
            .position(|e| e.pattern.as_str() == r.pattern.as_str() || e.pattern.as_str() == "**")
        {
            bail!(
                "[[topics]] #{} (pattern {:?}) can never match: #{} (pattern {:?}) comes first                  and matches every topic it would (first match wins; move the narrower table up)",
                i + 1,
                r.pattern.as_str(),
                j + 1,
                rules[j].pattern.as_str()
            );
        }
        rules.push(r);
    }
    Ok(Arc::new(TopicPolicies::new(rules)))
}

/// What the policies allow but probably do not mean: an ephemeral rule
/// that covers the LLM relay's topics (`llm/...`), whose streams then
/// cannot be resumed after a reload.
pub(super) fn warnings(policies: &TopicPolicies) -> Vec<String> {
    let probe = herald_core::Topic::new("llm/0").expect("a valid topic");
    if policies.resolve(&probe).is_ephemeral() {
        vec![
            "a [[topics]] table with history = 0 covers llm/... topics: LLM token streams then              keep no history, and a client that reloads cannot resume its answer"
                .into(),
        ]
    } else {
        Vec::new()
    }
}

fn rule(n: usize, table: &Table, history: HistoryLimits) -> anyhow::Result<PolicyRule> {
    let pattern = match table.get("pattern") {
        None => bail!("[[topics]] #{n}: `pattern` is missing (such as pattern = \"cursors/**\")"),
        Some(Value::String(p)) => p.clone(),
        Some(other) => bail!(
            "[[topics]] #{n}: `pattern` must be a string such as \"cursors/**\", not {}",
            other.type_str()
        ),
    };
    let at = format!("[[topics]] #{n} (pattern {pattern:?})");
    for key in table.keys() {
        if !KEYS.contains(&key.as_str()) {
            bail!(
                "{at}: unknown key `{key}`; the keys are {}",
                KEYS.join(", ")
            );
        }
    }
    let pattern = match TopicPattern::parse(&pattern) {
        Err(e) => bail!("{at}: `pattern` is invalid: {e}"),
        Ok(_) if pattern.contains("{sub}") => {
            bail!("{at}: `pattern` may not use {{sub}}: a topic policy applies to everyone")
        }
        Ok(p) => p,
    };
    let mut policy = TopicPolicy::DEFAULT;
    if let Some(v) = table.get("history") {
        let events = integer(&at, "history", v)?;
        if events > history.max_events as u64 {
            bail!(
                "{at}: `history` is {events}, above the server's --history {} (raise --history, \
                 or keep fewer events here)",
                history.max_events
            );
        }
        policy.history = Some(events as usize);
    }
    if let Some(v) = table.get("history_max_age") {
        let Value::String(text) = v else {
            bail!(
                "{at}: `history_max_age` must be a duration string such as \"10m\", not {}",
                v.type_str()
            );
        };
        let age =
            parse_duration(text).map_err(|e| anyhow::anyhow!("{at}: `history_max_age`: {e}"))?;
        if age.is_zero() {
            bail!("{at}: `history_max_age` must be longer than 0 (for a topic that keeps nothing, set history = 0)");
        }
        policy.history_max_age = Some(age);
    }
    let presence = boolean(&at, "presence", table.get("presence"))?;
    let join_leave = boolean(&at, "join_leave", table.get("join_leave"))?;
    if join_leave == Some(true) && presence == Some(false) {
        bail!("{at}: `join_leave = true` needs presence (it reports who comes and goes); remove `presence = false`");
    }
    policy.presence = presence.unwrap_or(false);
    policy.join_leave = join_leave.unwrap_or(false);
    policy.client_publish = boolean(&at, "client_publish", table.get("client_publish"))?;
    if let Some(v) = table.get("publish_rate") {
        let rate = integer(&at, "publish_rate", v)?;
        if rate == 0 {
            bail!("{at}: `publish_rate` must be at least 1 (to let no client publish, set client_publish = false)");
        }
        let Ok(rate) = u32::try_from(rate) else {
            bail!(
                "{at}: `publish_rate` is {rate}, more than {} per second",
                u32::MAX
            );
        };
        policy.publish_rate = Some(rate);
    }
    policy.subscribe_hook =
        boolean(&at, "subscribe_hook", table.get("subscribe_hook"))?.unwrap_or(false);
    policy.publish_hook = boolean(&at, "publish_hook", table.get("publish_hook"))?.unwrap_or(false);
    Ok(PolicyRule { pattern, policy })
}

/// A non-negative integer.
fn integer(at: &str, key: &str, v: &Value) -> anyhow::Result<u64> {
    match v {
        Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        Value::Integer(i) => bail!("{at}: `{key}` must not be negative, not {i}"),
        other => bail!(
            "{at}: `{key}` must be a whole number, not {}",
            other.type_str()
        ),
    }
}

/// `true` or `false`, if given.
fn boolean(at: &str, key: &str, v: Option<&Value>) -> anyhow::Result<Option<bool>> {
    match v {
        None => Ok(None),
        Some(Value::Boolean(b)) => Ok(Some(*b)),
        Some(other) => bail!(
            "{at}: `{key}` must be true or false, not {}",
            other.type_str()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn server() -> HistoryLimits {
        HistoryLimits {
            max_events: 100,
            max_age: Duration::from_secs(3600),
        }
    }

    fn parse(text: &str) -> anyhow::Result<Arc<TopicPolicies>> {
        #[derive(serde::Deserialize)]
        struct File {
            topics: Vec<Table>,
        }
        let f: File = toml::from_str(text).unwrap();
        policies(&f.topics, server())
    }

    #[test]
    fn an_ephemeral_rule_over_llm_topics_is_warned_about() {
        let p = parse("[[topics]]\npattern = \"**\"\nhistory = 0").unwrap();
        assert!(warnings(&p)[0].contains("llm/"), "{:?}", warnings(&p));
        let p = parse("[[topics]]\npattern = \"cursors/**\"\nhistory = 0").unwrap();
        assert!(warnings(&p).is_empty());
    }

    #[test]
    fn reads_every_key() {
        let p = parse(
            r#"
            [[topics]]
            pattern = "cursors/**"
            history = 0
            history_max_age = "10m"
            presence = false
            join_leave = false
            client_publish = true
            publish_rate = 60
            subscribe_hook = true
            [[topics]]
            pattern = "news/*"
            client_publish = false
            publish_hook = true
            "#,
        )
        .unwrap();
        let c = p.resolve(&herald_core::Topic::new("cursors/a").unwrap());
        assert!(c.is_ephemeral());
        assert_eq!(c.history_max_age, Some(Duration::from_secs(600)));
        assert_eq!(c.publish_rate, Some(60));
        assert!(c.subscribe_hook && !c.publish_hook);
        let n = p.resolve(&herald_core::Topic::new("news/a").unwrap());
        assert!(!n.allows_client_publish());
        assert!(n.publish_hook && !n.subscribe_hook);
        assert!(p.has_hooks());
    }

    #[test]
    fn refusals_name_the_table_and_key() {
        for (text, want) in [
            ("[[topics]]\nhistory = 1", "#1: `pattern` is missing"),
            (
                "[[topics]]\npattern = \"a/**/b\"",
                "#1 (pattern \"a/**/b\"): `pattern` is invalid",
            ),
            ("[[topics]]\npattern = \"u/{sub}\"", "may not use {sub}"),
            (
                "[[topics]]\npattern = \"a\"\n[[topics]]\npattern = \"b\"\nhistroy = 1",
                "#2 (pattern \"b\"): unknown key `histroy`",
            ),
            (
                "[[topics]]\npattern = \"a\"\nhistory = -1",
                "`history` must not be negative",
            ),
            (
                "[[topics]]\npattern = \"a\"\nhistory = 101",
                "above the server's --history 100",
            ),
            (
                "[[topics]]\npattern = \"a\"\nhistory = \"5\"",
                "`history` must be a whole number",
            ),
            (
                "[[topics]]\npattern = \"a\"\nhistory_max_age = \"soon\"",
                "`history_max_age`",
            ),
            (
                "[[topics]]\npattern = \"a\"\nhistory_max_age = \"0s\"",
                "longer than 0",
            ),
            (
                "[[topics]]\npattern = \"a\"\npresence = 1",
                "`presence` must be true or false",
            ),
            (
                "[[topics]]\npattern = \"a/*\"\n[[topics]]\npattern = \"a/*\"",
                "#2 (pattern \"a/*\") can never match: #1",
            ),
            (
                "[[topics]]\npattern = \"**\"\n[[topics]]\npattern = \"b\"",
                "can never match: #1 (pattern \"**\")",
            ),
            (
                "[[topics]]\npattern = \"a\"\npresence = false\njoin_leave = true",
                "`join_leave = true` needs presence",
            ),
            (
                "[[topics]]\npattern = \"a\"\nclient_publish = 1",
                "`client_publish` must be true or false",
            ),
            (
                "[[topics]]\npattern = \"a\"\npublish_hook = \"yes\"",
                "`publish_hook` must be true or false",
            ),
            (
                "[[topics]]\npattern = \"a\"\npublish_rate = 0",
                "at least 1",
            ),
            (
                "[[topics]]\npattern = \"a\"\npublish_rate = 5000000000",
                "more than",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
