//! Key sets: parsing and its refusals, lifetimes, and verification through
//! [`Auth`] with a fetcher that counts its fetches (time is paused, so the
//! 10 s and lifetime rules are checked without waiting).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::{Auth, AuthConfig, AuthError, Credential, Source};

const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa_private.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private.pem");
const URL: &str = "https://idp.example/.well-known/jwks.json";

/// The public JWK of a test private key, with `kid`.
fn jwk(private: &[u8], alg: Algorithm, kid: &str) -> Value {
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private).unwrap(),
        _ => EncodingKey::from_ec_pem(private).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn rsa_a() -> Value {
    jwk(RSA_PRIVATE, Algorithm::RS256, "a")
}

fn ec_b() -> Value {
    jwk(EC_PRIVATE, Algorithm::ES256, "b")
}

/// A token with `claims` (plus `exp`, `iat`, `sub` unless given) signed
/// with `alg` by `key` (a PEM private key, or a secret for HS256).
fn token(alg: Algorithm, key: &[u8], kid: Option<&str>, claims: Value) -> String {
    let now = crate::now();
    let mut c = json!({"sub": "alice", "exp": now + 60, "iat": now});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key).unwrap(),
        _ => EncodingKey::from_secret(key),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &c, &enc).unwrap()
}

/// Serves `doc` (changeable) and counts fetches; `down` makes it fail.
#[derive(Default)]
struct Fake {
    doc: Mutex<Value>,
    cache_control: Mutex<Option<String>>,
    fetches: AtomicUsize,
    down: AtomicBool,
}

impl Fake {
    fn serving(keys: Vec<Value>) -> Arc<Fake> {
        let f = Arc::new(Fake::default());
        f.set(keys);
        f
    }

    fn set(&self, keys: Vec<Value>) {
        *self.doc.lock().unwrap() = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl JwksFetcher for Fake {
    fn fetch<'a>(&'a self, url: &'a str, max_bytes: usize) -> FetchFuture<'a> {
        Box::pin(async move {
            assert_eq!(url, URL);
            assert_eq!(max_bytes, MAX_BYTES);
            self.fetches.fetch_add(1, Ordering::SeqCst);
            // A fetch takes a while: concurrent misses overlap it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(FetchError("connection refused".into()));
            }
            Ok(Fetched {
                body: self.doc.lock().unwrap().to_string().into_bytes(),
                cache_control: self.cache_control.lock().unwrap().clone(),
            })
        })
    }
}

fn auth_with(fake: &Arc<Fake>, config: AuthConfig) -> Auth {
    let mut auth = Auth::new(AuthConfig {
        jwks_urls: vec![URL.into()],
        ..config
    })
    .unwrap();
    auth.set_jwks_fetcher(fake.clone());
    auth
}

async fn check(auth: &Auth, token: &str) -> Result<(), AuthError> {
    auth.authenticate_async(Some(Credential::new(token, Source::Header)))
        .await
        .map(|_| ())
}

#[test]
fn lifetimes_from_cache_control() {
    assert_eq!(max_age(None), DEFAULT_MAX_AGE);
    assert_eq!(
        max_age(Some("public, max-age=600")),
        Duration::from_secs(600)
    );
    assert_eq!(max_age(Some("max-age=\"900\"")), Duration::from_secs(900));
    assert_eq!(max_age(Some("max-age=5")), MIN_MAX_AGE);
    assert_eq!(max_age(Some("max-age=99999999")), MAX_MAX_AGE);
    assert_eq!(max_age(Some("max-age=600, no-cache")), MIN_MAX_AGE);
    assert_eq!(max_age(Some("no-store")), MIN_MAX_AGE);
    assert_eq!(max_age(Some("max-age=soon")), DEFAULT_MAX_AGE);
    assert_eq!(max_age(Some("s-maxage=600")), DEFAULT_MAX_AGE);
}

#[test]
fn urls_must_be_http_with_a_host_and_no_credentials() {
    assert!(check_url(URL).is_ok());
    assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
    assert!(check_url("ftp://idp.example/jwks").is_err());
    assert!(check_url("https:///jwks").is_err());
    assert!(check_url("https://user:pw@idp.example/jwks").is_err());
    assert!(check_url("https://idp.example/a b").is_err());
    let e = Auth::new(AuthConfig {
        jwks_urls: vec!["https://user:hunter2@idp.example/".into()],
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn a_set_keeps_signing_keys_with_a_kid_and_the_algorithm_of_their_type() {
    let mut rsa_no_alg = rsa_a();
    rsa_no_alg.as_object_mut().unwrap().remove("alg");
    rsa_no_alg["kid"] = "rsa-no-alg".into();
    let mut ec_no_alg = ec_b();
    ec_no_alg.as_object_mut().unwrap().remove("alg");
    ec_no_alg["kid"] = "ec-no-alg".into();
    let mut rsa_ps = rsa_a();
    rsa_ps["alg"] = "PS256".into();
    rsa_ps["kid"] = "rsa-ps".into();
    // Skipped: a shared secret, an HS alg on an RSA key, an EC key claiming
    // RS256, an encryption key, no kid, an unknown alg, not a key.
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "oct", "alg": "HS256"});
    let mut rsa_hs = rsa_a();
    rsa_hs["alg"] = "HS256".into();
    rsa_hs["kid"] = "rsa-hs".into();
    let mut ec_rs = ec_b();
    ec_rs["alg"] = "RS256".into();
    ec_rs["kid"] = "ec-rs".into();
    let mut enc = rsa_a();
    enc["use"] = "enc".into();
    enc["kid"] = "enc".into();
    let mut no_kid = rsa_a();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut unknown_alg = rsa_a();
    unknown_alg["alg"] = "RSA-OAEP".into();
    unknown_alg["kid"] = "oaep".into();
    let doc = json!({"keys": [
        rsa_a(), ec_b(), rsa_no_alg, ec_no_alg, rsa_ps,
        oct, rsa_hs, ec_rs, enc, no_kid, unknown_alg, {"kty": "nope"},
    ]});
    let (keys, skipped) = parse_set(doc.to_string().as_bytes()).unwrap();
    let algs: HashMap<&str, Algorithm> = keys.iter().map(|(k, v)| (k.as_str(), v.alg)).collect();
    assert_eq!(
        algs,
        HashMap::from([
            ("a", Algorithm::RS256),
            ("b", Algorithm::ES256),
            ("rsa-no-alg", Algorithm::RS256),
            ("ec-no-alg", Algorithm::ES256),
            ("rsa-ps", Algorithm::PS256),
        ])
    );
    assert_eq!(skipped, 7);
}

#[test]
fn oversized_sets_are_refused_whole() {
    let many: Vec<Value> = (0..=MAX_KEYS)
        .map(|i| jwk(EC_PRIVATE, Algorithm::ES256, &format!("k{i}")))
        .collect();
    let e = parse_set(json!({ "keys": many }).to_string().as_bytes())
        .err()
        .unwrap();
    assert!(e.contains("at most 64"), "{e}");
    let big = vec![b' '; MAX_BYTES + 1];
    assert!(parse_set(&big).err().unwrap().contains("larger than"));
    assert!(parse_set(b"[]").is_err());
}

#[tokio::test(start_paused = true)]
async fn tokens_verify_with_the_key_their_kid_names_and_rotation_follows_the_set() {
    let fake = Fake::serving(vec![rsa_a()]);
    let auth = auth_with(&fake, AuthConfig::default());
    let a = token(Algorithm::RS256, RSA_PRIVATE, Some("a"), json!({}));
    let b = token(Algorithm::ES256, EC_PRIVATE, Some("b"), json!({}));
    // Nothing fetched yet: the sync path refuses a kid it does not hold.
    let sync = auth.authenticate(Some(Credential::new(a.clone(), Source::Header)));
    assert_eq!(
        sync.unwrap_err(),
        AuthError::Invalid(
            "unknown key id (kid): the identity provider's key set could not be fetched yet"
        )
    );
    // The first token fetches the set.
    check(&auth, &a).await.unwrap();
    assert_eq!(fake.fetches(), 1);
    check(&auth, &a).await.unwrap();
    assert_eq!(fake.fetches(), 1, "a held kid needs no fetch");
    assert_eq!(auth.jwks_key_count(), 1);
    // The provider rotates to b. Within 10 s of the last fetch b is refused
    // without a fetch; after, b's first token fetches it.
    fake.set(vec![ec_b()]);
    assert_eq!(
        check(&auth, &b).await.unwrap_err(),
        AuthError::Invalid("unknown key id (kid)")
    );
    assert_eq!(fake.fetches(), 1);
    tokio::time::advance(MIN_REFETCH_INTERVAL).await;
    check(&auth, &b).await.unwrap();
    assert_eq!(fake.fetches(), 2);
    // a left the set with that fetch: refused, and no fetch for 10 s.
    assert_eq!(
        check(&auth, &a).await.unwrap_err(),
        AuthError::Invalid("unknown key id (kid)")
    );
    assert_eq!(fake.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_unknown_kids_fetches_once_per_ten_seconds() {
    let fake = Fake::serving(vec![rsa_a()]);
    let auth = Arc::new(auth_with(&fake, AuthConfig::default()));
    let flood = |round: usize| {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let auth = auth.clone();
                let t = token(
                    Algorithm::RS256,
                    RSA_PRIVATE,
                    Some(&format!("random-{round}-{i}")),
                    json!({}),
                );
                tokio::spawn(async move { check(&auth, &t).await })
            })
            .collect();
        async move {
            for t in tasks {
                assert!(t.await.unwrap().is_err());
            }
        }
    };
    flood(0).await;
    assert_eq!(fake.fetches(), 1, "50 concurrent misses share one fetch");
    tokio::time::advance(Duration::from_secs(5)).await;
    flood(1).await;
    assert_eq!(fake.fetches(), 1, "none within 10 s of the last");
    tokio::time::advance(Duration::from_secs(5)).await;
    flood(2).await;
    assert_eq!(fake.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_set_is_refreshed_when_its_lifetime_passes_and_kept_when_a_refresh_fails() {
    let fake = Fake::serving(vec![rsa_a()]);
    *fake.cache_control.lock().unwrap() = Some("max-age=120".into());
    let auth = Arc::new(auth_with(&fake, AuthConfig::default()));
    let a = token(Algorithm::RS256, RSA_PRIVATE, Some("a"), json!({}));
    let b = token(Algorithm::ES256, EC_PRIVATE, Some("b"), json!({}));
    let fresh = tokio::spawn({
        let auth = auth.clone();
        async move { auth.keep_jwks_fresh().await }
    });
    // The first fetch happens at start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fake.fetches(), 1);
    check(&auth, &a).await.unwrap();
    // Down at the next refresh (120 s): the keys held stay in use.
    fake.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(fake.fetches(), 2);
    check(&auth, &a).await.unwrap();
    // Retried 10 s later, then 20 s after that.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.fetches(), 3);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.fetches(), 3);
    // Back with a rotated set: picked up at the next retry, a dropped.
    fake.down.store(false, Ordering::SeqCst);
    fake.set(vec![ec_b()]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.fetches(), 4);
    check(&auth, &b).await.unwrap();
    assert!(check(&auth, &a).await.is_err());
    assert_eq!(fake.fetches(), 4);
    fresh.abort();
}

#[tokio::test(start_paused = true)]
async fn a_provider_down_at_start_is_used_once_it_answers() {
    let fake = Fake::serving(vec![rsa_a()]);
    fake.down.store(true, Ordering::SeqCst);
    let auth = auth_with(&fake, AuthConfig::default());
    let a = token(Algorithm::RS256, RSA_PRIVATE, Some("a"), json!({}));
    assert!(check(&auth, &a).await.is_err());
    assert_eq!(fake.fetches(), 1);
    fake.down.store(false, Ordering::SeqCst);
    assert!(check(&auth, &a).await.is_err(), "within 10 s: no fetch");
    tokio::time::advance(MIN_REFETCH_INTERVAL).await;
    check(&auth, &a).await.unwrap();
    assert_eq!(fake.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_algorithm_is_the_keys_never_the_tokens() {
    let fake = Fake::serving(vec![rsa_a(), ec_b()]);
    let auth = auth_with(&fake, AuthConfig::default());
    // RS256 in the header, naming the EC key.
    let rs_on_ec = token(Algorithm::RS256, RSA_PRIVATE, Some("b"), json!({}));
    assert_eq!(
        check(&auth, &rs_on_ec).await.unwrap_err(),
        AuthError::Invalid("the token's algorithm (alg) is not the one of the key it names")
    );
    // HS256 keyed with the RSA key's public material, naming the RSA key.
    let n = rsa_a()["n"].as_str().unwrap().to_owned();
    for secret in [n.as_bytes(), RSA_PRIVATE] {
        let confused = token(Algorithm::HS256, secret, Some("a"), json!({}));
        assert!(check(&auth, &confused).await.is_err());
    }
    // alg none, with and without a kid the set holds.
    use base64::Engine;
    let b64 = |v: Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let claims = b64(json!({"sub": "alice", "exp": crate::now() + 60}));
    for header in [json!({"alg": "none", "kid": "a"}), json!({"alg": "none"})] {
        let unsigned = format!("{}.{claims}.", b64(header));
        assert_eq!(
            check(&auth, &unsigned).await.unwrap_err(),
            AuthError::Invalid("unsigned tokens (alg none) are refused")
        );
    }
    // The right ones pass.
    check(
        &auth,
        &token(Algorithm::RS256, RSA_PRIVATE, Some("a"), json!({})),
    )
    .await
    .unwrap();
    check(
        &auth,
        &token(Algorithm::ES256, EC_PRIVATE, Some("b"), json!({})),
    )
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn issuer_and_audience_are_checked_for_key_set_and_configured_keys() {
    const SECRET: &[u8] = b"jwks-unit-test-secret-0123456789abcdef";
    let fake = Fake::serving(vec![rsa_a()]);
    let auth = auth_with(
        &fake,
        AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: Some("https://idp.example/".into()),
            audience: Some("herald".into()),
            ..AuthConfig::default()
        },
    );
    let iss = "https://idp.example/";
    let cases = [
        (json!({"iss": iss, "aud": "herald"}), Ok(())),
        (json!({"iss": iss, "aud": ["other", "herald"]}), Ok(())),
        (
            json!({"iss": "https://evil.example/", "aud": "herald"}),
            Err("the token's issuer (iss) is not the one this server trusts"),
        ),
        (
            json!({"aud": "herald"}),
            Err("the token has no issuer (iss); this server requires one"),
        ),
        (
            json!({"iss": iss, "aud": "other"}),
            Err("the token's audience (aud) does not name this server"),
        ),
        (
            json!({"iss": iss, "aud": ["a", "b"]}),
            Err("the token's audience (aud) does not name this server"),
        ),
        (
            json!({"iss": iss}),
            Err("the token has no audience (aud); this server requires one"),
        ),
    ];
    for (claims, want) in cases {
        let want = want.map_err(AuthError::Invalid);
        let by_set = token(Algorithm::RS256, RSA_PRIVATE, Some("a"), claims.clone());
        assert_eq!(check(&auth, &by_set).await, want, "key set, {claims}");
        let by_secret = token(Algorithm::HS256, SECRET, None, claims.clone());
        assert_eq!(check(&auth, &by_secret).await, want, "secret, {claims}");
    }
}

#[tokio::test(start_paused = true)]
async fn configured_keys_keep_working_beside_a_key_set() {
    const SECRET: &[u8] = b"jwks-unit-test-secret-0123456789abcdef";
    let fake = Fake::serving(vec![rsa_a()]);
    let auth = auth_with(
        &fake,
        AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            key_id: Some("mine".into()),
            ..AuthConfig::default()
        },
    );
    // No kid, or the configured one: the secret, no fetch.
    check(&auth, &token(Algorithm::HS256, SECRET, None, json!({})))
        .await
        .unwrap();
    check(
        &auth,
        &token(Algorithm::HS256, SECRET, Some("mine"), json!({})),
    )
    .await
    .unwrap();
    assert_eq!(fake.fetches(), 0);
    // A kid of the set: its key.
    check(
        &auth,
        &token(Algorithm::RS256, RSA_PRIVATE, Some("a"), json!({})),
    )
    .await
    .unwrap();
    // The secret under a kid of the set is not the set's key.
    assert!(check(
        &auth,
        &token(Algorithm::HS256, SECRET, Some("a"), json!({}))
    )
    .await
    .is_err());
    // Without the key set's URL answering, configured keys still work.
    fake.down.store(true, Ordering::SeqCst);
    tokio::time::advance(MIN_REFETCH_INTERVAL).await;
    assert!(check(
        &auth,
        &token(Algorithm::HS256, SECRET, Some("x"), json!({}))
    )
    .await
    .is_err());
    check(&auth, &token(Algorithm::HS256, SECRET, None, json!({})))
        .await
        .unwrap();
}

#[test]
fn a_server_without_an_audience_refuses_tokens_that_name_one() {
    const SECRET: &[u8] = b"jwks-unit-test-secret-0123456789abcdef";
    let auth = Auth::new(AuthConfig {
        hs256_secret: Some(SECRET.to_vec()),
        ..AuthConfig::default()
    })
    .unwrap();
    let t = token(
        Algorithm::HS256,
        SECRET,
        None,
        json!({"aud": "x", "iss": "y"}),
    );
    assert_eq!(
        auth.authenticate(Some(Credential::new(t, Source::Header)))
            .unwrap_err(),
        AuthError::Invalid("the token names an audience (aud) and this server has none configured")
    );
    // `iss` is not read when no issuer is configured.
    let t = token(Algorithm::HS256, SECRET, None, json!({"iss": "y"}));
    assert!(auth
        .authenticate(Some(Credential::new(t, Source::Header)))
        .is_ok());
}
