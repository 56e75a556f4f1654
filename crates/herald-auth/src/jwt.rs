//! JWT verification (RFC 7519; HS256, RS256 and ES256 with configured keys,
//! and the algorithms of an identity provider's key set, see [`crate::jwks`])
//! and the claims Herald reads.
//!
//! Claims: `sub`, `exp` (required), `nbf`, `iat`, and a `herald` object with
//! the topic patterns the holder may use:
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600, "iat": 1767225300,
//!  "herald": {"subscribe": ["users/{sub}/**"], "publish": ["chat/*"], "llm": true}}
//! ```
//!
//! `llm: true` lets the holder start LLM generations; topics under `llm/`
//! are never publishable by a token, whatever its `publish` patterns say.
//!
//! `iss` and `aud` are read only when the server is configured with an
//! issuer or an audience ([`crate::AuthConfig::issuer`],
//! [`crate::AuthConfig::audience`]); then they are required of every token.
//! A token that names an audience is refused by a server configured with
//! none (RFC 7519, 4.1.3).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::pattern::TopicPattern;
use crate::{AuthError, Grant};

/// The `herald` claim.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeraldClaim {
    /// Topic patterns the holder may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Topic patterns the holder may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// May start LLM generations (`POST /v1/llm/chat`, `/v1/chat/completions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub llm: bool,
    /// May use the server API (`POST /v1/disconnect`, `GET /v1/topics`,
    /// `GET /v1/connections`) like the publisher key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// The claims of a Herald token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Subject: who holds the token (`{sub}` in patterns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch (RFC 7519, 4.1.4).
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch; required in a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// What the token grants in Herald.
    #[serde(default)]
    pub herald: HeraldClaim,
    /// Free-form JSON about the holder (a display name, an avatar), shown
    /// to others in presence entries and `herald.join` / `herald.leave`
    /// (DESIGN.md, "Presence"). At most [`MAX_INFO_BYTES`] once serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// The largest `info` claim accepted, in bytes of its JSON: it is copied
/// into every presence entry of the connection.
pub const MAX_INFO_BYTES: usize = 1024;

/// A verification key and the one algorithm it accepts.
pub(crate) struct Key {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// Builds the verification key for a PEM public key: RSA (RS256) or EC P-256 (ES256).
pub(crate) fn public_key(pem: &[u8]) -> Result<Key, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key {
            alg: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key {
            alg: Algorithm::ES256,
            key,
        });
    }
    Err("not an RSA or EC (P-256) public key in PEM".into())
}

/// What a token must satisfy besides its signature: the clock leeway for
/// `exp` and `nbf` (RFC 7519, 4.1.4 and 4.1.5), and, when configured, its
/// issuer (`iss`, RFC 7519, 4.1.1) and audience (`aud`, RFC 7519, 4.1.3: a
/// string or an array of strings that must contain ours).
pub(crate) struct Expect<'a> {
    /// Clock leeway, in seconds.
    pub(crate) leeway: u64,
    /// The required `iss`, exactly.
    pub(crate) issuer: Option<&'a str>,
    /// The audience `aud` must name.
    pub(crate) audience: Option<&'a str>,
}

/// The header of `token`. `alg: none` and algorithms Herald does not know
/// fail here (RFC 8725, 3.1): the header does not parse into an algorithm.
pub(crate) fn header(token: &str) -> Result<Header, AuthError> {
    jsonwebtoken::decode_header(token).map_err(|_| {
        if token.split('.').next().is_some_and(header_says_none) {
            AuthError::Invalid("unsigned tokens (alg none) are refused")
        } else {
            AuthError::Invalid("malformed token")
        }
    })
}

/// The configured key (`--jwt-secret`, `--jwt-public-key`) for a token with
/// `header`: the one of the token's algorithm, if the token names no `kid`
/// or the configured one (`key_id`).
pub(crate) fn static_key<'k>(
    header: &Header,
    keys: &'k [Key],
    key_id: Option<&str>,
) -> Result<&'k Key, AuthError> {
    if let Some(kid) = &header.kid {
        if key_id != Some(kid.as_str()) {
            return Err(AuthError::Invalid("unknown key id (kid)"));
        }
    }
    keys.iter()
        .find(|k| k.alg == header.alg)
        .ok_or(AuthError::Invalid(
            "the token's algorithm is not accepted by this server",
        ))
}

/// The claims as a token carries them: Herald's, and a top-level `admin`.
#[derive(Deserialize)]
struct AsRead {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    admin: Option<serde_json::Value>,
}

/// Verifies `token` (whose header is `header`) with `key`, in `key`'s
/// algorithm only: a header naming another algorithm is refused before any
/// signature check (RFC 8725, 3.1 and 3.2), then the signature, `exp`,
/// `nbf` and what `expect` asks are checked.
pub(crate) fn decode(
    token: &str,
    header: &Header,
    key: &Key,
    expect: &Expect<'_>,
) -> Result<Claims, AuthError> {
    if header.alg != key.alg {
        return Err(AuthError::Invalid(
            "the token's algorithm (alg) is not the one of the key it names",
        ));
    }
    let mut validation = Validation::new(key.alg);
    validation.leeway = expect.leeway;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = expect.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    if let Some(aud) = expect.audience {
        validation.set_audience(&[aud]);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation.algorithms = vec![key.alg];
    match jsonwebtoken::decode::<AsRead>(token, &key.key, &validation) {
        Ok(data) => {
            let mut claims = data.claims.claims;
            // DESIGN.md names "a token with the `admin` claim": a top-level
            // `"admin": true` grants what `herald.admin` does.
            if data.claims.admin == Some(serde_json::Value::Bool(true)) {
                claims.herald.admin = true;
            }
            Ok(claims)
        }
        Err(e) => Err(match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                AuthError::Invalid("token expired")
            }
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                AuthError::Invalid("token not valid yet (nbf)")
            }
            jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                AuthError::Invalid("bad signature")
            }
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                AuthError::Invalid("the token's algorithm is not accepted by this server")
            }
            jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                AuthError::Invalid("the token's issuer (iss) is not the one this server trusts")
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience if expect.audience.is_some() => {
                AuthError::Invalid("the token's audience (aud) does not name this server")
            }
            jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::Invalid(
                "the token names an audience (aud) and this server has none configured",
            ),
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) if c == "iss" => {
                AuthError::Invalid("the token has no issuer (iss); this server requires one")
            }
            jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(c) if c == "aud" => {
                AuthError::Invalid("the token has no audience (aud); this server requires one")
            }
            _ => AuthError::Invalid("invalid token"),
        }),
    }
}

fn header_says_none(b64: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("alg")
                .and_then(|a| a.as_str())
                .map(|a| a.eq_ignore_ascii_case("none"))
        })
        .unwrap_or(false)
}

impl Claims {
    /// The grant these claims give, with patterns parsed.
    pub(crate) fn grant(&self) -> Result<Grant, AuthError> {
        let parse = |v: &[String]| {
            v.iter()
                .map(|p| {
                    TopicPattern::parse(p)
                        .map_err(|_| AuthError::Invalid("invalid topic pattern in claims"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let info = match &self.info {
            None | Some(serde_json::Value::Null) => None,
            Some(v) if v.to_string().len() > MAX_INFO_BYTES => {
                return Err(AuthError::Invalid(
                    "the info claim is larger than 1024 bytes of JSON",
                ))
            }
            Some(v) => Some(v.clone()),
        };
        Ok(Grant {
            subject: self.sub.clone(),
            subscribe: parse(&self.herald.subscribe)?,
            publish: parse(&self.herald.publish)?,
            llm: self.herald.llm,
            admin: self.herald.admin,
            expires_at: Some(self.exp),
            info,
        })
    }
}

/// Signs claims (for `herald token` and tests). `key` is an HS256 secret, or
/// a PEM private key (RSA → RS256, EC P-256 → ES256) when `pem` is true.
pub fn sign(claims: &Claims, key: &[u8], pem: bool, kid: Option<&str>) -> Result<String, String> {
    let (alg, enc) = if pem {
        if let Ok(k) = EncodingKey::from_rsa_pem(key) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = EncodingKey::from_ec_pem(key) {
            (Algorithm::ES256, k)
        } else {
            return Err("not an RSA or EC (P-256) private key in PEM".into());
        }
    } else {
        (Algorithm::HS256, EncodingKey::from_secret(key))
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &enc).map_err(|e| e.to_string())
}
