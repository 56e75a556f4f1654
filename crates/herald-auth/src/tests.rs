use std::time::Duration;

use super::*;
use herald_core::Topic;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

fn claims(sub: &str, subscribe: &[&str], publish: &[&str], ttl: i64) -> jwt::Claims {
    let now = now();
    jwt::Claims {
        sub: Some(sub.into()),
        exp: (now as i64 + ttl) as u64,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        info: None,
    }
}

fn hs_auth() -> Auth {
    Auth::new(AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        public: vec!["public/**".into()],
        api_keys: vec!["publisher-key-0123456789".into()],
        ..AuthConfig::default()
    })
    .unwrap()
}

fn user(auth: &Auth, c: jwt::Claims) -> Principal {
    let tok = jwt::sign(&c, SECRET, false, None).unwrap();
    auth.authenticate(Some(Credential::new(tok, Source::Header)))
        .unwrap()
}

fn t(s: &str) -> Topic {
    Topic::new(s).unwrap()
}

#[test]
fn grants_follow_patterns() {
    let auth = hs_auth();
    let tok = jwt::sign(
        &claims("alice", &["users/{sub}/**"], &["chat/*"], 60),
        SECRET,
        false,
        None,
    )
    .unwrap();
    let who = auth
        .authenticate(Some(Credential::new(tok, Source::Header)))
        .unwrap();
    assert!(auth
        .authorize(&who, Action::Subscribe, &t("users/alice/n"))
        .is_ok());
    assert!(matches!(
        auth.authorize(&who, Action::Subscribe, &t("users/bob/n")),
        Err(Denied::Forbidden { .. })
    ));
    assert!(auth
        .authorize(&who, Action::Publish, &t("chat/room"))
        .is_ok());
    assert!(auth
        .authorize(&who, Action::Publish, &t("users/alice/n"))
        .is_err());
    assert!(auth
        .authorize(&who, Action::Subscribe, &t("public/news"))
        .is_ok());
    let anon = auth.authenticate(None).unwrap();
    assert!(auth
        .authorize(&anon, Action::Subscribe, &t("public/news"))
        .is_ok());
    assert!(matches!(
        auth.authorize(&anon, Action::Subscribe, &t("users/alice/n")),
        Err(Denied::Unauthenticated(_))
    ));
    assert!(auth
        .authorize(&anon, Action::Publish, &t("public/news"))
        .is_err());
}

#[test]
fn refuses_bad_tokens() {
    let auth = hs_auth();
    let cred = |tok: String| auth.authenticate(Some(Credential::new(tok, Source::Header)));
    // Expired.
    let tok = jwt::sign(&claims("a", &["**"], &[], -60), SECRET, false, None).unwrap();
    assert_eq!(cred(tok), Err(AuthError::Invalid("token expired")));
    // Bad signature.
    let tok = jwt::sign(
        &claims("a", &["**"], &[], 60),
        b"another-secret-another-secret!!",
        false,
        None,
    )
    .unwrap();
    assert_eq!(cred(tok), Err(AuthError::Invalid("bad signature")));
    // alg none.
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let payload = serde_json::to_string(&claims("a", &["**"], &[], 60)).unwrap();
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    assert_eq!(
        cred(none),
        Err(AuthError::Invalid("unsigned tokens (alg none) are refused"))
    );
    // Unknown kid.
    let tok = jwt::sign(&claims("a", &["**"], &[], 60), SECRET, false, Some("other")).unwrap();
    assert_eq!(cred(tok), Err(AuthError::Invalid("unknown key id (kid)")));
    // Garbage.
    assert!(cred("not.a.jwt".into()).is_err());
    assert!(cred("".into()).is_err());
    // Not yet valid.
    let mut c = claims("a", &["**"], &[], 600);
    c.nbf = Some(now() + 300);
    let tok = jwt::sign(&c, SECRET, false, None).unwrap();
    assert_eq!(
        cred(tok),
        Err(AuthError::Invalid("token not valid yet (nbf)"))
    );
    // Invalid pattern in the claims.
    let tok = jwt::sign(&claims("a", &["a/**/b"], &[], 60), SECRET, false, None).unwrap();
    assert!(cred(tok).is_err());
}

#[test]
fn query_tokens_must_be_short_lived() {
    let auth = hs_auth();
    let long = jwt::sign(&claims("a", &["**"], &[], 3600), SECRET, false, None).unwrap();
    assert!(auth
        .authenticate(Some(Credential::new(long.clone(), Source::Query)))
        .is_err());
    assert!(auth
        .authenticate(Some(Credential::new(long, Source::Header)))
        .is_ok());
    let short = jwt::sign(&claims("a", &["**"], &[], 120), SECRET, false, None).unwrap();
    assert!(auth
        .authenticate(Some(Credential::new(short, Source::Query)))
        .is_ok());
}

#[test]
fn api_keys_only_in_the_header() {
    let auth = hs_auth();
    let key = "publisher-key-0123456789";
    assert_eq!(
        auth.authenticate(Some(Credential::new(key, Source::Header))),
        Ok(Principal::Publisher)
    );
    assert!(auth
        .authenticate(Some(Credential::new(key, Source::Query)))
        .is_err());
    assert!(auth
        .authenticate(Some(Credential::new(
            "publisher-key-012345678X",
            Source::Header
        )))
        .is_err());
}

#[test]
fn one_time_tokens_are_single_use() {
    let auth = hs_auth();
    let tok = jwt::sign(
        &claims("alice", &["users/{sub}/**"], &[], 60),
        SECRET,
        false,
        None,
    )
    .unwrap();
    let who = auth
        .authenticate(Some(Credential::new(tok, Source::Header)))
        .unwrap();
    let (ot, ttl) = auth.issue_one_time(&who).unwrap();
    assert!(ot.starts_with("ot_") && ot.len() > 40);
    assert_eq!(ttl, Duration::from_secs(60));
    let first = auth
        .authenticate(Some(Credential::new(ot.clone(), Source::Query)))
        .unwrap();
    assert_eq!(first, who);
    assert!(auth
        .authenticate(Some(Credential::new(ot, Source::Query)))
        .is_err());
    // Expired.
    let auth = Auth::new(AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        one_time_ttl: Duration::from_millis(10),
        ..AuthConfig::default()
    })
    .unwrap();
    let (ot, _) = auth.issue_one_time(&Principal::Publisher).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        auth.authenticate(Some(Credential::new(ot, Source::Query))),
        Err(AuthError::Invalid("one-time token expired"))
    );
}

#[test]
fn one_time_token_race_has_one_winner() {
    let auth = Arc::new(hs_auth());
    for _ in 0..50 {
        let (ot, _) = auth.issue_one_time(&Principal::Publisher).unwrap();
        let wins: usize = (0..4)
            .map(|_| {
                let auth = auth.clone();
                let ot = ot.clone();
                std::thread::spawn(move || {
                    auth.authenticate(Some(Credential::new(ot, Source::Query)))
                        .is_ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(wins, 1);
    }
}

#[test]
fn open_mode_allows_everything() {
    let auth = Auth::open();
    let who = auth.authenticate(None).unwrap();
    assert_eq!(who, Principal::Open);
    assert!(auth.authorize(&who, Action::Publish, &t("x")).is_ok());
}

#[test]
fn credentials_do_not_print_their_token() {
    let c = Credential::new("secret-token-value", Source::Query);
    assert!(!format!("{c:?}").contains("secret-token-value"));
}

#[test]
fn config_errors() {
    assert!(Auth::new(AuthConfig {
        public_key_pem: Some(
            b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n".to_vec()
        ),
        ..AuthConfig::default()
    })
    .is_err());
    assert!(Auth::new(AuthConfig {
        public: vec!["a/**/b".into()],
        ..AuthConfig::default()
    })
    .is_err());
    assert!(Auth::new(AuthConfig {
        api_keys: vec!["short".into()],
        ..AuthConfig::default()
    })
    .is_err());
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any string as a credential, from any source: an answer, never a panic,
        /// and never an accepted identity.
        #[test]
        fn arbitrary_tokens_are_refused_without_panic(tok in "\\PC{0,200}", dots in "[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,60}\\.[A-Za-z0-9_=-]{0,40}") {
            let auth = hs_auth();
            for t in [tok.as_str(), dots.as_str()] {
                for src in [Source::Header, Source::Cookie, Source::Query, Source::Message] {
                    let r = auth.authenticate(Some(Credential::new(t, src)));
                    prop_assert!(r.is_err());
                }
            }
        }

        /// Well-formed JWT shapes with arbitrary JSON inside are refused cleanly.
        #[test]
        fn arbitrary_headers_and_payloads(h in "\\PC{0,60}", p in "\\PC{0,80}") {
            use base64::Engine;
            let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            let t = format!("{}.{}.{}", b64(&h), b64(&p), b64("sig"));
            prop_assert!(hs_auth().authenticate(Some(Credential::new(t, Source::Header))).is_err());
        }
    }
}

#[test]
fn run_time_grants() {
    let auth = hs_auth();
    let tok = jwt::sign(&claims("alice", &[], &[], 60), SECRET, false, None).unwrap();
    let alice = auth
        .authenticate(Some(Credential::new(tok, Source::Header)))
        .unwrap();
    let tok = jwt::sign(&claims("bob", &[], &[], 60), SECRET, false, None).unwrap();
    let bob = auth
        .authenticate(Some(Credential::new(tok, Source::Header)))
        .unwrap();
    let anon = Principal::Anonymous;
    let t1 = t("llm/abc");
    assert!(auth.authorize(&alice, Action::Subscribe, &t1).is_err());
    auth.grant_subscribe(
        &t1,
        Readers::Subjects(vec!["alice".into()]),
        Duration::from_secs(60),
    );
    assert!(auth.authorize(&alice, Action::Subscribe, &t1).is_ok());
    assert!(auth.authorize(&bob, Action::Subscribe, &t1).is_err());
    assert!(auth.authorize(&anon, Action::Subscribe, &t1).is_err());
    assert!(
        auth.authorize(&alice, Action::Publish, &t1).is_err(),
        "a read grant is not a write grant"
    );
    let t2 = t("llm/shared");
    auth.grant_subscribe(&t2, Readers::Everyone, Duration::from_secs(60));
    assert!(auth.authorize(&anon, Action::Subscribe, &t2).is_ok());
    let t3 = t("llm/expired");
    auth.grant_subscribe(&t3, Readers::Everyone, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(5));
    assert!(auth.authorize(&anon, Action::Subscribe, &t3).is_err());
}

#[test]
fn principals_survive_a_shared_store() {
    let grant = Grant {
        subject: Some("alice".into()),
        subscribe: vec![TopicPattern::parse("users/{sub}/**").unwrap()],
        publish: vec![TopicPattern::parse("chat/*").unwrap()],
        llm: true,
        admin: false,
        expires_at: Some(1_900_000_000),
        info: None,
    };
    for who in [
        Principal::Open,
        Principal::Anonymous,
        Principal::Publisher,
        Principal::User(Arc::new(grant)),
    ] {
        assert_eq!(principal_from_store(&principal_to_store(&who)), Some(who));
    }
    assert_eq!(principal_from_store("{\"kind\":\"root\"}"), None);
    assert_eq!(principal_from_store("not json"), None);
}

#[test]
fn relay_topics_are_written_by_nobody_but_the_relay() {
    let auth = hs_auth();
    let wide = user(&auth, claims("alice", &["**"], &["**", "llm/*"], 60));
    let topic = t("llm/abc");
    for who in [
        Principal::Open,
        Principal::Publisher,
        Principal::Anonymous,
        wide.clone(),
    ] {
        assert!(matches!(
            auth.authorize(&who, Action::Publish, &topic),
            Err(Denied::Forbidden { .. })
        ));
    }
    // Reading is a matter of the relay's run-time grants, not of patterns.
    assert!(auth.authorize(&wide, Action::Subscribe, &topic).is_err());
    // A topic that merely starts with the letters is not reserved.
    assert!(auth.authorize(&wide, Action::Publish, &t("llmx/a")).is_ok());
}

#[test]
fn starting_a_generation_is_its_own_grant() {
    let auth = hs_auth();
    let topic = t("llm/abc");
    let publisher_of_llm = user(&auth, claims("alice", &[], &["llm/*", "**"], 60));
    assert!(matches!(
        auth.authorize(&publisher_of_llm, Action::Generate, &topic),
        Err(Denied::Forbidden { .. })
    ));
    let mut c = claims("bob", &[], &[], 60);
    c.herald.llm = true;
    let llm = user(&auth, c);
    assert!(auth.authorize(&llm, Action::Generate, &topic).is_ok());
    assert!(matches!(
        auth.authorize(&Principal::Anonymous, Action::Generate, &topic),
        Err(Denied::Unauthenticated(_))
    ));
    assert!(auth
        .authorize(&Principal::Publisher, Action::Generate, &topic)
        .is_ok());
    let open_llm = Auth::new(AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        public_llm: true,
        ..AuthConfig::default()
    })
    .unwrap();
    assert!(open_llm
        .authorize(&Principal::Anonymous, Action::Generate, &topic)
        .is_ok());
}

#[test]
fn presence_and_history_are_granted_like_subscribe() {
    let auth = hs_auth();
    let alice = user(&auth, claims("alice", &["rooms/*"], &[], 60));
    for action in [Action::Subscribe, Action::Presence, Action::History] {
        assert!(auth.authorize(&alice, action, &t("rooms/1")).is_ok());
        assert!(auth.authorize(&alice, action, &t("other/1")).is_err());
    }
}

#[test]
fn the_server_api_needs_the_publisher_key_or_the_admin_claim() {
    let auth = hs_auth();
    let grant = |admin: bool, expires_at: Option<u64>| {
        Principal::User(Arc::new(Grant {
            subject: Some("ops".into()),
            subscribe: vec![TopicPattern::parse("**").unwrap()],
            publish: vec![TopicPattern::parse("**").unwrap()],
            llm: true,
            admin,
            expires_at,
            info: None,
        }))
    };
    assert_eq!(auth.authorize_server_api(&Principal::Publisher), Ok(()));
    assert_eq!(auth.authorize_server_api(&Principal::Open), Ok(()));
    assert_eq!(
        auth.authorize_server_api(&grant(true, Some(now() + 60))),
        Ok(())
    );
    // Every grant of topics, but not the claim: 403.
    assert_eq!(
        auth.authorize_server_api(&grant(false, Some(now() + 60))),
        Err(Denied::NotAdmin)
    );
    assert!(matches!(
        auth.authorize_server_api(&Principal::Anonymous),
        Err(Denied::Credential(_))
    ));
    // The claim past its deadline: 401, as for every other action.
    assert!(matches!(
        auth.authorize_server_api(&grant(true, Some(now() - 10))),
        Err(Denied::Credential(_))
    ));
}

#[test]
fn an_expired_principal_is_refused_every_action() {
    let auth = hs_auth();
    let grant = Grant {
        subject: Some("alice".into()),
        subscribe: vec![TopicPattern::parse("**").unwrap()],
        publish: vec![TopicPattern::parse("**").unwrap()],
        llm: true,
        admin: false,
        expires_at: Some(now() - 10),
        info: None,
    };
    let who = Principal::User(Arc::new(grant));
    for action in [
        Action::Subscribe,
        Action::Publish,
        Action::Presence,
        Action::History,
        Action::Generate,
    ] {
        assert!(
            matches!(
                auth.authorize(&who, action, &t("a/b")),
                Err(Denied::Unauthenticated(_))
            ),
            "{action:?}"
        );
    }
    assert!(auth.authorize_exchange(&who, Some(Source::Header)).is_err());
}

#[test]
fn token_exchange_needs_a_header_or_cookie_credential() {
    let auth = hs_auth();
    let alice = user(&auth, claims("alice", &["**"], &[], 60));
    assert!(auth
        .authorize_exchange(&alice, Some(Source::Header))
        .is_ok());
    assert!(auth
        .authorize_exchange(&alice, Some(Source::Cookie))
        .is_ok());
    assert!(auth
        .authorize_exchange(&alice, Some(Source::Query))
        .is_err());
    assert!(auth
        .authorize_exchange(&alice, Some(Source::Message))
        .is_err());
    assert!(auth
        .authorize_exchange(&Principal::Anonymous, None)
        .is_err());
    assert!(Auth::open()
        .authorize_exchange(&Principal::Open, None)
        .is_ok());
}

#[test]
fn url_token_lifetime_counts_from_now_or_iat() {
    use crate::query_token_lifetime as rule;
    let now = 1_800_000_000;
    // Five minutes ahead, issued now: fine.
    assert!(rule(Some(now), now + 300, now, 300, 5).is_ok());
    // Issued long ago, five minutes left: fine (remaining lifetime counts).
    assert!(rule(Some(now - 86_400), now + 300, now, 300, 5).is_ok());
    // Ten years ahead with exp five minutes after it: iat in the future.
    let future = now + 10 * 365 * 86_400;
    assert!(rule(Some(future), future + 300, now, 300, 5).is_err());
    // Too long.
    assert!(rule(Some(now), now + 301, now, 300, 5).is_err());
    // iat within the leeway is accepted, no iat is not.
    assert!(rule(Some(now + 3), now + 200, now, 300, 5).is_ok());
    assert!(rule(None, now + 60, now, 300, 5).is_err());
}

#[test]
fn generation_streams_are_read_only_by_their_grantees() {
    let auth = Auth::new(AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        public: vec!["**".into()],
        ..AuthConfig::default()
    })
    .unwrap();
    let topic = t("llm/abcdef");
    let wide = user(&auth, claims("mallory", &["**", "*/*", "llm/*"], &[], 60));
    let alice = user(&auth, claims("alice", &[], &[], 60));
    for action in [Action::Subscribe, Action::Presence, Action::History] {
        assert!(matches!(
            auth.authorize(&wide, action, &topic),
            Err(Denied::Forbidden { .. })
        ));
        assert!(matches!(
            auth.authorize(&Principal::Anonymous, action, &topic),
            Err(Denied::Unauthenticated(_))
        ));
    }
    auth.grant_subscribe(
        &topic,
        Readers::Subjects(vec!["alice".into()]),
        Duration::from_secs(60),
    );
    assert!(auth.authorize(&alice, Action::Subscribe, &topic).is_ok());
    assert!(auth.authorize(&wide, Action::Subscribe, &topic).is_err());
    // Other topics still follow the public pattern.
    assert!(auth
        .authorize(&Principal::Anonymous, Action::Subscribe, &t("a/b"))
        .is_ok());
}

#[test]
fn publisher_keys_are_not_exchanged() {
    let auth = hs_auth();
    assert!(auth
        .authorize_exchange(&Principal::Publisher, Some(Source::Header))
        .is_err());
}
