//! Mercure access tokens: the keys that verify them ([`MercureKeys`]), what
//! a verified token grants ([`MercureGrant`]), and where a request carries
//! its token ([`token_from_request`]).
//!
//! The rules are those of the Mercure specification (Internet-Draft
//! draft-dunglas-mercure-08, "Authorization" and its subsections) as the
//! reference hub (dunglas/mercure) applies them in its compatibility mode,
//! the mode that keeps Symfony and pre-1.0 clients working:
//!
//! - **Two claim shapes.** The `mercure` claim as Symfony mints it
//!   (`typ: JWT`), whose `publish`/`subscribe` arrays hold topic selectors
//!   (`*`, exact topics, URI templates) and whose `payload` is free JSON:
//!
//!   ```json
//!   {"mercure": {"publish": ["*"], "subscribe": ["https://example.com/books/{id}"],
//!                "payload": {"user": "https://example.com/users/1"}}}
//!   ```
//!
//!   (`https://mercure.rocks/` is read in its place when present), and
//!   RFC 9068 access tokens (`typ: at+jwt`) whose RFC 9396
//!   `authorization_details` array holds details of `type` `mercure` (spec,
//!   "Authorization Details" and "Topic Matcher List"):
//!
//!   ```json
//!   {"authorization_details": [{"type": "mercure", "actions": ["subscribe"],
//!     "topics": [{"match": "https://example.com/books/1", "matchType": "Exact"}],
//!     "payload": {"tenant": "acme"}}]}
//!   ```
//!
//!   A token whose `authorization_details` is a non-empty array is read
//!   through it alone (its `mercure` claim is ignored), as the hub does.
//!   Details of other types are ignored; one malformed `mercure` detail
//!   refuses the whole token (no partial acceptance).
//! - **Validation** (spec, "Token Validation"; RFC 8725): one algorithm per
//!   key, taken from the key and never from the token (`alg: none` and
//!   algorithm confusion refused); `exp` enforced when present but not
//!   required, `nbf` honoured, both with [`DEFAULT_LEEWAY_SECS`] of clock
//!   leeway; `iss` and `aud` checked only when configured
//!   ([`MercureKeys::with_issuer`], [`MercureKeys::with_audience`]); `typ`
//!   absent, `JWT` or `at+jwt`. The draft requires `exp`, `aud` and
//!   `typ: at+jwt`; the hub relaxes all three in compatibility mode, and so
//!   does Herald (DESIGN.md, "Mercure compatibility").
//! - **Bounds**: a token of at most [`MAX_TOKEN_BYTES`], at most
//!   [`MAX_SELECTORS`] topic matchers in it.
//! - **Errors** (spec, "Error Responses", RFC 6750, 3.1): a malformed
//!   request answers 400 `invalid_request`, any defect of the token 401
//!   `invalid_token` ([`MercureAuthError::status`]). No token at all, where
//!   one is needed, is a 401 with a bare `Bearer` challenge, and a valid
//!   token that does not grant the operation a 403 `insufficient_scope`:
//!   both are decided by the endpoint, not here. No error message contains
//!   the token or any part of it.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::selector::Selector;
use crate::jwt;

/// The largest token accepted, in bytes of its compact serialization.
/// Larger tokens are refused before any parsing
/// ([`MercureAuthError::TokenTooLarge`]).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The most topic matchers a token may carry: the entries of
/// `mercure.publish` and `mercure.subscribe` together, or the `topics` of
/// every `mercure` authorization detail together (spec, "Authorization
/// Details": hubs bound them). More is refused
/// ([`MercureAuthError::TooManySelectors`]).
pub const MAX_SELECTORS: usize = 1024;

/// The shortest HS256 secret accepted, in bytes: the size of the hash
/// output, as RFC 7518, 3.2 requires (and as Symfony's JWT library enforces
/// when it mints Mercure tokens).
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock leeway applied to `exp` and `nbf` unless
/// [`MercureKeys::with_leeway`] says otherwise, in seconds (Herald's
/// default for its own tokens too).
pub const DEFAULT_LEEWAY_SECS: u64 = 5;

/// The largest clock leeway [`MercureKeys::with_leeway`] takes, in seconds:
/// a leeway is for clock skew, not for extending lifetimes.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// The largest PEM key file read, in bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The authorization cookie of Mercure hubs since 1.0 (spec, "Cookie"; the
/// hub's default cookie name). Preferred over [`LEGACY_COOKIE_NAME`].
pub const COOKIE_NAME: &str = "__Secure-mercure_access_token";

/// The authorization cookie of Mercure 0.x hubs, still set by older
/// Symfony and API Platform versions.
pub const LEGACY_COOKIE_NAME: &str = "mercureAuthorization";

/// The Mercure 0.x query parameter carrying a token (`?authorization=`).
/// The draft's RFC 6750 `access_token` parameter is not read: the hub
/// refuses it too (RFC 9700, 4.3.2), and DESIGN.md names only this one.
pub const QUERY_PARAMETER: &str = "authorization";

/// The key that verifies one role's tokens: the publisher key
/// (`--mercure-publisher-jwt-key`) or the subscriber key
/// (`--mercure-subscriber-jwt-key`), each with the one algorithm it
/// accepts (spec, "Token Validation": the key is chosen by the endpoint's
/// role, never by the token), and the issuer and audience required of
/// tokens, if configured. Its `Debug` never shows key material.
pub struct MercureKeys {
    key: jwt::Key,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl std::fmt::Debug for MercureKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MercureKeys")
            .field("alg", &self.key.alg)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

/// A Mercure key that cannot be used (at start-up). Messages never contain
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MercureKeyError {
    /// The flag was given an empty value.
    #[error("the Mercure JWT key is empty")]
    Empty,
    /// An HS256 secret shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "the Mercure HS256 secret is {len} bytes; at least {min} are required (RFC 7518, 3.2)"
    )]
    ShortSecret {
        /// Its length, in bytes.
        len: usize,
        /// The minimum, [`MIN_SECRET_BYTES`].
        min: usize,
    },
    /// The value names a key file (an existing file, or a path ending in
    /// `.pem`) that cannot be read.
    #[error("cannot read the Mercure key file {path}: {reason}")]
    Unreadable {
        /// The path given.
        path: String,
        /// Why (the operating system's error).
        reason: String,
    },
    /// The key file is larger than [`MAX_KEY_FILE_BYTES`].
    #[error("the Mercure key file {path} is larger than {max} bytes")]
    FileTooLarge {
        /// The path given.
        path: String,
        /// [`MAX_KEY_FILE_BYTES`].
        max: u64,
    },
    /// The PEM holds a private key: the hub verifies with the public key,
    /// the private one stays with whoever mints the tokens.
    #[error("{origin} holds a private key; give the Mercure hub the public key instead")]
    PrivateKey {
        /// The file's path, or "the Mercure key" for PEM given inline.
        origin: String,
    },
    /// The PEM (or the file) holds no RSA or EC P-256 public key.
    #[error("{origin} holds no RSA or EC (P-256) public key in PEM")]
    NotAPublicKey {
        /// The file's path, or "the Mercure key" for PEM given inline.
        origin: String,
    },
}

impl MercureKeys {
    /// The key a flag or environment value gives
    /// (`--mercure-publisher-jwt-key`, `MERCURE_PUBLISHER_JWT_KEY`, and the
    /// subscriber's): PEM text (`-----BEGIN PUBLIC KEY-----…`, as the hub
    /// takes it) or the path of a file holding it, for RS256 (RSA) or ES256
    /// (EC P-256); anything else is an HS256 secret, used byte for byte.
    ///
    /// Errors: an empty value; a secret under [`MIN_SECRET_BYTES`]; a value
    /// naming an existing file (or ending in `.pem`) that cannot be read,
    /// exceeds [`MAX_KEY_FILE_BYTES`] or holds no public key in PEM; a
    /// private key.
    pub fn from_flag(value: &str) -> Result<MercureKeys, MercureKeyError> {
        if value.is_empty() {
            return Err(MercureKeyError::Empty);
        }
        if value.trim_start().starts_with("-----BEGIN") {
            return MercureKeys::from_pem_with_origin(value.as_bytes(), "the Mercure key");
        }
        let path = Path::new(value);
        if path.is_file() {
            let pem = read_key_file(path, value)?;
            return MercureKeys::from_pem_with_origin(&pem, value);
        }
        if value.ends_with(".pem") {
            return Err(MercureKeyError::Unreadable {
                path: value.to_owned(),
                reason: "no such file".into(),
            });
        }
        MercureKeys::hs256(value.as_bytes())
    }

    /// An HS256 key (RFC 7518, 3.2). Errors: an empty secret, or one
    /// shorter than [`MIN_SECRET_BYTES`].
    pub fn hs256(secret: &[u8]) -> Result<MercureKeys, MercureKeyError> {
        if secret.is_empty() {
            return Err(MercureKeyError::Empty);
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(MercureKeyError::ShortSecret {
                len: secret.len(),
                min: MIN_SECRET_BYTES,
            });
        }
        Ok(MercureKeys::new(jwt::Key {
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }))
    }

    /// An RS256 (RSA) or ES256 (EC P-256) key from a PEM public key
    /// (RFC 7518, 3.3 and 3.4). Errors: a private key, or no public key.
    pub fn from_pem(pem: &[u8]) -> Result<MercureKeys, MercureKeyError> {
        MercureKeys::from_pem_with_origin(pem, "the Mercure key")
    }

    fn from_pem_with_origin(pem: &[u8], origin: &str) -> Result<MercureKeys, MercureKeyError> {
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(MercureKeyError::PrivateKey {
                origin: origin.to_owned(),
            });
        }
        jwt::public_key(pem)
            .map(MercureKeys::new)
            .map_err(|_| MercureKeyError::NotAPublicKey {
                origin: origin.to_owned(),
            })
    }

    fn new(key: jwt::Key) -> MercureKeys {
        MercureKeys {
            key,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }

    /// Requires every token to carry `iss` equal to `issuer`
    /// (`--mercure-issuer`; RFC 7519, 4.1.1). `None`: `iss` is not read.
    pub fn with_issuer(mut self, issuer: Option<String>) -> MercureKeys {
        self.issuer = issuer;
        self
    }

    /// Requires every token's `aud` (a string, or an array of strings) to
    /// name `audience` (`--mercure-audience`; RFC 7519, 4.1.3; spec, "Token
    /// Validation": the hub's resource identifier). `None`: `aud` is not
    /// read at all, as Mercure hubs without a configured resource
    /// identifier do (Herald's own `/v1` tokens follow RFC 7519 strictly
    /// instead and refuse an unexpected `aud`).
    pub fn with_audience(mut self, audience: Option<String>) -> MercureKeys {
        self.audience = audience;
        self
    }

    /// Clock leeway for `exp` and `nbf`, in seconds (default
    /// [`DEFAULT_LEEWAY_SECS`]), at most [`MAX_LEEWAY_SECS`] (larger values
    /// are lowered to it).
    pub fn with_leeway(mut self, secs: u64) -> MercureKeys {
        self.leeway_secs = secs.min(MAX_LEEWAY_SECS);
        self
    }

    /// The one algorithm this key accepts: HS256, RS256 or ES256.
    pub fn algorithm(&self) -> Algorithm {
        self.key.alg
    }

    /// Verifies `token` (a JWS in compact serialization, RFC 7515, 7.1) and
    /// returns what it grants.
    ///
    /// Checked, in order: its size ([`MAX_TOKEN_BYTES`]); its header (three
    /// segments, `alg` not `none` and equal to this key's algorithm, `typ`
    /// absent, `JWT` or `at+jwt`, with or without `application/`); its
    /// signature; `exp` when present and `nbf` when present, with the
    /// leeway; `iss` and `aud` when configured; then the claims: `sub` a
    /// string if present, and `authorization_details` or the `mercure`
    /// claim as the module documentation describes. A token with neither
    /// is valid and grants nothing (spec, "Authorization Details").
    ///
    /// Errors: every [`MercureAuthError`] variant whose
    /// [`MercureAuthError::status`] is 401.
    pub fn verify(&self, token: &str) -> Result<MercureGrant, MercureAuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(MercureAuthError::TokenTooLarge {
                max: MAX_TOKEN_BYTES,
            });
        }
        self.check_header(token)?;
        let mut validation = Validation::new(self.key.alg);
        validation.algorithms = vec![self.key.alg];
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = Vec::new();
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss.as_str()]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud.as_str()]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key.key, &validation)
            .map_err(|e| jwt_error(&e))?;
        grant_from_claims(&data.claims)
    }

    /// The header checks done before the signature (RFC 8725, 3.1 and 3.2;
    /// RFC 9068, 2.1 for `typ`).
    fn check_header(&self, token: &str) -> Result<(), MercureAuthError> {
        let mut segments = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(MercureAuthError::Malformed);
        };
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
            .ok_or(MercureAuthError::Malformed)?;
        let Some(Value::String(alg)) = header.get("alg") else {
            return Err(MercureAuthError::Malformed);
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(MercureAuthError::Unsigned);
        }
        if alg != algorithm_name(self.key.alg) {
            return Err(MercureAuthError::AlgorithmNotAccepted);
        }
        match header.get("typ") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(typ)) => {
                let typ = match typ.get(..12) {
                    Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
                    _ => typ.as_str(),
                };
                if typ.eq_ignore_ascii_case("jwt") || typ.eq_ignore_ascii_case("at+jwt") {
                    Ok(())
                } else {
                    Err(MercureAuthError::UnexpectedType)
                }
            }
            Some(_) => Err(MercureAuthError::Malformed),
        }
    }
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // Mercure keys are built with the three above only.
        _ => "",
    }
}

/// Reads a key file, at most [`MAX_KEY_FILE_BYTES`].
fn read_key_file(path: &Path, shown: &str) -> Result<Vec<u8>, MercureKeyError> {
    let unreadable = |e: std::io::Error| MercureKeyError::Unreadable {
        path: shown.to_owned(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut pem = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(unreadable)?;
    if pem.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(MercureKeyError::FileTooLarge {
            path: shown.to_owned(),
            max: MAX_KEY_FILE_BYTES,
        });
    }
    Ok(pem)
}

fn jwt_error(e: &jsonwebtoken::errors::Error) -> MercureAuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => MercureAuthError::Expired,
        ErrorKind::ImmatureSignature => MercureAuthError::NotYetValid,
        ErrorKind::InvalidSignature => MercureAuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::InvalidKeyFormat => MercureAuthError::AlgorithmNotAccepted,
        ErrorKind::InvalidIssuer => MercureAuthError::IssuerMismatch,
        ErrorKind::InvalidAudience => MercureAuthError::AudienceMismatch,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => MercureAuthError::IssuerMissing,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => MercureAuthError::AudienceMissing,
        ErrorKind::InvalidClaimFormat(_) => {
            MercureAuthError::InvalidClaims("exp and nbf must be numbers of seconds")
        }
        _ => MercureAuthError::Malformed,
    }
}

/// What a verified Mercure token grants (spec, "Publishers", "Subscribers"
/// and "Payloads"). Both claim shapes end up here: a `mercure`
/// authorization detail's `topics` go to `publish` and/or `subscribe` as
/// its `actions` say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MercureGrant {
    /// The `sub` claim (RFC 7519, 4.1.2): the subscriber's identifier in
    /// subscription events (spec, "Subscription Events").
    pub subject: Option<String>,
    /// Topics the holder may publish to (spec, "Publishers").
    pub publish: Vec<Selector>,
    /// Topics whose private updates the holder may receive (spec,
    /// "Subscribers").
    pub subscribe: Vec<Selector>,
    /// The token-wide payload: `mercure.payload` of the `mercure` claim;
    /// `None` for `authorization_details` tokens, whose payloads belong to
    /// their details (see `subscribe_payloads`, [`MercureGrant::payload_for`]).
    pub payload: Option<Value>,
    /// The payload that goes with each `subscribe` selector, in the same
    /// order (same length as `subscribe`): its authorization detail's
    /// `payload`, or a `mercure.subscribe` object entry's. Shared, so a
    /// detail's payload is stored once however many topics it lists.
    pub subscribe_payloads: Vec<Option<Arc<Value>>>,
    /// `exp`, seconds since the Unix epoch; `None`: the token never
    /// expires (accepted, as Mercure hubs in compatibility mode accept it).
    pub expires_at: Option<u64>,
}

impl MercureGrant {
    /// Whether the token grants publishing to `topic` (spec, "Publishers").
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|s| s.matches(topic))
    }

    /// Whether the token grants receiving the private updates of `topic`
    /// (spec, "Subscribers").
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|s| s.matches(topic))
    }

    /// The payload of a subscription whose own matcher is `matcher` (spec,
    /// "Payloads"): that of the first `subscribe` selector, in token order,
    /// matching the matcher string as if it were a topic; failing that (no
    /// selector matches, or the first one carries none), the token-wide
    /// [`MercureGrant::payload`].
    pub fn payload_for(&self, matcher: &str) -> Option<&Value> {
        self.subscribe
            .iter()
            .position(|s| s.matches(matcher))
            .and_then(|i| self.subscribe_payloads.get(i))
            .and_then(|p| p.as_deref())
            .or(self.payload.as_ref())
    }
}

/// Where a token was found (spec, "Presenting the Access Token").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer` (RFC 6750, 2.1).
    Header,
    /// The `authorization` query parameter ([`QUERY_PARAMETER`]).
    Query,
    /// A cookie: [`COOKIE_NAME`] or [`LEGACY_COOKIE_NAME`]. A browser sends
    /// cookies on its own, so a publish (`POST`) authorized by a cookie
    /// must come from an allowed `Origin` (or `Referer`), as the hub
    /// requires against CSRF: the endpoint checks it, and answers 400
    /// `invalid_request` otherwise.
    Cookie {
        /// The cookie's name.
        name: &'static str,
    },
}

/// The token a request presents, and where it was found (spec, "Presenting
/// the Access Token"); `None`: no token (anonymous).
///
/// `headers` are the request's header fields as (name, value) pairs, names
/// in any case: an `http::HeaderMap` by reference fits as it is
/// (`token_from_request(&map, query)`), so does a list of `(&str, &str)`.
/// `query` is the request's raw query string (`a=1&b=2`, a leading `?`
/// allowed), `application/x-www-form-urlencoded`.
///
/// Precedence (spec: the header, then the query parameter, then the
/// cookie; one mechanism is selected and the others are ignored, even when
/// they hold other tokens):
///
/// 1. `Authorization`. Once present it is the one used: it must be a
///    single header field reading `Bearer <token>` (scheme in any case,
///    RFC 6750, 2.1), else the request is refused, without falling back to
///    another mechanism.
/// 2. The `authorization` query parameter ([`QUERY_PARAMETER`]), decoded;
///    an empty value counts as absent, two or more are refused.
/// 3. The cookie [`COOKIE_NAME`], else [`LEGACY_COOKIE_NAME`] (every
///    `Cookie` field is read; of one name sent twice, the first, most
///    specific by RFC 6265, 5.4, is used; empty values count as absent).
///
/// Errors (400 `invalid_request`): two `Authorization` fields, one that is
/// not `Bearer <token>` or not UTF-8, two `authorization` parameters, a
/// selected cookie value that is not UTF-8.
pub fn token_from_request<I, N, V>(
    headers: I,
    query: &str,
) -> Result<Option<(String, TokenSource)>, MercureAuthError>
where
    I: IntoIterator<Item = (N, V)>,
    N: AsRef<str>,
    V: AsRef<[u8]>,
{
    let mut authorization: Option<Vec<u8>> = None;
    let mut authorization_fields = 0usize;
    let mut cookie: Option<Vec<u8>> = None;
    let mut legacy_cookie: Option<Vec<u8>> = None;
    for (name, value) in headers {
        let name = name.as_ref();
        if name.eq_ignore_ascii_case("authorization") {
            authorization_fields += 1;
            if authorization.is_none() {
                authorization = Some(value.as_ref().to_vec());
            }
        } else if name.eq_ignore_ascii_case("cookie") {
            for pair in value.as_ref().split(|&b| b == b';') {
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let cookie_name = trim_ows(&pair[..eq]);
                let slot = if cookie_name == COOKIE_NAME.as_bytes() {
                    &mut cookie
                } else if cookie_name == LEGACY_COOKIE_NAME.as_bytes() {
                    &mut legacy_cookie
                } else {
                    continue;
                };
                let v = unquote(trim_ows(&pair[eq + 1..]));
                if slot.is_none() && !v.is_empty() {
                    *slot = Some(v.to_vec());
                }
            }
        }
    }
    if authorization_fields > 1 {
        return Err(MercureAuthError::MultipleAuthorizationHeaders);
    }
    if let Some(value) = authorization {
        return bearer(&value).map(|t| Some((t, TokenSource::Header)));
    }
    if let Some(token) = query_token(query)? {
        return Ok(Some((token, TokenSource::Query)));
    }
    for (value, name) in [(cookie, COOKIE_NAME), (legacy_cookie, LEGACY_COOKIE_NAME)] {
        if let Some(value) = value {
            let token = String::from_utf8(value).map_err(|_| MercureAuthError::MalformedCookie)?;
            return Ok(Some((token, TokenSource::Cookie { name })));
        }
    }
    Ok(None)
}

/// The token of an `Authorization: Bearer <token>` field value (RFC 6750,
/// 2.1; RFC 9110, 11.1: the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Result<String, MercureAuthError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| MercureAuthError::MalformedAuthorizationHeader)?
        .trim_matches([' ', '\t']);
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(MercureAuthError::MalformedAuthorizationHeader)?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains([' ', '\t', ','])
    {
        return Err(MercureAuthError::MalformedAuthorizationHeader);
    }
    Ok(token.to_owned())
}

/// The `authorization` query parameter, decoded; `None` if absent or empty.
fn query_token(query: &str) -> Result<Option<String>, MercureAuthError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut found: Option<Cow<'_, str>> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name) != QUERY_PARAMETER {
            continue;
        }
        if found.is_some() {
            return Err(MercureAuthError::MultipleQueryTokens);
        }
        found = Some(form_decode(value));
    }
    Ok(found.filter(|t| !t.is_empty()).map(Cow::into_owned))
}

/// Decodes one name or value of `application/x-www-form-urlencoded` (WHATWG
/// URL, 5.1): `+` is a space, `%XX` a byte, a `%` not followed by two hex
/// digits stays as it is, bytes that are not UTF-8 become U+FFFD.
fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

/// A cookie value without its optional double quotes (RFC 6265, 4.1.1).
fn unquote(b: &[u8]) -> &[u8] {
    match b {
        [b'"', inner @ .., b'"'] => inner,
        _ => b,
    }
}

/// A Mercure token or request refused. The message says what is wrong for
/// the client and never contains the token or any part of it (claim
/// values, selectors). [`MercureAuthError::status`] and
/// [`MercureAuthError::bearer_error`] give the answer (spec, "Error
/// Responses"; RFC 6750, 3.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MercureAuthError {
    /// Two or more `Authorization` header fields (400).
    #[error("more than one Authorization header")]
    MultipleAuthorizationHeaders,
    /// An `Authorization` field that is not `Bearer <token>` (400).
    #[error("the Authorization header must read \"Bearer <token>\"")]
    MalformedAuthorizationHeader,
    /// Two or more `authorization` query parameters (400).
    #[error("more than one authorization query parameter")]
    MultipleQueryTokens,
    /// The selected authorization cookie is not UTF-8 (400).
    #[error("the authorization cookie is not valid UTF-8")]
    MalformedCookie,
    /// Larger than [`MAX_TOKEN_BYTES`] (401).
    #[error("token larger than {max} bytes")]
    TokenTooLarge {
        /// [`MAX_TOKEN_BYTES`].
        max: usize,
    },
    /// Not a JWS in compact serialization with a JSON header and claims
    /// (401).
    #[error("malformed token")]
    Malformed,
    /// `alg: none` (401; RFC 8725, 3.2).
    #[error("unsigned tokens (alg none) are refused")]
    Unsigned,
    /// An algorithm other than the key's (401; RFC 8725, 3.1).
    #[error("the token's algorithm (alg) is not the one of the hub's key")]
    AlgorithmNotAccepted,
    /// A `typ` other than `JWT` or `at+jwt` (401; RFC 9068, 2.1).
    #[error("the token's type (typ) must be JWT or at+jwt")]
    UnexpectedType,
    /// The signature does not verify with the key (401).
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past, beyond the leeway (401; RFC 7519, 4.1.4).
    #[error("token expired")]
    Expired,
    /// `nbf` is ahead, beyond the leeway (401; RFC 7519, 4.1.5).
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// No `iss`, and one is configured (401).
    #[error("the token has no issuer (iss); this hub requires one")]
    IssuerMissing,
    /// `iss` is not the configured issuer (401; RFC 7519, 4.1.1).
    #[error("the token's issuer (iss) is not the one this hub trusts")]
    IssuerMismatch,
    /// No `aud`, and one is configured (401).
    #[error("the token has no audience (aud); this hub requires one")]
    AudienceMissing,
    /// `aud` does not name the configured audience (401; RFC 7519, 4.1.3).
    #[error("the token's audience (aud) does not name this hub")]
    AudienceMismatch,
    /// Claims of the wrong shape (401): what is wrong, in words.
    #[error("invalid claims: {0}")]
    InvalidClaims(&'static str),
    /// More than [`MAX_SELECTORS`] topic matchers (401).
    #[error("the token carries more than {max} topic matchers")]
    TooManySelectors {
        /// [`MAX_SELECTORS`].
        max: usize,
    },
    /// One topic matcher refused (401; spec, "Topic Matcher List"): the
    /// claim and the entry's index, and why.
    #[error("entry {index} of the token's {claim}: {reason}")]
    InvalidSelector {
        /// `mercure.publish`, `mercure.subscribe` or
        /// `authorization_details`.
        claim: &'static str,
        /// The entry's index in that array.
        index: usize,
        /// Why.
        reason: &'static str,
    },
}

impl MercureAuthError {
    /// The HTTP status to answer: 400 for a malformed request (the token
    /// was never inspected), 401 for any defect of the token (spec, "Error
    /// Responses").
    pub fn status(&self) -> u16 {
        match self {
            MercureAuthError::MultipleAuthorizationHeaders
            | MercureAuthError::MalformedAuthorizationHeader
            | MercureAuthError::MultipleQueryTokens
            | MercureAuthError::MalformedCookie => 400,
            _ => 401,
        }
    }

    /// The RFC 6750 error code for the `WWW-Authenticate: Bearer`
    /// challenge (RFC 6750, 3.1): `invalid_request` (400) or
    /// `invalid_token` (401).
    pub fn bearer_error(&self) -> &'static str {
        if self.status() == 400 {
            "invalid_request"
        } else {
            "invalid_token"
        }
    }
}

/// How a matcher in a token is read (spec, "Matcher Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchType {
    /// A string of the `mercure` claim: a Mercure 0.x topic selector (`*`,
    /// an exact topic or a URI template), what [`Selector::parse`] reads.
    Selector,
    /// `Exact`: byte-for-byte equality.
    Exact,
    /// `URLPattern`.
    UrlPattern,
}

/// The one place a token's matcher becomes a [`Selector`]. `*` is the
/// wildcard whatever the type (spec, "Matcher Types"). Strings of the
/// `mercure` claim are Mercure 0.x selectors ([`Selector::parse`]: exact
/// topics or URI templates); `Exact` matchers compare byte for byte
/// ([`Selector::exact`], braces included); `URLPattern` matchers follow the
/// WHATWG URL Pattern standard ([`Selector::url_pattern`]). A matcher that
/// does not parse makes the whole token invalid (spec, "Topic Matcher List").
fn selector(
    pattern: &str,
    kind: MatchType,
    claim: &'static str,
    index: usize,
) -> Result<Selector, MercureAuthError> {
    let parsed = match kind {
        MatchType::Selector => Selector::parse(pattern),
        MatchType::Exact => Selector::exact(pattern),
        MatchType::UrlPattern => Selector::url_pattern(pattern),
    };
    parsed.map_err(|_| MercureAuthError::InvalidSelector {
        claim,
        index,
        reason: "not a valid topic matcher",
    })
}

/// A topic matcher object, `{"match": "…", "matchType": "Exact"}` (spec,
/// "Topic Matcher List"; `match_type` is read too, as some hub versions
/// spell it).
fn matcher_object(
    entry: &Map<String, Value>,
    claim: &'static str,
    index: usize,
) -> Result<Selector, MercureAuthError> {
    let invalid = |reason| MercureAuthError::InvalidSelector {
        claim,
        index,
        reason,
    };
    let pattern = match entry.get("match") {
        Some(Value::String(p)) if !p.is_empty() => p,
        _ => {
            return Err(invalid(
                "a topic matcher needs a non-empty \"match\" string",
            ))
        }
    };
    let kind = match (entry.get("matchType"), entry.get("match_type")) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid("matchType and match_type disagree"));
        }
        (Some(t), _) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    let kind = match kind {
        None | Some(Value::Null) => MatchType::Exact,
        Some(Value::String(t)) if t == "Exact" => MatchType::Exact,
        Some(Value::String(t)) if t == "URLPattern" => MatchType::UrlPattern,
        Some(_) => {
            return Err(invalid(
                "unknown matchType (Exact and URLPattern are known)",
            ))
        }
    };
    selector(pattern, kind, claim, index)
}

/// The grant of verified claims.
fn grant_from_claims(claims: &Map<String, Value>) -> Result<MercureGrant, MercureAuthError> {
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(MercureAuthError::InvalidClaims("sub must be a string")),
    };
    // jsonwebtoken checked that exp, if present, is a number.
    let expires_at = claims
        .get("exp")
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
    let mut grant = match claims.get("authorization_details") {
        Some(Value::Array(details)) if !details.is_empty() => from_details(details)?,
        None | Some(Value::Null) | Some(Value::Array(_)) => {
            let claim = match claims.get("https://mercure.rocks/") {
                None | Some(Value::Null) => claims.get("mercure"),
                namespaced => namespaced,
            };
            from_mercure_claim(claim)?
        }
        Some(_) => {
            return Err(MercureAuthError::InvalidClaims(
                "authorization_details must be an array",
            ))
        }
    };
    grant.subject = subject;
    grant.expires_at = expires_at;
    Ok(grant)
}

/// The `mercure` claim: `{"publish": […], "subscribe": […], "payload": …}`,
/// entries strings (topic selectors) or topic matcher objects (a
/// `subscribe` one may carry its own `payload`).
fn from_mercure_claim(claim: Option<&Value>) -> Result<MercureGrant, MercureAuthError> {
    let claim = match claim {
        None | Some(Value::Null) => return Ok(MercureGrant::default()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(MercureAuthError::InvalidClaims(
                "the mercure claim must be an object",
            ))
        }
    };
    let array = |name: &str| -> Result<&[Value], MercureAuthError> {
        match claim.get(name) {
            None | Some(Value::Null) => Ok(&[][..]),
            Some(Value::Array(a)) => Ok(a.as_slice()),
            Some(_) => Err(MercureAuthError::InvalidClaims(
                "mercure.publish and mercure.subscribe must be arrays",
            )),
        }
    };
    let (publish, subscribe) = (array("publish")?, array("subscribe")?);
    if publish.len() + subscribe.len() > MAX_SELECTORS {
        return Err(MercureAuthError::TooManySelectors { max: MAX_SELECTORS });
    }
    type Entry = (Selector, Option<Arc<Value>>);
    let entry = |v: &Value, claim: &'static str, index: usize| -> Result<Entry, MercureAuthError> {
        match v {
            Value::String(s) => Ok((selector(s, MatchType::Selector, claim, index)?, None)),
            Value::Object(o) => {
                let payload = match o.get("payload") {
                    None | Some(Value::Null) => None,
                    Some(p) => Some(Arc::new(p.clone())),
                };
                Ok((matcher_object(o, claim, index)?, payload))
            }
            _ => Err(MercureAuthError::InvalidSelector {
                claim,
                index,
                reason: "neither a string nor a topic matcher object",
            }),
        }
    };
    let mut grant = MercureGrant {
        payload: claim.get("payload").filter(|p| !p.is_null()).cloned(),
        ..MercureGrant::default()
    };
    for (i, v) in publish.iter().enumerate() {
        grant.publish.push(entry(v, "mercure.publish", i)?.0);
    }
    for (i, v) in subscribe.iter().enumerate() {
        let (s, payload) = entry(v, "mercure.subscribe", i)?;
        grant.subscribe.push(s);
        grant.subscribe_payloads.push(payload);
    }
    Ok(grant)
}

/// `authorization_details` (RFC 9396, 2; spec, "Authorization Details"):
/// entries of `type` `mercure` need non-empty `actions` (`publish`,
/// `subscribe`) and `topics` (topic matcher objects), and may carry a
/// `payload`; entries of other types are ignored; one bad `mercure` entry
/// refuses the token.
fn from_details(details: &[Value]) -> Result<MercureGrant, MercureAuthError> {
    const CLAIM: &str = "authorization_details";
    let mut mercure = Vec::new();
    let mut topics_total = 0usize;
    for (i, detail) in details.iter().enumerate() {
        let Value::Object(detail) = detail else {
            return Err(MercureAuthError::InvalidClaims(
                "every authorization_details entry must be an object",
            ));
        };
        match detail.get("type") {
            // `https://mercure.rocks/authorization-detail` is the type the
            // hub's own documentation mints.
            Some(Value::String(t))
                if t == "mercure" || t == "https://mercure.rocks/authorization-detail" => {}
            None | Some(Value::String(_)) => continue,
            Some(_) => {
                return Err(MercureAuthError::InvalidClaims(
                    "an authorization detail's type must be a string",
                ))
            }
        }
        if let Some(Value::Array(topics)) = detail.get("topics") {
            topics_total += topics.len();
        }
        if mercure.len() >= MAX_SELECTORS || topics_total > MAX_SELECTORS {
            return Err(MercureAuthError::TooManySelectors { max: MAX_SELECTORS });
        }
        mercure.push((i, detail));
    }
    let mut grant = MercureGrant::default();
    for (i, detail) in mercure {
        let invalid = |reason| MercureAuthError::InvalidSelector {
            claim: CLAIM,
            index: i,
            reason,
        };
        let (mut publish, mut subscribe) = (false, false);
        match detail.get("actions") {
            Some(Value::Array(actions)) if !actions.is_empty() => {
                for action in actions {
                    match action.as_str() {
                        Some("publish") => publish = true,
                        Some("subscribe") => subscribe = true,
                        _ => {
                            return Err(invalid("unknown action (publish and subscribe are known)"))
                        }
                    }
                }
            }
            _ => return Err(invalid("a mercure detail needs a non-empty actions array")),
        }
        let topics = match detail.get("topics") {
            Some(Value::Array(topics)) if !topics.is_empty() => topics,
            _ => return Err(invalid("a mercure detail needs a non-empty topics array")),
        };
        let mut selectors = Vec::with_capacity(topics.len());
        for topic in topics {
            let Value::Object(topic) = topic else {
                return Err(invalid("topics must be topic matcher objects"));
            };
            selectors.push(matcher_object(topic, CLAIM, i)?);
        }
        let payload = match detail.get("payload") {
            None | Some(Value::Null) => None,
            Some(p) => Some(Arc::new(p.clone())),
        };
        if publish {
            grant.publish.extend(selectors.iter().cloned());
        }
        if subscribe {
            grant
                .subscribe_payloads
                .extend(std::iter::repeat_n(payload, selectors.len()));
            grant.subscribe.extend(selectors);
        }
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"!ChangeThisMercureHubJWTSecretKey!";
    const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/keys/rsa_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../../tests/keys/ec_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../../tests/keys/ec_public.pem");

    fn now() -> u64 {
        crate::now()
    }

    /// A token with `claims`, signed with `alg` by `key` (a PEM private key,
    /// or a secret for HS256), header `typ` as given.
    fn mint(alg: Algorithm, key: &[u8], typ: Option<&str>, claims: &Value) -> String {
        let enc = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(key).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(key).unwrap(),
            _ => EncodingKey::from_secret(key),
        };
        let mut header = Header::new(alg);
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &enc).unwrap()
    }

    fn hs(claims: &Value) -> String {
        mint(Algorithm::HS256, SECRET, Some("JWT"), claims)
    }

    fn keys() -> MercureKeys {
        MercureKeys::hs256(SECRET).unwrap()
    }

    /// `keys` refuses `token`; the error's message holds no part of it.
    fn refused(keys: &MercureKeys, token: &str) -> MercureAuthError {
        let e = keys.verify(token).expect_err("the token should be refused");
        assert_no_token_in(&e.to_string(), token);
        assert_eq!(e.status(), 401, "{e}");
        assert_eq!(e.bearer_error(), "invalid_token");
        e
    }

    fn assert_no_token_in(message: &str, token: &str) {
        assert!(token.is_empty() || !message.contains(token), "{message}");
        for segment in token.split('.').filter(|s| s.len() >= 8) {
            assert!(!message.contains(segment), "{message}");
        }
    }

    fn strs(selectors: &[Selector]) -> Vec<&str> {
        selectors.iter().map(Selector::as_str).collect()
    }

    #[test]
    fn symfony_mercure_claim_without_exp() {
        let token = hs(&json!({
            "mercure": {
                "publish": ["*"],
                "subscribe": ["https://example.com/books/1", "https://example.com/users/dunglas"],
                "payload": {"user": "https://example.com/users/dunglas"}
            }
        }));
        let grant = keys().verify(&token).unwrap();
        assert_eq!(strs(&grant.publish), ["*"]);
        assert_eq!(
            strs(&grant.subscribe),
            [
                "https://example.com/books/1",
                "https://example.com/users/dunglas"
            ]
        );
        assert_eq!(grant.subscribe_payloads, vec![None, None]);
        assert_eq!(
            grant.payload,
            Some(json!({"user": "https://example.com/users/dunglas"}))
        );
        assert_eq!(grant.expires_at, None);
        assert_eq!(grant.subject, None);
        assert!(grant.may_publish("https://example.com/anything"));
        assert!(grant.may_subscribe("https://example.com/books/1"));
        assert!(!grant.may_subscribe("https://example.com/books/2"));
        // The token-wide payload answers for every subscription.
        assert_eq!(
            grant.payload_for("https://example.com/books/1"),
            grant.payload.as_ref()
        );
        assert_eq!(
            grant.payload_for("https://example.com/elsewhere"),
            grant.payload.as_ref()
        );
    }

    #[test]
    fn mercure_claim_variants() {
        // The namespaced claim wins over `mercure`.
        let token = hs(&json!({
            "sub": "alice", "exp": now() + 60,
            "mercure": {"publish": ["a"]},
            "https://mercure.rocks/": {"publish": ["b"], "subscribe": null}
        }));
        let grant = keys().verify(&token).unwrap();
        assert_eq!(strs(&grant.publish), ["b"]);
        assert!(grant.subscribe.is_empty());
        assert_eq!(grant.subject.as_deref(), Some("alice"));
        assert!(grant.expires_at.is_some());
        // Object entries, with a per-subscription payload.
        let token = hs(&json!({"mercure": {
            "subscribe": [{"match": "https://example.com/foo", "payload": {"a": 1}}, "bar"],
            "payload": {"default": true}
        }}));
        let grant = keys().verify(&token).unwrap();
        assert_eq!(strs(&grant.subscribe), ["https://example.com/foo", "bar"]);
        assert_eq!(
            grant.payload_for("https://example.com/foo"),
            Some(&json!({"a": 1}))
        );
        assert_eq!(grant.payload_for("bar"), Some(&json!({"default": true})));
        // No grant at all: valid, grants nothing.
        let grant = keys().verify(&hs(&json!({"sub": "bob"}))).unwrap();
        assert!(grant.publish.is_empty() && grant.subscribe.is_empty());
        // Shapes refused.
        for claims in [
            json!({"mercure": ["*"]}),
            json!({"mercure": {"publish": "*"}}),
            json!({"mercure": {"subscribe": [42]}}),
            json!({"mercure": {"subscribe": [{"matchType": "Exact"}]}}),
            json!({"sub": 7}),
        ] {
            refused(&keys(), &hs(&claims));
        }
    }

    #[test]
    fn authorization_details_tokens() {
        let token = mint(
            Algorithm::HS256,
            SECRET,
            Some("at+jwt"),
            &json!({
                "sub": "urn:uuid:1", "exp": now() + 300,
                "mercure": {"publish": ["ignored"]},
                "authorization_details": [
                    {"type": "payment_initiation", "topics": "not ours", "actions": 3},
                    {"type": "mercure", "actions": ["subscribe"],
                     "topics": [{"match": "https://example.com/books/1", "matchType": "Exact"},
                                {"match": "https://example.com/books/7"}],
                     "payload": {"custom1": "books"}},
                    {"type": "mercure", "actions": ["publish", "subscribe"],
                     "topics": [{"match": "*", "match_type": "URLPattern"}],
                     "payload": {"custom3": "default"}}
                ]
            }),
        );
        let grant = keys().verify(&token).unwrap();
        assert_eq!(grant.subject.as_deref(), Some("urn:uuid:1"));
        // `authorization_details` wins: the `mercure` claim is not read.
        assert_eq!(strs(&grant.publish), ["*"]);
        assert_eq!(
            strs(&grant.subscribe),
            [
                "https://example.com/books/1",
                "https://example.com/books/7",
                "*"
            ]
        );
        assert_eq!(grant.payload, None);
        assert_eq!(grant.subscribe_payloads.len(), grant.subscribe.len());
        // Payloads: the first matching detail wins; `*` serves as default.
        assert_eq!(
            grant.payload_for("https://example.com/books/7"),
            Some(&json!({"custom1": "books"}))
        );
        assert_eq!(
            grant.payload_for("https://example.com/other"),
            Some(&json!({"custom3": "default"}))
        );
        // A detail's payload is stored once for all its topics.
        assert!(Arc::ptr_eq(
            grant.subscribe_payloads[0].as_ref().unwrap(),
            grant.subscribe_payloads[1].as_ref().unwrap()
        ));
        // An empty array falls back to the `mercure` claim, as the hub does.
        let token = hs(&json!({"authorization_details": [], "mercure": {"publish": ["x"]}}));
        assert_eq!(strs(&keys().verify(&token).unwrap().publish), ["x"]);
        // Only non-mercure details: valid, grants nothing.
        let token = hs(&json!({"authorization_details": [{"type": "other"}]}));
        assert_eq!(keys().verify(&token).unwrap(), MercureGrant::default());
    }

    #[test]
    fn malformed_authorization_details_refuse_the_whole_token() {
        let ok = json!({"type": "mercure", "actions": ["publish"], "topics": [{"match": "a"}]});
        for bad in [
            json!({"type": "mercure", "actions": [], "topics": [{"match": "a"}]}),
            json!({"type": "mercure", "topics": [{"match": "a"}]}),
            json!({"type": "mercure", "actions": ["delete"], "topics": [{"match": "a"}]}),
            json!({"type": "mercure", "actions": ["publish"], "topics": []}),
            json!({"type": "mercure", "actions": ["publish"], "topics": ["a"]}),
            json!({"type": "mercure", "actions": ["publish"], "topics": [{"match": ""}]}),
            json!({"type": "mercure", "actions": ["publish"], "topics": [{"pattern": "a"}]}),
            json!({"type": "mercure", "actions": ["publish"],
                   "topics": [{"match": "a", "matchType": "Regex"}]}),
            json!({"type": "mercure", "actions": ["publish"],
                   "topics": [{"match": "a", "matchType": "Exact", "match_type": "URLPattern"}]}),
            json!({"type": "mercure", "actions": ["publish"],
                   "topics": [{"match": "https://example.com/(", "matchType": "URLPattern"}]}),
            json!({"type": 1}),
            json!("mercure"),
        ] {
            let token = hs(&json!({"authorization_details": [ok.clone(), bad]}));
            refused(&keys(), &token);
        }
        refused(
            &keys(),
            &hs(&json!({"authorization_details": {"type": "mercure"}})),
        );
    }

    #[test]
    fn exp_is_optional_but_enforced() {
        let k = keys();
        assert!(k.verify(&hs(&json!({}))).is_ok());
        assert_eq!(
            refused(&k, &hs(&json!({"exp": now() - 3600}))),
            MercureAuthError::Expired
        );
        // Within the leeway.
        assert!(k.verify(&hs(&json!({"exp": now() - 2}))).is_ok());
        assert_eq!(
            refused(
                &k.with_leeway(0),
                &hs(&json!({"exp": now().saturating_sub(2)}))
            ),
            MercureAuthError::Expired
        );
        // The leeway is capped: an hour-old token stays expired.
        assert_eq!(
            refused(
                &keys().with_leeway(u64::MAX),
                &hs(&json!({"exp": now() - 3600}))
            ),
            MercureAuthError::Expired
        );
        let k = keys();
        assert_eq!(
            refused(&k, &hs(&json!({"nbf": now() + 3600}))),
            MercureAuthError::NotYetValid
        );
        assert!(k.verify(&hs(&json!({"nbf": now() + 2}))).is_ok());
        assert!(matches!(
            refused(&k, &hs(&json!({"exp": "tomorrow"}))),
            MercureAuthError::InvalidClaims(_)
        ));
    }

    #[test]
    fn wrong_key_and_algorithms_are_refused() {
        let claims = json!({"mercure": {"publish": ["*"]}});
        let other = mint(
            Algorithm::HS256,
            b"another-secret-of-at-least-32-bytes!",
            Some("JWT"),
            &claims,
        );
        assert_eq!(refused(&keys(), &other), MercureAuthError::BadSignature);
        // RS256 and ES256 with their public keys.
        let rsa = MercureKeys::from_pem(RSA_PUBLIC).unwrap();
        let ec = MercureKeys::from_pem(EC_PUBLIC).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        assert_eq!(ec.algorithm(), Algorithm::ES256);
        let rs_token = mint(Algorithm::RS256, RSA_PRIVATE, Some("JWT"), &claims);
        let es_token = mint(Algorithm::ES256, EC_PRIVATE, Some("at+jwt"), &claims);
        assert_eq!(strs(&rsa.verify(&rs_token).unwrap().publish), ["*"]);
        assert_eq!(strs(&ec.verify(&es_token).unwrap().publish), ["*"]);
        // Each key takes its own algorithm only.
        for (k, t) in [
            (&rsa, &es_token),
            (&ec, &rs_token),
            (&keys(), &rs_token),
            (&rsa, &hs(&claims)),
        ] {
            assert_eq!(refused(k, t), MercureAuthError::AlgorithmNotAccepted);
        }
        // Algorithm confusion: HS256 signed with the public key as secret.
        for (public, k) in [(RSA_PUBLIC, &rsa), (EC_PUBLIC, &ec)] {
            let forged = mint(Algorithm::HS256, public, Some("JWT"), &claims);
            assert_eq!(refused(k, &forged), MercureAuthError::AlgorithmNotAccepted);
        }
        // Another HMAC strength is not HS256.
        let hs512 = mint(Algorithm::HS512, SECRET, Some("JWT"), &claims);
        assert_eq!(
            refused(&keys(), &hs512),
            MercureAuthError::AlgorithmNotAccepted
        );
        // A tampered payload.
        let mut parts: Vec<String> = hs(&claims).split('.').map(str::to_owned).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"mercure":{"publish":["*"],"subscribe":["*"]}}"#);
        assert_eq!(
            refused(&keys(), &parts.join(".")),
            MercureAuthError::BadSignature
        );
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let claims = b64(r#"{"mercure":{"publish":["*"]}}"#);
        for alg in ["none", "None", "NONE"] {
            let header = b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            for token in [
                format!("{header}.{claims}."),
                format!("{header}.{claims}.c2lnbmF0dXJl"),
            ] {
                assert_eq!(refused(&keys(), &token), MercureAuthError::Unsigned);
                let rsa = MercureKeys::from_pem(RSA_PUBLIC).unwrap();
                assert_eq!(refused(&rsa, &token), MercureAuthError::Unsigned);
            }
        }
        for garbage in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.", "e30.e30.e30"] {
            assert_eq!(refused(&keys(), garbage), MercureAuthError::Malformed);
        }
    }

    #[test]
    fn typ_must_be_jwt_or_at_jwt() {
        for typ in [
            None,
            Some("JWT"),
            Some("jwt"),
            Some("at+jwt"),
            Some("application/at+JWT"),
        ] {
            let token = mint(Algorithm::HS256, SECRET, typ, &json!({}));
            assert!(keys().verify(&token).is_ok(), "{typ:?}");
        }
        for typ in ["dpop+jwt", "secevent+jwt", "application/"] {
            let token = mint(Algorithm::HS256, SECRET, Some(typ), &json!({}));
            assert_eq!(refused(&keys(), &token), MercureAuthError::UnexpectedType);
        }
    }

    #[test]
    fn aud_and_iss_only_when_configured() {
        let foreign = hs(&json!({"aud": "https://elsewhere.example", "iss": "someone"}));
        // Not configured: neither is read.
        assert!(keys().verify(&foreign).is_ok());
        let k = keys()
            .with_audience(Some("https://hub.example/.well-known/mercure".into()))
            .with_issuer(Some("https://app.example".into()));
        let good = hs(&json!({
            "aud": ["https://other.example", "https://hub.example/.well-known/mercure"],
            "iss": "https://app.example"
        }));
        assert!(k.verify(&good).is_ok());
        let cases = [
            (
                json!({"iss": "https://app.example"}),
                MercureAuthError::AudienceMissing,
            ),
            (
                json!({"iss": "https://app.example", "aud": "https://elsewhere.example"}),
                MercureAuthError::AudienceMismatch,
            ),
            (
                json!({"aud": "https://hub.example/.well-known/mercure"}),
                MercureAuthError::IssuerMissing,
            ),
            (
                json!({"aud": "https://hub.example/.well-known/mercure", "iss": "evil"}),
                MercureAuthError::IssuerMismatch,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(refused(&k, &hs(&claims)), want);
        }
    }

    #[test]
    fn oversized_tokens_and_too_many_selectors_are_refused() {
        let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            refused(&keys(), &huge),
            MercureAuthError::TokenTooLarge {
                max: MAX_TOKEN_BYTES
            }
        );
        let big = hs(&json!({"mercure": {"payload": "p".repeat(MAX_TOKEN_BYTES)}}));
        assert!(matches!(
            refused(&keys(), &big),
            MercureAuthError::TokenTooLarge { .. }
        ));
        let many: Vec<String> = (0..=MAX_SELECTORS).map(|i| (i % 10).to_string()).collect();
        let token = hs(&json!({"mercure": {"subscribe": many}}));
        assert!(token.len() <= MAX_TOKEN_BYTES);
        assert_eq!(
            refused(&keys(), &token),
            MercureAuthError::TooManySelectors { max: MAX_SELECTORS }
        );
        // 1025 topic matcher objects cannot fit in 8 KiB: the bound on
        // authorization_details is checked on the claims directly.
        let topics: Vec<Value> = (0..=MAX_SELECTORS).map(|_| json!({"match": "a"})).collect();
        let split = json!({"authorization_details": [
            {"type": "mercure", "actions": ["subscribe"], "topics": &topics[..600]},
            {"type": "mercure", "actions": ["subscribe"], "topics": &topics[600..]}
        ]});
        assert_eq!(
            grant_from_claims(split.as_object().unwrap()),
            Err(MercureAuthError::TooManySelectors { max: MAX_SELECTORS })
        );
        let detail = json!({"type": "mercure", "actions": ["publish"], "topics": [{"match": "a"}]});
        let details = json!({"authorization_details": vec![detail; MAX_SELECTORS + 1]});
        assert_eq!(
            grant_from_claims(details.as_object().unwrap()),
            Err(MercureAuthError::TooManySelectors { max: MAX_SELECTORS })
        );
        let at_bound = json!({"authorization_details": [
            {"type": "mercure", "actions": ["subscribe"], "topics": &topics[..MAX_SELECTORS]}
        ]});
        let grant = grant_from_claims(at_bound.as_object().unwrap()).unwrap();
        assert_eq!(grant.subscribe.len(), MAX_SELECTORS);
        // Exactly the bound is accepted.
        let many: Vec<String> = (0..MAX_SELECTORS).map(|i| (i % 10).to_string()).collect();
        let grant = keys()
            .verify(&hs(&json!({"mercure": {"subscribe": many}})))
            .unwrap();
        assert_eq!(grant.subscribe.len(), MAX_SELECTORS);
    }

    #[test]
    fn url_pattern_and_exact_matchers_grant_what_they_say() {
        let token = hs(&json!({"authorization_details": [
            {"type": "mercure", "actions": ["subscribe"],
             "topics": [{"match": "https://example.com/books/:id", "matchType": "URLPattern"}]},
            {"type": "mercure", "actions": ["publish"],
             "topics": [{"match": "https://example.com/{id}"}]},
        ]}));
        let g = keys().verify(&token).unwrap();
        assert!(g.may_subscribe("https://example.com/books/1"));
        assert!(!g.may_subscribe("https://example.com/authors/1"));
        // Exact: the braces are characters, not a template.
        assert!(g.may_publish("https://example.com/{id}"));
        assert!(!g.may_publish("https://example.com/1"));
    }

    #[test]
    fn error_messages_never_hold_claim_values() {
        let secret_topic = "https://example.com/private/very-secret-topic-name";
        for claims in [
            // An unterminated URI template; a URL pattern with an open group.
            json!({"mercure": {"subscribe": [format!("{secret_topic}/{{id")]}}),
            json!({"authorization_details": [{"type": "mercure", "actions": ["publish"],
                   "topics": [{"match": format!("{secret_topic}/(["), "matchType": "URLPattern"}]}]}),
            json!({"authorization_details": [{"type": "mercure", "actions": [secret_topic],
                   "topics": [{"match": "a"}]}]}),
        ] {
            let token = hs(&claims);
            let e = refused(&keys(), &token);
            assert!(!e.to_string().contains("very-secret"), "{e}");
        }
    }

    #[test]
    fn keys_from_flag_values() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
        let ec = MercureKeys::from_flag(&format!("{dir}/ec_public.pem")).unwrap();
        assert_eq!(ec.algorithm(), Algorithm::ES256);
        let rsa = MercureKeys::from_flag(&format!("{dir}/rsa_public.pem")).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        // PEM given inline, as the hub takes it.
        let inline = MercureKeys::from_flag(std::str::from_utf8(EC_PUBLIC).unwrap()).unwrap();
        assert_eq!(inline.algorithm(), Algorithm::ES256);
        let secret = MercureKeys::from_flag(std::str::from_utf8(SECRET).unwrap()).unwrap();
        assert_eq!(secret.algorithm(), Algorithm::HS256);
        let token = hs(&json!({"mercure": {"publish": ["*"]}}));
        assert!(secret.verify(&token).is_ok());

        assert!(matches!(
            MercureKeys::from_flag(""),
            Err(MercureKeyError::Empty)
        ));
        let short = MercureKeys::from_flag("!ChangeMe!").unwrap_err();
        assert_eq!(short, MercureKeyError::ShortSecret { len: 10, min: 32 });
        assert!(!short.to_string().contains("ChangeMe"));
        assert!(matches!(
            MercureKeys::from_flag(&format!("{dir}/missing.pem")),
            Err(MercureKeyError::Unreadable { .. })
        ));
        assert!(matches!(
            MercureKeys::from_flag(&format!("{dir}/README.md")),
            Err(MercureKeyError::NotAPublicKey { .. })
        ));
        for private in ["ec_private.pem", "rsa_private.pem"] {
            assert!(matches!(
                MercureKeys::from_flag(&format!("{dir}/{private}")),
                Err(MercureKeyError::PrivateKey { .. })
            ));
        }
        assert!(matches!(
            MercureKeys::from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"),
            Err(MercureKeyError::NotAPublicKey { .. })
        ));
        // Debug shows no key material.
        let debug = format!("{secret:?}");
        assert!(debug.contains("HS256") && !debug.contains("ChangeThis"));
    }

    const T_HEADER: &str = "header.token.value";
    const T_QUERY: &str = "query.token.value";
    const T_COOKIE: &str = "cookie.token.value";
    const T_LEGACY: &str = "legacy.token.value";

    fn from(
        headers: &[(&str, &str)],
        query: &str,
    ) -> Result<Option<(String, TokenSource)>, MercureAuthError> {
        token_from_request(headers.iter().copied(), query)
    }

    fn found(headers: &[(&str, &str)], query: &str) -> (String, TokenSource) {
        from(headers, query).unwrap().expect("a token")
    }

    #[test]
    fn every_token_source() {
        let bearer = format!("Bearer {T_HEADER}");
        assert_eq!(
            found(&[("Authorization", bearer.as_str())], ""),
            (T_HEADER.into(), TokenSource::Header)
        );
        let lower = format!("bearer  {T_HEADER}");
        assert_eq!(
            found(&[("authorization", lower.as_str())], ""),
            (T_HEADER.into(), TokenSource::Header)
        );
        assert_eq!(
            found(&[], &format!("?topic=a&authorization={T_QUERY}")),
            (T_QUERY.into(), TokenSource::Query)
        );
        assert_eq!(
            found(&[], "authorization=query%2Etoken.value&x=1"),
            (T_QUERY.into(), TokenSource::Query)
        );
        let cookie = format!("theme=dark; {COOKIE_NAME}=\"{T_COOKIE}\"; lang=fr");
        assert_eq!(
            found(&[("Cookie", cookie.as_str())], ""),
            (T_COOKIE.into(), TokenSource::Cookie { name: COOKIE_NAME })
        );
        let legacy = format!("{LEGACY_COOKIE_NAME}={T_LEGACY}");
        assert_eq!(
            found(&[("cookie", legacy.as_str())], ""),
            (
                T_LEGACY.into(),
                TokenSource::Cookie {
                    name: LEGACY_COOKIE_NAME
                }
            )
        );
        // Nothing, or only empty values and other cookies: anonymous.
        assert_eq!(from(&[], ""), Ok(None));
        let empty = format!("{COOKIE_NAME}=; other=1");
        assert_eq!(
            from(
                &[("Cookie", empty.as_str()), ("Accept", "text/event-stream")],
                "authorization="
            ),
            Ok(None)
        );
        // Byte values, as an http::HeaderMap gives them.
        let as_bytes = [("Authorization", bearer.as_bytes())];
        assert_eq!(
            token_from_request(as_bytes, "").unwrap(),
            Some((T_HEADER.into(), TokenSource::Header))
        );
    }

    #[test]
    fn precedence_between_sources() {
        let bearer = format!("Bearer {T_HEADER}");
        let cookies = format!("{LEGACY_COOKIE_NAME}={T_LEGACY}; {COOKIE_NAME}={T_COOKIE}");
        let query = format!("authorization={T_QUERY}");
        // The header over everything.
        assert_eq!(
            found(
                &[
                    ("Cookie", cookies.as_str()),
                    ("Authorization", bearer.as_str())
                ],
                &query
            )
            .1,
            TokenSource::Header
        );
        // Then the query parameter over the cookies.
        assert_eq!(
            found(&[("Cookie", cookies.as_str())], &query),
            (T_QUERY.into(), TokenSource::Query)
        );
        // Then the 1.0 cookie over the 0.x one, whatever their order, and
        // across several Cookie fields (HTTP/2 splits them).
        assert_eq!(found(&[("Cookie", cookies.as_str())], "").0, T_COOKIE);
        let legacy = format!("{LEGACY_COOKIE_NAME}={T_LEGACY}");
        let modern = format!("{COOKIE_NAME}={T_COOKIE}");
        assert_eq!(
            found(
                &[("cookie", legacy.as_str()), ("cookie", modern.as_str())],
                ""
            )
            .0,
            T_COOKIE
        );
        // Of one cookie sent twice, the first.
        let twice = format!("{COOKIE_NAME}={T_COOKIE}; {COOKIE_NAME}=older");
        assert_eq!(found(&[("Cookie", twice.as_str())], "").0, T_COOKIE);
    }

    #[test]
    fn malformed_requests_are_refused_without_fallback() {
        let bearer = format!("Bearer {T_HEADER}");
        let cookie = format!("{COOKIE_NAME}={T_COOKIE}");
        // Headers, query, and the refusal.
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, MercureAuthError);
        let cases: [Case<'_>; 7] = [
            (
                vec![
                    ("Authorization", bearer.as_str()),
                    ("authorization", bearer.as_str()),
                ],
                "",
                MercureAuthError::MultipleAuthorizationHeaders,
            ),
            (
                vec![
                    ("Authorization", "Basic dXNlcjpwYXNz"),
                    ("Cookie", cookie.as_str()),
                ],
                "",
                MercureAuthError::MalformedAuthorizationHeader,
            ),
            (
                vec![("Authorization", "Bearer")],
                "",
                MercureAuthError::MalformedAuthorizationHeader,
            ),
            (
                vec![("Authorization", "Bearer ")],
                "",
                MercureAuthError::MalformedAuthorizationHeader,
            ),
            (
                vec![("Authorization", "Bearer a b")],
                "",
                MercureAuthError::MalformedAuthorizationHeader,
            ),
            (
                vec![("Authorization", T_HEADER)],
                "",
                MercureAuthError::MalformedAuthorizationHeader,
            ),
            (
                vec![("Cookie", cookie.as_str())],
                "authorization=a.b.c&authorization=d.e.f",
                MercureAuthError::MultipleQueryTokens,
            ),
        ];
        for (headers, query, want) in cases {
            let e = from(&headers, query).unwrap_err();
            assert_eq!(e, want);
            assert_eq!(e.status(), 400);
            assert_eq!(e.bearer_error(), "invalid_request");
            assert_no_token_in(&e.to_string(), T_HEADER);
            assert_no_token_in(&e.to_string(), T_COOKIE);
        }
        let not_utf8: [(&str, &[u8]); 1] = [("Authorization", b"Bearer \xff\xfe")];
        assert_eq!(
            token_from_request(not_utf8, ""),
            Err(MercureAuthError::MalformedAuthorizationHeader)
        );
        let mut bad_cookie = COOKIE_NAME.as_bytes().to_vec();
        bad_cookie.extend_from_slice(b"=\xff\xfe");
        assert_eq!(
            token_from_request([("Cookie", bad_cookie.as_slice())], ""),
            Err(MercureAuthError::MalformedCookie)
        );
    }

    #[test]
    fn end_to_end_from_a_request() {
        let token = mint(
            Algorithm::ES256,
            EC_PRIVATE,
            Some("at+jwt"),
            &json!({"exp": now() + 60, "authorization_details": [
                {"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "chat"}]}
            ]}),
        );
        let cookie = format!("{COOKIE_NAME}={token}");
        let (found, source) = from(&[("Cookie", cookie.as_str())], "match=chat")
            .unwrap()
            .unwrap();
        assert_eq!(source, TokenSource::Cookie { name: COOKIE_NAME });
        let grant = MercureKeys::from_pem(EC_PUBLIC)
            .unwrap()
            .verify(&found)
            .unwrap();
        assert!(grant.may_subscribe("chat"));
        assert!(!grant.may_publish("chat"));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c"), "a b c");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%C3%A9"), "é");
        assert_eq!(form_decode("%FF"), "\u{FFFD}");
    }
}
