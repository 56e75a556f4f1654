//! Mercure's authorization (the Mercure specification, dunglas/mercure
//! `spec/mercure.md`, "Authorization"): the topic selectors a Mercure JWT
//! grants ([`selector`]) and the verification of those JWTs with the
//! Mercure keys ([`claims`]). The `/.well-known/mercure` endpoints build on
//! them; Herald's own `/v1` authentication is not involved.

pub mod claims;
pub mod selector;

/// The Herald topic under which the Mercure log is stored: every Mercure
/// update, and the copy of every Herald publish a Mercure subscriber may
/// see, in one total order (the order `Last-Event-ID` resumes in). Private
/// updates are in it, so no `/v1` request may use it ([`is_reserved`]).
pub const LOG_TOPIC: &str = ".well-known/mercure";

/// Whether `topic` belongs to the hub itself, so that neither a Mercure
/// publisher nor any `/v1` request may use it: Herald's [`LOG_TOPIC`]
/// (and names under it), and every topic whose path, once resolved as a
/// URI reference against the hub's URL, is `/.well-known/mercure` or lies
/// under it, whatever its scheme and authority (Mercure specification,
/// "Publication": the reserved hub namespace, where subscription events
/// live). Answers in a few nanoseconds for names that do not contain
/// `mercure` at all.
pub fn is_reserved(topic: &str) -> bool {
    // Cheap first: every spelling the URL parser folds into the reserved
    // path (`\` for `/`, `./` and `x/../` segments, `%2e` dots) still
    // holds the word itself.
    if !topic
        .as_bytes()
        .windows(7)
        .any(|w| w.eq_ignore_ascii_case(b"mercure"))
    {
        return false;
    }
    if topic == LOG_TOPIC || topic.starts_with(".well-known/mercure/") {
        return true;
    }
    let Ok(base) = url::Url::parse(selector::DEFAULT_BASE_URL) else {
        return true;
    };
    match base.join(topic) {
        Ok(u) => {
            let path = u.path();
            path == "/.well-known/mercure" || path.starts_with("/.well-known/mercure/")
        }
        // Not a URI reference at all: refused, to be safe.
        Err(_) => true,
    }
}

#[cfg(test)]
mod reserved_tests {
    use super::is_reserved;

    #[test]
    fn the_hub_namespace_is_reserved_however_it_is_spelled() {
        for t in [
            ".well-known/mercure",
            ".well-known/mercure/x",
            "/.well-known/mercure",
            "/.well-known/mercure/subscriptions/Exact/a/b",
            "https://other.example/.well-known/mercure/subscriptions/x",
            "https://hub.example/a/../.well-known/mercure",
            "/x/%2e%2e/.well-known/mercure/y",
            "/.well-known\\mercure/subscriptions/Exact/X/sub",
            "\\.well-known\\mercure\\subscriptions",
            "/.well-known/./mercure/subscriptions/a",
            "/.well-known/x/../mercure/subscriptions/a",
            "/.well-known/%2e/mercure/subscriptions/a",
            "https://x/.well-known\\mercure/subscriptions/a",
        ] {
            assert!(is_reserved(t), "{t}");
        }
        for t in [
            "https://example.com/books/1",
            "orders/1",
            "https://example.com/.well-known/mercurex",
            "https://example.com/docs/.well-known/mercure-notes",
        ] {
            assert!(!is_reserved(t), "{t}");
        }
    }
}
