//! Keys from identity providers: JSON Web Key Sets (RFC 7517) fetched from
//! URLs (`--jwt-jwks-url`), cached by key id (`kid`), and refreshed.
//!
//! # Rules
//!
//! - A token is verified with the key its header's `kid` names; the
//!   algorithm is the key's, never the token's alone (RFC 8725, 3.1): the
//!   key's `alg`, else its type (`RSA` → RS256, `EC` P-256 → ES256, `EC`
//!   P-384 → ES384, `OKP` Ed25519 → EdDSA). A token whose header names
//!   another algorithm is refused before its signature is checked.
//! - Symmetric keys (`kty: oct`, `alg: HS*`) in a key set are skipped: a
//!   secret must never come from a URL. So are encryption keys (`use: enc`),
//!   keys without a `kid`, and keys whose `alg` does not fit their type.
//! - A set is at most [`MAX_KEYS`] keys and [`MAX_BYTES`] bytes; a fetch
//!   ends within [`FETCH_TIMEOUT`].
//! - Refreshes: when a token names a `kid` no set holds (at most once per
//!   [`MIN_REFETCH_INTERVAL`] per URL; concurrent misses wait for one
//!   fetch), and when the set's lifetime passes: the response's
//!   `Cache-Control: max-age`, clamped to [`MIN_MAX_AGE`]..[`MAX_MAX_AGE`],
//!   [`DEFAULT_MAX_AGE`] without one ([`max_age`]). A failed refresh keeps
//!   the keys already held and is retried later (after 10 s, doubling up to
//!   5 min); it is logged with the URL (without its query) and the reason,
//!   never with token text.
//! - The fetch itself is a [`JwksFetcher`], implemented where an HTTP
//!   client lives (the `herald` binary), so this crate needs none.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::jwt::Key;

/// The most keys a set may hold; a larger set is refused whole.
pub const MAX_KEYS: usize = 64;

/// The largest key set document accepted, in bytes (1 MiB).
pub const MAX_BYTES: usize = 1 << 20;

/// A fetch (connect, TLS, the whole body) ends within this time.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A URL is fetched at most once within this time, whatever asks for it.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// A set's lifetime when its response has no `Cache-Control: max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// The shortest lifetime kept, whatever `max-age` says (also for `no-cache`
/// and `no-store`).
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);

/// The longest lifetime kept, whatever `max-age` says.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The first retry after a failed fetch; each further failure doubles it.
const FIRST_RETRY: Duration = MIN_REFETCH_INTERVAL;

/// The longest wait between retries of a failing URL.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A key set document as fetched.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The response body (a JWK Set, RFC 7517, 5), at most the `max_bytes`
    /// the fetch was given.
    pub body: Vec<u8>,
    /// The response's `Cache-Control` header, if any (see [`max_age`]).
    pub cache_control: Option<String>,
}

/// Why a key set could not be fetched: a message for the log, holding no
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// What [`JwksFetcher::fetch`] returns.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send + 'a>>;

/// Fetches key set documents over HTTP(S).
pub trait JwksFetcher: Send + Sync {
    /// `GET url`. Errors: no connection, a status other than 2xx, or a body
    /// of more than `max_bytes` bytes (stop reading there). The caller
    /// bounds the whole fetch by [`FETCH_TIMEOUT`].
    fn fetch<'a>(&'a self, url: &'a str, max_bytes: usize) -> FetchFuture<'a>;
}

/// A set's lifetime from its response's `Cache-Control` header (RFC 9111,
/// 5.2.2): `max-age` clamped to [`MIN_MAX_AGE`]..[`MAX_MAX_AGE`];
/// `no-cache` or `no-store` give [`MIN_MAX_AGE`]; without either,
/// [`DEFAULT_MAX_AGE`].
pub fn max_age(cache_control: Option<&str>) -> Duration {
    let Some(value) = cache_control else {
        return DEFAULT_MAX_AGE;
    };
    let mut age = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return MIN_MAX_AGE;
        }
        if name.eq_ignore_ascii_case("max-age") {
            if let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok()) {
                age = Some(Duration::from_secs(secs));
            }
        }
    }
    age.map_or(DEFAULT_MAX_AGE, |a| a.clamp(MIN_MAX_AGE, MAX_MAX_AGE))
}

/// `url` if it can name a key set: `http://` or `https://`, a host, no
/// credentials (they would be logged with it), no whitespace.
pub(crate) fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("use an http:// or https:// URL")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("the URL has no host");
    }
    if authority.contains('@') {
        return Err("the URL holds credentials (user:password@)");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL holds whitespace");
    }
    Ok(())
}

/// The keys of one key set document by `kid`, and how many keys were
/// skipped. Errors: a body over [`MAX_BYTES`], not a JWK Set, or more than
/// [`MAX_KEYS`] keys.
pub(crate) fn parse_set(body: &[u8]) -> Result<(HashMap<String, Arc<Key>>, usize), String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    if body.len() > MAX_BYTES {
        return Err(format!("the key set is larger than {MAX_BYTES} bytes"));
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWK Set (a JSON object with \"keys\"): {e}"))?;
    if set.keys.len() > MAX_KEYS {
        return Err(format!(
            "the key set holds {} keys; at most {MAX_KEYS} are accepted",
            set.keys.len()
        ));
    }
    let mut keys = HashMap::new();
    let mut skipped = 0;
    for value in set.keys {
        match key_of(value) {
            Some((kid, key)) if !keys.contains_key(&kid) => {
                keys.insert(kid, Arc::new(key));
            }
            _ => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

/// The `kid` and verification key of one JWK, or `None` when it cannot
/// verify Herald's tokens (see the module's rules).
fn key_of(value: serde_json::Value) -> Option<(String, Key)> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
    let alg = algorithm(&jwk)?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some((kid, Key { alg, key }))
}

/// The one algorithm a JWK verifies: its `alg` if that fits its type, else
/// the type's usual one. `None` for symmetric keys and what does not fit.
fn algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let (default, allowed): (Algorithm, &[Algorithm]) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (
            Algorithm::RS256,
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
        ),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (Algorithm::ES256, &[Algorithm::ES256]),
            EllipticCurve::P384 => (Algorithm::ES384, &[Algorithm::ES384]),
            EllipticCurve::P521 | EllipticCurve::Ed25519 => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => (Algorithm::EdDSA, &[Algorithm::EdDSA]),
            _ => return None,
        },
        // A shared secret from a URL would let whoever serves it (or sits
        // between) mint tokens.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => default,
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return None,
        Some(a) => a.to_string().parse::<Algorithm>().ok()?,
    };
    allowed.contains(&alg).then_some(alg)
}

/// Where one URL's keys stand.
#[derive(Default)]
struct State {
    keys: HashMap<String, Arc<Key>>,
    /// A fetch has worked at least once.
    loaded: bool,
    /// The last fetch started here (worked or not).
    last_attempt: Option<Instant>,
    /// When the keys are due for a refresh; `None`: now.
    refresh_at: Option<Instant>,
    /// Failed fetches in a row.
    failures: u32,
}

/// One key set URL.
struct Source {
    url: String,
    /// The URL without its query, for logs.
    shown: String,
    state: RwLock<State>,
    /// Held for a whole fetch: one at a time, the others wait and then see
    /// its result.
    fetching: tokio::sync::Mutex<()>,
}

/// The key sets of every configured URL.
pub(crate) struct KeySets {
    sources: Vec<Source>,
    fetcher: Option<Arc<dyn JwksFetcher>>,
}

impl KeySets {
    /// Key sets at `urls` (checked by [`check_url`] first), none fetched yet.
    pub(crate) fn new(urls: &[String]) -> KeySets {
        KeySets {
            sources: urls
                .iter()
                .map(|url| Source {
                    shown: url.split(['?', '#']).next().unwrap_or_default().to_owned(),
                    url: url.clone(),
                    state: RwLock::default(),
                    fetching: tokio::sync::Mutex::new(()),
                })
                .collect(),
            fetcher: None,
        }
    }

    /// Fetches with `fetcher` from now on.
    pub(crate) fn set_fetcher(&mut self, fetcher: Arc<dyn JwksFetcher>) {
        self.fetcher = Some(fetcher);
    }

    /// How many URLs.
    pub(crate) fn len(&self) -> usize {
        self.sources.len()
    }

    /// The key named `kid` in the first set that holds it.
    pub(crate) fn get(&self, kid: &str) -> Option<Arc<Key>> {
        self.sources
            .iter()
            .find_map(|s| read(&s.state).keys.get(kid).cloned())
    }

    /// Whether any URL's keys were fetched at least once.
    pub(crate) fn any_loaded(&self) -> bool {
        self.sources.iter().any(|s| read(&s.state).loaded)
    }

    /// Keys held, over every URL.
    pub(crate) fn key_count(&self) -> usize {
        self.sources.iter().map(|s| read(&s.state).keys.len()).sum()
    }

    /// A token names `kid`, which no set holds: fetch each URL again (in
    /// order, until one holds it) unless it was fetched within
    /// [`MIN_REFETCH_INTERVAL`]. Concurrent callers wait for the fetch in
    /// progress instead of starting their own.
    pub(crate) async fn fetch_for_kid(&self, kid: &str) {
        for source in &self.sources {
            if read(&source.state).keys.contains_key(kid) {
                return;
            }
            let _one = source.fetching.lock().await;
            let recent = {
                let state = read(&source.state);
                if state.keys.contains_key(kid) {
                    return; // the fetch this caller waited for brought it
                }
                state
                    .last_attempt
                    .is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL)
            };
            if recent {
                continue;
            }
            self.fetch(source).await;
            if read(&source.state).keys.contains_key(kid) {
                return;
            }
        }
    }

    /// Fetches every URL whose keys are due (at start: all of them), and
    /// returns when the next one will be.
    pub(crate) async fn refresh_due(&self) -> Instant {
        let mut next = Instant::now() + MAX_MAX_AGE;
        for source in &self.sources {
            if let Some(at) = due(source) {
                next = next.min(at);
                continue;
            }
            let _one = source.fetching.lock().await;
            // A fetch for an unknown kid may have run meanwhile.
            if due(source).is_none() {
                self.fetch(source).await;
            }
            if let Some(at) = due(source) {
                next = next.min(at);
            }
        }
        next
    }

    /// Fetches `source` now (the caller holds its `fetching` lock) and
    /// records the outcome: new keys and lifetime, or the old keys kept
    /// and a retry time.
    async fn fetch(&self, source: &Source) {
        let started = Instant::now();
        write(&source.state).last_attempt = Some(started);
        let result = match &self.fetcher {
            None => Err(FetchError("no HTTP client to fetch key sets with".into())),
            Some(f) => {
                match tokio::time::timeout(FETCH_TIMEOUT, f.fetch(&source.url, MAX_BYTES)).await {
                    Ok(r) => r,
                    Err(_) => Err(FetchError(format!(
                        "no complete answer within {FETCH_TIMEOUT:?}"
                    ))),
                }
            }
        };
        let parsed = result.and_then(|fetched| {
            let (keys, skipped) = parse_set(&fetched.body).map_err(FetchError)?;
            Ok((keys, skipped, max_age(fetched.cache_control.as_deref())))
        });
        let mut state = write(&source.state);
        match parsed {
            Ok((keys, skipped, lifetime)) => {
                tracing::info!(
                    url = %source.shown,
                    keys = keys.len(),
                    skipped,
                    max_age_secs = lifetime.as_secs(),
                    "JWKS: key set fetched"
                );
                if keys.is_empty() {
                    tracing::warn!(url = %source.shown, "JWKS: the key set holds no usable signing key");
                }
                state.keys = keys;
                state.loaded = true;
                state.failures = 0;
                state.refresh_at = Some(started + lifetime);
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let retry = FIRST_RETRY
                    .saturating_mul(1 << state.failures.saturating_sub(1).min(8))
                    .min(MAX_RETRY);
                state.refresh_at = Some(started + retry);
                tracing::warn!(
                    url = %source.shown,
                    error = %e,
                    kept_keys = state.keys.len(),
                    retry_in_secs = retry.as_secs(),
                    "JWKS: cannot fetch the key set; keeping the keys held"
                );
            }
        }
    }
}

/// `None` when `source` is due for a refresh now, else when it will be (a
/// refresh never comes within [`MIN_REFETCH_INTERVAL`] of the last fetch).
fn due(source: &Source) -> Option<Instant> {
    let state = read(&source.state);
    let at = match (state.refresh_at, state.last_attempt) {
        (None, None) => return None,
        (at, last) => at
            .into_iter()
            .chain(last.map(|l| l + MIN_REFETCH_INTERVAL))
            .max()?,
    };
    (at > Instant::now()).then_some(at)
}

fn read(lock: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write(lock: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
