//! Credentials as presented: where each came from, and the rule for one
//! carried in a URL.

/// Where a credential came from. Rules differ: a token in a URL must be
/// short-lived, an API key is only taken from the `Authorization` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer`.
    Header,
    /// The auth cookie (`herald_token` by default).
    Cookie,
    /// `?token=` in the URL.
    Query,
    /// A WebSocket `{"type":"auth"}` message.
    Message,
}

/// A presented credential. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct Credential {
    pub(crate) token: String,
    /// Where it was found.
    pub source: Source,
}

impl Credential {
    /// `token` (a JWT, a publisher key or a one-time token) found in `source`.
    pub fn new(token: impl Into<String>, source: Source) -> Credential {
        Credential {
            token: token.into(),
            source,
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"[redacted]")
            .field("source", &self.source)
            .finish()
    }
}

/// A credential that was not accepted (maps to 401 / WebSocket 4001). The
/// message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Why the credential was refused, for the client.
    #[error("{0}")]
    Invalid(&'static str),
    /// The credential could not be checked now: the shared store of
    /// one-time tokens did not answer. Temporary: the client retries later
    /// with the same credential (HTTP 503 `unavailable` with `Retry-After`,
    /// SSE `herald.disconnect` `engine_unavailable`, WebSocket close 1013),
    /// never a 401 that would make it give up.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// The rule for a JWT carried in a URL (DESIGN.md, "Credentials over time"):
/// it needs `iat`, its `iat` may not lie in the future (beyond `leeway`
/// seconds), and its remaining lifetime `exp - max(now, iat)` may not exceed
/// `max` seconds. All values are seconds since the Unix epoch.
pub fn query_token_lifetime(
    iat: Option<u64>,
    exp: u64,
    now: u64,
    max: u64,
    leeway: u64,
) -> Result<(), AuthError> {
    let Some(iat) = iat else {
        return Err(AuthError::Invalid("tokens in a URL need an iat claim"));
    };
    if iat > now.saturating_add(leeway) {
        return Err(AuthError::Invalid(
            "tokens in a URL may not be issued in the future (iat)",
        ));
    }
    if exp.saturating_sub(now.max(iat)) > max {
        return Err(AuthError::Invalid(
            "tokens in a URL must be short-lived (exp too far ahead); use POST /v1/tokens",
        ));
    }
    Ok(())
}
