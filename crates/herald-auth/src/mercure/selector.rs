//! Mercure topic selectors ("topic matchers" in the current draft): which
//! topics a subscription, or a grant in a Mercure JWT, covers.
//!
//! The Mercure specification (dunglas/mercure `spec/mercure.md`) has had
//! these kinds of selector over its drafts, and Herald accepts all of them:
//!
//! | Form | Matches | Comes from | Constructor |
//! |------|---------|------------|-------------|
//! | `*` | every topic | any of the inputs below | any |
//! | exact topic (IRI or any string) | that topic, byte for byte | `match` / `matchExact` query parameter, `matchType: Exact` | [`Selector::exact`] |
//! | exact topic or URI template (RFC 6570) | the topic itself, or every expansion of the template | `topic` query parameter and the bare strings of the `mercure.subscribe` / `mercure.publish` claim (earlier drafts, such as draft-dunglas-mercure-04, "Subscription": `topic` values are URI templates) | [`Selector::parse`] |
//! | URL pattern (WHATWG URL Pattern) | every topic the pattern matches, relative ones resolved against the hub's URL | `match_urlpattern` / `matchURLPattern` query parameter, `matchType: URLPattern` | [`Selector::url_pattern`], [`Selector::url_pattern_with_base`] |
//!
//! A selector is compiled once, when it is made (a URI template becomes an
//! anchored regular expression, a URL pattern its component expressions),
//! so [`Selector::matches`] does no parsing. Every regular expression runs on
//! the `regex` crate, whose matching time is linear in the topic's length,
//! and is compiled under a size limit; selectors are refused over
//! [`MAX_SELECTOR_LEN`] bytes, [`MAX_EXPRESSIONS`] template expressions or
//! [`MAX_VARIABLES`] template variables. A hostile subscriber therefore
//! cannot make matching expensive ("Subscription": hubs SHOULD bound the
//! length of each matcher and MUST answer 400 past it; "URL Pattern": hubs
//! MUST use a linear-time engine or a cost limit).
//!
//! Parsed selectors are not cached here: the caller keeps them.

use std::fmt;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};

/// The longest selector accepted, in bytes (UTF-8).
///
/// The Mercure specification ("Subscription", "Authorization Details")
/// leaves the limit to the hub and requires a request or token over it to be
/// refused; every constructor of [`Selector`] refuses longer strings with a
/// [`SelectorError`].
pub const MAX_SELECTOR_LEN: usize = 1024;

/// The most expressions (`{...}`) a URI template selector may hold.
///
/// RFC 6570 sets no limit; this one bounds the regular expression a template
/// compiles to. [`Selector::parse`] refuses templates with more.
pub const MAX_EXPRESSIONS: usize = 64;

/// The most variables a URI template selector may name, over all of its
/// expressions (`{x,y}` names two).
///
/// RFC 6570 sets no limit; this one bounds the regular expression a template
/// compiles to. [`Selector::parse`] refuses templates with more.
pub const MAX_VARIABLES: usize = 64;

/// The base URL that [`Selector::url_pattern`] resolves relative URL patterns
/// and relative topics against when the hub's own URL is not given.
///
/// The Mercure specification ("URL Pattern") requires the hub's URL as the
/// base. Without it, a fixed base in the `.invalid` top-level domain
/// (reserved by RFC 6761 §6.4, so no absolute pattern or topic can mean it)
/// keeps relative patterns matching relative topics (such as the hub's
/// subscription events, `/.well-known/mercure/subscriptions/...`) and
/// absolute ones matching absolute topics; only a relative pattern against
/// an absolute topic on the hub's own origin, or the other way round, needs
/// the real URL ([`Selector::url_pattern_with_base`]).
pub const DEFAULT_BASE_URL: &str = "https://hub.invalid/.well-known/mercure";

/// The most heap a compiled regular expression may take (the `regex`
/// crate's `size_limit`), for templates and for each component of a URL
/// pattern alike. Ordinary selectors take a few kilobytes; this refuses, for
/// instance, prefixes over about 200 characters and `(\w{50})` groups.
const REGEX_SIZE_LIMIT: usize = 1 << 18;

/// The most memory the lazy DFA of one regular expression may cache (the
/// `regex` crate's `dfa_size_limit`); past it matching stays linear, only
/// slower.
const REGEX_DFA_SIZE_LIMIT: usize = 1 << 18;

/// The longest regular expression source a template may produce, checked
/// before compiling so that a refused template costs little.
const MAX_REGEX_SOURCE_LEN: usize = 64 * 1024;

/// Which of the Mercure specification's selector forms a [`Selector`] is.
///
/// Shapes: [`Wildcard`](SelectorKind::Wildcard) is the reserved `*`
/// ("Matcher Types"), [`Exact`](SelectorKind::Exact) a byte-for-byte topic
/// ("Exact Matching"), [`UriTemplate`](SelectorKind::UriTemplate) an RFC 6570
/// template (the `topic` query parameter of earlier drafts),
/// [`UrlPattern`](SelectorKind::UrlPattern) a WHATWG URL Pattern
/// ("URL Pattern").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    /// `*`: every topic, whatever the matcher type.
    Wildcard,
    /// One topic, compared byte for byte.
    Exact,
    /// An RFC 6570 URI template: the topic itself or any expansion.
    UriTemplate,
    /// A WHATWG URL Pattern.
    UrlPattern,
}

/// A topic selector as a Mercure JWT's `publish`/`subscribe` arrays or a
/// subscriber's `topic`/`match`/`match_urlpattern` query parameters give it.
///
/// Shape: the string as given ([`as_str`](Selector::as_str)), its
/// [`SelectorKind`], and its compiled matcher. Made by [`Selector::parse`]
/// (`*`, exact topic or RFC 6570 URI template), [`Selector::exact`] (`*` or
/// exact topic, Mercure "Exact Matching") or [`Selector::url_pattern`] /
/// [`Selector::url_pattern_with_base`] (`*` or WHATWG URL Pattern, Mercure
/// "URL Pattern"). Cheap to clone (a compiled matcher is shared). Two
/// selectors are equal when their kind, string and (for URL patterns) base
/// URL are; to key a map or deduplicate subscriptions, use
/// `(kind(), as_str())` (a compiled matcher has interior caches, so
/// `Selector` is not `Hash`).
#[derive(Clone)]
pub struct Selector {
    raw: String,
    matcher: Matcher,
}

#[derive(Clone)]
enum Matcher {
    Wildcard,
    Exact,
    UriTemplate(Regex),
    UrlPattern(Arc<UrlPatternMatcher>),
}

struct UrlPatternMatcher {
    pattern: urlpattern::UrlPattern<BoundedRegex>,
    base: url::Url,
}

/// Why a selector was refused; the message says what is wrong and where.
///
/// Shape: one human-readable message (`.0`), never the whole selector (it
/// may be long). Displayed as `invalid topic selector: <message>`. The
/// Mercure specification answers a refused subscription matcher with 400 Bad
/// Request ("Subscription") and a token carrying one with 401
/// `invalid_token` ("Authorization Details").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic selector: {0}")]
pub struct SelectorError(pub String);

fn refuse(message: impl Into<String>) -> SelectorError {
    SelectorError(message.into())
}

impl Selector {
    /// Parses a selector as the `topic` query parameter and the bare strings
    /// of a `mercure.subscribe` / `mercure.publish` JWT claim give it
    /// (earlier Mercure drafts, such as draft-dunglas-mercure-04,
    /// "Subscription" and "Authorization", which the reference hub still
    /// accepts in its compatibility mode): `*`
    /// selects every topic, a string without `{` is an exact topic, and any
    /// other string is an RFC 6570 URI template (levels 1 to 4: `{var}`,
    /// `{+var}`, `{#var}`, `{.var}`, `{/var}`, `{;var}`, `{?x,y}`, `{&x}`,
    /// with the `*` explode and `:n` prefix modifiers) that selects the topic
    /// equal to the template and every expansion of it (RFC 6570 §1.5
    /// matching; see [`Selector::matches`]).
    ///
    /// # Errors
    ///
    /// [`SelectorError`] when the string is over [`MAX_SELECTOR_LEN`] bytes
    /// or holds a control character (C0, DEL or C1, which the Mercure
    /// specification forbids in topics and matchers), or, for a template,
    /// when it is not valid RFC 6570 (an unterminated `{`, a `{` inside an
    /// expression, a stray `}`, an empty expression, a reserved operator
    /// `= , ! @ |`, a bad variable name, a prefix outside 1 to 9999, a
    /// character RFC 6570 §2.1 forbids in literals), has over
    /// [`MAX_EXPRESSIONS`] expressions or [`MAX_VARIABLES`] variables, or
    /// compiles to an expression over the size limit (in practice a prefix
    /// over about 200 characters, or a `{...}`, `{+...}`, `{#...}` or
    /// `{?...}` expression of more than about 16 variables, whose subsets
    /// grow quadratically). (Mercure's reference
    /// hub takes an invalid template for an exact topic; Herald refuses it,
    /// and a caller wanting that behaviour can fall back to
    /// [`Selector::exact`].)
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        check_common(s)?;
        if s == "*" {
            return Ok(Selector::wildcard());
        }
        if !s.contains('{') {
            return Ok(Selector {
                raw: s.to_owned(),
                matcher: Matcher::Exact,
            });
        }
        let regex = compile_template(s)?;
        Ok(Selector {
            raw: s.to_owned(),
            matcher: Matcher::UriTemplate(regex),
        })
    }

    /// Makes an exact selector, as the `match` (or `matchExact`) query
    /// parameter and a `matchType: "Exact"` topic matcher give it (Mercure
    /// "Exact Matching"): it selects the topic equal to `s`, compared byte
    /// for byte, case-sensitively, without resolving relative references or
    /// normalizing Unicode or IRIs. `*` is still the wildcard ("Matcher
    /// Types": it is recognized before the matcher type). Braces mean
    /// nothing here: `https://example.com/{id}` selects only that string.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] when `s` is over [`MAX_SELECTOR_LEN`] bytes or holds
    /// a control character (C0, DEL or C1).
    pub fn exact(s: &str) -> Result<Selector, SelectorError> {
        check_common(s)?;
        if s == "*" {
            return Ok(Selector::wildcard());
        }
        Ok(Selector {
            raw: s.to_owned(),
            matcher: Matcher::Exact,
        })
    }

    /// Makes a URL Pattern selector, as the `match_urlpattern` (or
    /// `matchURLPattern`) query parameter and a `matchType: "URLPattern"`
    /// topic matcher give it (Mercure "URL Pattern"), with
    /// [`DEFAULT_BASE_URL`] standing for the hub's URL; see
    /// [`Selector::url_pattern_with_base`].
    ///
    /// # Errors
    ///
    /// As [`Selector::url_pattern_with_base`].
    pub fn url_pattern(s: &str) -> Result<Selector, SelectorError> {
        Selector::url_pattern_with_base(s, DEFAULT_BASE_URL)
    }

    /// Makes a URL Pattern selector resolved against `base`, the hub's URL
    /// (for instance `https://example.com/.well-known/mercure`), as the
    /// Mercure specification requires ("URL Pattern"): `s` is a WHATWG URL
    /// Pattern constructor string, absolute (`https://example.com/books/:id`)
    /// or relative (`/.well-known/mercure/subscriptions/:type/:match/:sub`),
    /// compiled without `ignoreCase` (host names still compare
    /// case-insensitively, being canonicalized, and every other component
    /// case-sensitively). A topic is matched as the URL it parses to against
    /// `base` (WHATWG URL Pattern "test" with a base URL). `*` is the
    /// wildcard, as for every matcher type ("Matcher Types").
    ///
    /// Regular-expression groups in the pattern (`:id(\d+)`) are compiled by
    /// the `regex` crate (linear-time matching, as "URL Pattern" requires of
    /// hubs) under a size limit.
    ///
    /// # Errors
    ///
    /// [`SelectorError`] when `s` is over [`MAX_SELECTOR_LEN`] bytes or holds
    /// a control character, when `base` is not an absolute URL that can be a
    /// base, or when `s` is not a valid URL pattern (the message carries the
    /// URL Pattern parser's reason, such as an unclosed `{`), including a
    /// regular-expression group that is invalid or too large to compile.
    pub fn url_pattern_with_base(s: &str, base: &str) -> Result<Selector, SelectorError> {
        check_common(s)?;
        let base = match url::Url::parse(base) {
            Ok(base) if !base.cannot_be_a_base() => base,
            _ => {
                return Err(refuse(
                    "the base URL for URL patterns is not an absolute URL that can be a base",
                ))
            }
        };
        if s == "*" {
            return Ok(Selector::wildcard());
        }
        let describe = |e: urlpattern::Error| match e {
            urlpattern::Error::RegExp(()) => refuse(
                "not a URL pattern (WHATWG URL Pattern): a regular expression group is invalid \
                 or too large to compile",
            ),
            other => refuse(format!("not a URL pattern (WHATWG URL Pattern): {other}")),
        };
        let init = urlpattern::UrlPatternInit::parse_constructor_string::<BoundedRegex>(
            s,
            Some(base.clone()),
        )
        .map_err(describe)?;
        let options = urlpattern::UrlPatternOptions {
            regex_syntax: urlpattern::RegexSyntax::Rust,
            ignore_case: false,
        };
        let pattern =
            urlpattern::UrlPattern::<BoundedRegex>::parse(init, options).map_err(describe)?;
        Ok(Selector {
            raw: s.to_owned(),
            matcher: Matcher::UrlPattern(Arc::new(UrlPatternMatcher { pattern, base })),
        })
    }

    fn wildcard() -> Selector {
        Selector {
            raw: "*".to_owned(),
            matcher: Matcher::Wildcard,
        }
    }

    /// Whether `topic` is selected.
    ///
    /// - `*`: always.
    /// - Exact: `topic` equals the selector byte for byte (Mercure "Exact
    ///   Matching").
    /// - URI template: `topic` equals the template itself (as Mercure hubs
    ///   compare first), or is an expansion of it per RFC 6570 §3 for some
    ///   values of its variables, each undefined, a string, a list or an
    ///   associative array. The whole topic must match:
    ///   `https://example.com/books/{id}` selects
    ///   `https://example.com/books/1`, not
    ///   `https://example.com/books/1/reviews`. Values are
    ///   percent-encoded as RFC 6570 §3.2.1 encodes them: unreserved
    ///   characters and `%XX` triplets for most operators, reserved
    ///   characters too for `{+var}` and `{#var}`; a raw non-ASCII character
    ///   is never a variable's value, while a non-ASCII literal of the
    ///   template matches both as is (an IRI topic) and percent-encoded (RFC
    ///   6570 §3.1). Two occurrences of one variable are matched
    ///   independently (a regular expression cannot require them equal), and
    ///   for `{+var:n}` / `{#var:n}` a `%XX` triplet passed through counts as
    ///   one character of the prefix; both make matching a little more
    ///   permissive than expansion, never less.
    /// - URL pattern: `topic`, parsed as a URL against the selector's base,
    ///   matches the pattern (WHATWG URL Pattern "test"); a topic that does
    ///   not parse is not selected.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.matcher {
            Matcher::Wildcard => true,
            Matcher::Exact => self.raw == topic,
            Matcher::UriTemplate(regex) => self.raw == topic || regex.is_match(topic),
            Matcher::UrlPattern(m) => match m.base.join(topic) {
                Ok(url) => m
                    .pattern
                    .test(urlpattern::UrlPatternMatchInput::Url(url))
                    .unwrap_or(false),
                Err(_) => false,
            },
        }
    }

    /// The selector as given (`*` for the wildcard).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Which selector form this is (Mercure "Matcher Types", plus the URI
    /// templates of earlier drafts).
    pub fn kind(&self) -> SelectorKind {
        match self.matcher {
            Matcher::Wildcard => SelectorKind::Wildcard,
            Matcher::Exact => SelectorKind::Exact,
            Matcher::UriTemplate(_) => SelectorKind::UriTemplate,
            Matcher::UrlPattern(_) => SelectorKind::UrlPattern,
        }
    }

    fn base(&self) -> Option<&str> {
        match &self.matcher {
            Matcher::UrlPattern(m) => Some(m.base.as_str()),
            _ => None,
        }
    }
}

impl PartialEq for Selector {
    fn eq(&self, other: &Selector) -> bool {
        self.kind() == other.kind() && self.raw == other.raw && self.base() == other.base()
    }
}

impl Eq for Selector {}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Selector");
        d.field("kind", &self.kind()).field("raw", &self.raw);
        if let Some(base) = self.base() {
            d.field("base", &base);
        }
        d.finish()
    }
}

impl fmt::Display for Selector {
    /// Writes the selector as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The checks every selector form shares: the length limit, and no C0, DEL
/// or C1 control character (Mercure "Terminology" for topics, "Subscription"
/// for matcher values).
fn check_common(s: &str) -> Result<(), SelectorError> {
    if s.len() > MAX_SELECTOR_LEN {
        return Err(refuse(format!(
            "{} bytes, over the limit of {MAX_SELECTOR_LEN}",
            s.len()
        )));
    }
    if let Some((at, c)) = s
        .char_indices()
        .find(|&(_, c)| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c))
    {
        return Err(refuse(format!(
            "control character U+{:04X} at byte {at} (C0, DEL and C1 controls are not allowed)",
            u32::from(c)
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// URI templates (RFC 6570)
// ---------------------------------------------------------------------------

/// One character of a value expanded by the operators that allow only
/// unreserved characters (RFC 6570 §1.5 `unreserved`, everything else
/// percent-encoded): simple, `.`, `/`, `;`, `?`, `&`.
const VALUE_CHAR_U: &str = r"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})";

/// One character of a value expanded by the operators that also allow
/// reserved characters and pass `%XX` triplets through (RFC 6570 §1.5
/// `reserved`): `+` and `#`.
const VALUE_CHAR_R: &str = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})";

/// One character of the value, encoded, for a prefix (`:n`) counted in
/// characters (RFC 6570 §2.4.1): an unreserved character, or the UTF-8
/// octets of one character as `%XX` triplets (a lead triplet and up to three
/// continuation triplets, `%80` to `%BF`).
const PREFIX_CHAR_U: &str = r"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2}(?:%[89ABab][0-9A-Fa-f]){0,3})";

/// [`PREFIX_CHAR_U`] for `+` and `#`: reserved characters too (a `%XX`
/// triplet passed through counts as one character).
const PREFIX_CHAR_R: &str =
    r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}(?:%[89ABab][0-9A-Fa-f]){0,3})";

/// An expression operator's expansion rules (RFC 6570 Appendix A table).
#[derive(Clone, Copy)]
struct Operator {
    /// Written before the first defined variable.
    first: &'static str,
    /// Written between defined variables (and exploded members).
    sep: &'static str,
    /// `name=value` pairs (`;`, `?`, `&`).
    named: bool,
    /// What an empty value writes after the name: `=` for `?` and `&`
    /// (true), nothing for `;` (false).
    ifemp_equals: bool,
    /// Reserved characters allowed unencoded (`+`, `#`).
    reserved: bool,
}

const fn operator(
    first: &'static str,
    sep: &'static str,
    named: bool,
    ifemp_equals: bool,
    reserved: bool,
) -> Operator {
    Operator {
        first,
        sep,
        named,
        ifemp_equals,
        reserved,
    }
}

/// The operator an expression starts with, if any (RFC 6570 §2.2), and how
/// many bytes it takes.
fn parse_operator(body: &str, at: usize) -> Result<(Operator, usize), SelectorError> {
    let op = match body.as_bytes().first() {
        Some(b'+') => operator("", ",", false, false, true),
        Some(b'#') => operator("#", ",", false, false, true),
        Some(b'.') => operator(".", ".", false, false, false),
        Some(b'/') => operator("/", "/", false, false, false),
        Some(b';') => operator(";", ";", true, false, false),
        Some(b'?') => operator("?", "&", true, true, false),
        Some(b'&') => operator("&", "&", true, true, false),
        Some(&c @ (b'=' | b',' | b'!' | b'@' | b'|')) => {
            return Err(refuse(format!(
                "operator '{}' in the expression at byte {at} is reserved for future extensions \
                 (RFC 6570 §2.2)",
                char::from(c)
            )))
        }
        _ => return Ok((operator("", ",", false, false, false), 0)),
    };
    Ok((op, 1))
}

/// A variable's modifier (RFC 6570 §2.4).
#[derive(Clone, Copy, Debug)]
enum Modifier {
    None,
    /// `:n`, 1 to 9999 characters.
    Prefix(u16),
    /// `*`.
    Explode,
}

/// Parses one `varspec` (RFC 6570 §2.3, §2.4).
fn parse_varspec(spec: &str, at: usize) -> Result<(&str, Modifier), SelectorError> {
    let (name, modifier) = if let Some(name) = spec.strip_suffix('*') {
        (name, Modifier::Explode)
    } else if let Some((name, len)) = spec.split_once(':') {
        let valid = (1..=4).contains(&len.len())
            && len.bytes().all(|b| b.is_ascii_digit())
            && !len.starts_with('0');
        match len.parse::<u16>() {
            Ok(n) if valid => (name, Modifier::Prefix(n)),
            _ => {
                return Err(refuse(format!(
                    "the prefix modifier of the expression at byte {at} must be a number from 1 \
                     to 9999 (RFC 6570 §2.4.1)"
                )))
            }
        }
    } else {
        (spec, Modifier::None)
    };
    if !valid_varname(name) {
        return Err(refuse(format!(
            "the expression at byte {at} has an invalid variable name (RFC 6570 §2.3: letters, \
             digits, '_', %XX, and single dots inside)"
        )));
    }
    Ok((name, modifier))
}

/// `varname = varchar *( ["."] varchar )`, `varchar = ALPHA / DIGIT / "_" /
/// pct-encoded` (RFC 6570 §2.3).
fn valid_varname(name: &str) -> bool {
    let b = name.as_bytes();
    if b.first() == Some(&b'.') || b.last() == Some(&b'.') || b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' if b[i - 1] == b'.' => return false,
            b'.' | b'_' => i += 1,
            c if c.is_ascii_alphanumeric() => i += 1,
            b'%' if b.len() > i + 2
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                i += 3
            }
            _ => return false,
        }
    }
    true
}

/// Whether RFC 6570 §2.1 allows the ASCII character `c` in a literal:
/// anything but controls, space, `"`, `'`, `%` (outside a triplet), `<`,
/// `>`, `\`, `^`, `` ` ``, `{`, `|` and `}`.
fn literal_ascii_allowed(c: u8) -> bool {
    matches!(
        c,
        b'!' | b'#'..=b'$' | b'&' | b'('..=b';' | b'=' | b'?'..=b'[' | b']' | b'_' | b'a'..=b'z' | b'~'
    )
}

/// Whether `c` is an RFC 3987 `ucschar` or `iprivate`, the non-ASCII
/// characters RFC 6570 §2.1 allows in literals.
fn literal_non_ascii_allowed(c: char) -> bool {
    let u = u32::from(c);
    match u {
        0xA0..=0xD7FF | 0xE000..=0xFDCF | 0xFDF0..=0xFFEF | 0xE1000..=0xEFFFD => true,
        0x1_0000..=0xD_FFFF | 0xF_0000..=0x10_FFFF => u & 0xFFFF <= 0xFFFD,
        _ => false,
    }
}

/// Appends the regular expression of a literal run (RFC 6570 §3.1) starting
/// at byte `at`.
fn literal_regex(run: &str, at: usize, out: &mut String) -> Result<(), SelectorError> {
    let bytes = run.as_bytes();
    let mut chars = run.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '%' {
            let triplet = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !triplet {
                return Err(refuse(format!(
                    "'%' at byte {} is not followed by two hexadecimal digits (RFC 6570 §2.1)",
                    at + i
                )));
            }
            out.push_str(&run[i..i + 3]);
            chars.next();
            chars.next();
        } else if c == '}' {
            return Err(refuse(format!(
                "'}}' at byte {} closes no expression",
                at + i
            )));
        } else if c.is_ascii() {
            if !literal_ascii_allowed(c as u8) {
                return Err(refuse(format!(
                    "character {c:?} at byte {} is not allowed in a URI template (RFC 6570 §2.1)",
                    at + i
                )));
            }
            out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
        } else {
            if !literal_non_ascii_allowed(c) {
                return Err(refuse(format!(
                    "character U+{:04X} at byte {} is not allowed in a URI template (RFC 6570 §2.1)",
                    u32::from(c),
                    at + i
                )));
            }
            // As in an IRI, or percent-encoded as RFC 6570 §3.1 expands it.
            let mut buf = [0; 4];
            out.push_str("(?:");
            out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            out.push('|');
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                out.push('%');
                push_hex_digit(b >> 4, out);
                push_hex_digit(b & 0xF, out);
            }
            out.push(')');
        }
    }
    Ok(())
}

/// A hexadecimal digit as a regular expression matching either case.
fn push_hex_digit(d: u8, out: &mut String) {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let upper = char::from(UPPER[usize::from(d)]);
    if d < 10 {
        out.push(upper);
    } else {
        out.push('[');
        out.push(upper);
        out.push(upper.to_ascii_lowercase());
        out.push(']');
    }
}

/// The regular expression of one variable's expansion, when defined (RFC
/// 6570 Appendix A), with its name for the named operators.
fn varspec_regex(op: Operator, name: &str, modifier: Modifier) -> String {
    let t = if op.reserved {
        VALUE_CHAR_R
    } else {
        VALUE_CHAR_U
    };
    let p = if op.reserved {
        PREFIX_CHAR_R
    } else {
        PREFIX_CHAR_U
    };
    let sep = regex::escape(op.sep);
    let name = regex::escape(name);
    // A string, or a list or associative array unexploded (members joined
    // by ',').
    let joined = format!("{t}*(?:,{t}*)*");
    match (op.named, modifier) {
        // A prefix applies to strings only (RFC 6570 §2.4.1).
        (false, Modifier::Prefix(n)) => format!("{p}{{0,{n}}}"),
        (false, Modifier::None) => joined,
        // A list's members, or an associative array's name=value pairs,
        // joined by the separator (a string is unaffected by `*`).
        (false, Modifier::Explode) => {
            format!("(?:{t}*(?:{sep}{t}*)*|{t}*={t}*(?:{sep}{t}*={t}*)*)")
        }
        (true, Modifier::Prefix(n)) if op.ifemp_equals => format!("{name}={p}{{0,{n}}}"),
        (true, Modifier::Prefix(n)) => format!("{name}(?:={p}{{1,{n}}})?"),
        (true, Modifier::None) if op.ifemp_equals => format!("{name}={joined}"),
        (true, Modifier::None) => format!("{name}(?:={joined})?"),
        // Exploded: each member as `name=value`, each pair as `key=value`
        // (an empty value as the operator writes it), joined by the
        // separator; the pairs' keys are arbitrary, so they cover the rest.
        (true, Modifier::Explode) => {
            let item = if op.ifemp_equals {
                format!("{t}*={t}*")
            } else {
                format!("{t}*(?:={t}*)?")
            };
            format!("{item}(?:{sep}{item})*")
        }
    }
}

/// The regular expression of one expression: every defined subset of its
/// variables, in order, after `first` and joined by `sep`; nothing when none
/// is defined (RFC 6570 §3.2.1).
fn expression_regex(op: Operator, vars: &[String], out: &mut String) {
    let sep = regex::escape(op.sep);
    if op.first == op.sep {
        // Every defined variable is preceded by the same string.
        for v in vars {
            out.push_str(&format!("(?:{sep}{v})?"));
        }
        return;
    }
    // The first defined variable follows `first`, the others `sep`.
    let first = regex::escape(op.first);
    out.push_str(&format!("(?:{first}(?:"));
    for (start, v) in vars.iter().enumerate() {
        if start > 0 {
            out.push('|');
        }
        out.push_str(v);
        for rest in &vars[start + 1..] {
            out.push_str(&format!("(?:{sep}{rest})?"));
        }
    }
    out.push_str("))?");
}

/// Compiles a URI template to an anchored regular expression matching the
/// template's expansions.
fn compile_template(s: &str) -> Result<Regex, SelectorError> {
    let mut source = String::from(r"\A(?:");
    let mut expressions = 0;
    let mut variables = 0;
    let mut pos = 0;
    while pos < s.len() {
        let rest = &s[pos..];
        let Some(after_brace) = rest.strip_prefix('{') else {
            let run = &rest[..rest.find('{').unwrap_or(rest.len())];
            literal_regex(run, pos, &mut source)?;
            pos += run.len();
            continue;
        };
        let body = match after_brace.find(['{', '}']) {
            None => {
                return Err(refuse(format!(
                    "the expression at byte {pos} is not closed by '}}'"
                )))
            }
            Some(end) if after_brace.as_bytes()[end] == b'{' => {
                return Err(refuse(format!(
                    "'{{' at byte {} inside the expression at byte {pos} (expressions do not nest)",
                    pos + 1 + end
                )))
            }
            Some(end) => &after_brace[..end],
        };
        expressions += 1;
        if expressions > MAX_EXPRESSIONS {
            return Err(refuse(format!(
                "more than {MAX_EXPRESSIONS} expressions in the URI template"
            )));
        }
        if body.is_empty() {
            return Err(refuse(format!("empty expression at byte {pos}")));
        }
        let (op, op_len) = parse_operator(body, pos)?;
        let mut vars = Vec::new();
        for spec in body[op_len..].split(',') {
            variables += 1;
            if variables > MAX_VARIABLES {
                return Err(refuse(format!(
                    "more than {MAX_VARIABLES} variables in the URI template"
                )));
            }
            let (name, modifier) = parse_varspec(spec, pos)?;
            vars.push(varspec_regex(op, name, modifier));
        }
        expression_regex(op, &vars, &mut source);
        if source.len() > MAX_REGEX_SOURCE_LEN {
            return Err(too_complex());
        }
        pos += 1 + body.len() + 1;
    }
    source.push_str(r")\z");
    bounded_regex(&source).build().map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => too_complex(),
        other => refuse(format!("the URI template could not be compiled: {other}")),
    })
}

fn too_complex() -> SelectorError {
    refuse("the URI template is too complex to match (too many variables or too long prefixes)")
}

/// A regular expression builder with Herald's limits.
fn bounded_regex(source: &str) -> RegexBuilder {
    let mut builder = RegexBuilder::new(source);
    builder
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT);
    builder
}

// ---------------------------------------------------------------------------
// URL patterns (WHATWG URL Pattern)
// ---------------------------------------------------------------------------

/// The regular expressions of a URL pattern's components, compiled by the
/// `regex` crate under Herald's size limits.
#[derive(Debug)]
struct BoundedRegex(Regex);

impl urlpattern::regexp::RegExp for BoundedRegex {
    fn syntax() -> urlpattern::RegexSyntax {
        urlpattern::RegexSyntax::Rust
    }

    fn parse(pattern: &str, flags: &str, _force_eval: bool) -> Result<Self, ()> {
        bounded_regex(pattern)
            .case_insensitive(flags.contains('i'))
            .build()
            .map(BoundedRegex)
            .map_err(|_| ())
    }

    fn matches<'a>(&self, text: &'a str) -> Option<Vec<Option<&'a str>>> {
        let captures = self.0.captures(text)?;
        Some(
            captures
                .iter()
                .skip(1)
                .map(|m| m.map(|m| m.as_str()))
                .collect(),
        )
    }

    fn pattern_string(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn template(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
    }

    fn pattern(s: &str) -> Selector {
        Selector::url_pattern(s).unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
    }

    #[track_caller]
    fn assert_selects(selector: &Selector, topic: &str) {
        assert!(
            selector.matches(topic),
            "{selector:?} should select {topic:?}"
        );
    }

    #[track_caller]
    fn assert_skips(selector: &Selector, topic: &str) {
        assert!(
            !selector.matches(topic),
            "{selector:?} should not select {topic:?}"
        );
    }

    #[track_caller]
    fn assert_refused(result: Result<Selector, SelectorError>, why: &str) {
        match result {
            Ok(selector) => panic!("{selector:?} accepted, expected a refusal mentioning {why:?}"),
            Err(e) => assert!(e.to_string().contains(why), "{e} does not mention {why:?}"),
        }
    }

    // --- Mercure specification, "Matcher Types" --------------------------

    #[test]
    fn the_wildcard_selects_every_topic_whatever_the_matcher_type() {
        let everything = [
            "https://example.com/foo",
            "bar",
            "",
            "*",
            "urn:uuid:1",
            "/rel",
        ];
        for selector in [
            Selector::parse("*").unwrap(),
            Selector::exact("*").unwrap(),
            Selector::url_pattern("*").unwrap(),
        ] {
            assert_eq!(selector.kind(), SelectorKind::Wildcard);
            assert_eq!(selector.as_str(), "*");
            for topic in everything {
                assert_selects(&selector, topic);
            }
        }
    }

    // --- "Exact Matching" --------------------------------------------------

    #[test]
    fn exact_matching_is_byte_for_byte() {
        let s = Selector::exact("https://example.com/foo").unwrap();
        assert_eq!(s.kind(), SelectorKind::Exact);
        assert_selects(&s, "https://example.com/foo");
        // Case-sensitive, no normalization, no resolution of relative values.
        assert_skips(&s, "https://EXAMPLE.com/foo");
        assert_skips(&s, "https://example.com/Foo");
        assert_skips(&s, "https://example.com/foo/");
        assert_skips(&s, "https://example.com:443/foo");
        assert_skips(&s, "/foo");
        let tilde = Selector::exact("https://example.com/~a").unwrap();
        assert_skips(&tilde, "https://example.com/%7Ea");
        let nfc = Selector::exact("caf\u{e9}").unwrap();
        assert_selects(&nfc, "caf\u{e9}");
        assert_skips(&nfc, "cafe\u{301}");
    }

    #[test]
    fn exact_selectors_give_braces_no_meaning() {
        let s = Selector::exact("https://example.com/{id}").unwrap();
        assert_eq!(s.kind(), SelectorKind::Exact);
        assert_selects(&s, "https://example.com/{id}");
        assert_skips(&s, "https://example.com/1");
        // Not a template, so not refused for being an invalid one.
        assert!(Selector::exact("{unclosed").unwrap().matches("{unclosed"));
    }

    #[test]
    fn the_subscription_example_of_the_current_draft() {
        // "Subscription": match=https://example.com/foo, match=bar,
        // matchURLPattern=https://example.com/bar/:id.
        let foo = Selector::exact("https://example.com/foo").unwrap();
        let bar = Selector::exact("bar").unwrap();
        let books = pattern("https://example.com/bar/:id");
        assert_selects(&foo, "https://example.com/foo");
        assert_selects(&bar, "bar");
        assert_skips(&bar, "https://example.com/bar");
        assert_selects(&books, "https://example.com/bar/1");
        assert_selects(&books, "https://example.com/bar/abc");
        assert_skips(&books, "https://example.com/bar/");
        assert_skips(&books, "https://example.com/bar/1/2");
        assert_skips(&books, "https://example.com/foo");
    }

    // --- "URL Pattern" -----------------------------------------------------

    #[test]
    fn url_patterns_compare_hosts_case_insensitively_and_the_rest_case_sensitively() {
        let books = pattern("https://example.com/books/:id");
        assert_eq!(books.kind(), SelectorKind::UrlPattern);
        assert_selects(&books, "https://example.com/books/1");
        assert_selects(&books, "https://EXAMPLE.com/books/1");
        assert_skips(&books, "https://example.com/Books/1");
        assert_skips(&books, "http://example.com/books/1");
        assert_skips(&books, "https://example.org/books/1");
    }

    #[test]
    fn the_authorization_example_routing_versus_grants() {
        // "Subscribers": the routing matcher selects every book, the token
        // grants books 1 and 7 only.
        let routing = pattern("https://example.com/books/:id");
        let grants = [
            Selector::exact("https://example.com/books/1").unwrap(),
            Selector::exact("https://example.com/books/7").unwrap(),
        ];
        for topic in ["https://example.com/books/1", "https://example.com/books/2"] {
            assert_selects(&routing, topic);
        }
        assert!(grants
            .iter()
            .any(|g| g.matches("https://example.com/books/1")));
        assert!(!grants
            .iter()
            .any(|g| g.matches("https://example.com/books/2")));
    }

    #[test]
    fn relative_url_patterns_match_subscription_event_topics() {
        // "Subscription Events" topics are relative; "URL Pattern" resolves
        // relative patterns and topics against the hub's URL.
        let events = pattern("/.well-known/mercure/subscriptions/:matchType/:match/:subscriber");
        let topic = "/.well-known/mercure/subscriptions/URLPattern/https%3A%2F%2Fexample.com%2F%3Aselector/urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6";
        assert_selects(&events, topic);
        assert_selects(
            &events,
            "/.well-known/mercure/subscriptions/Exact/https%3A%2F%2Fexample.com%2Fa-topic/urn%3Auuid%3A1e0cba4c-4bcd-44f0-ae8a-7b76f7ef1280",
        );
        assert_skips(&events, "/.well-known/mercure/subscriptions/Exact/a");
        assert_skips(
            &events,
            "https://example.com/.well-known/mercure/subscriptions/Exact/a/b",
        );

        let hub = "https://example.com/.well-known/mercure";
        let on_hub = Selector::url_pattern_with_base(
            "/.well-known/mercure/subscriptions/:matchType/:match/:subscriber",
            hub,
        )
        .unwrap();
        assert_selects(&on_hub, "/.well-known/mercure/subscriptions/Exact/a/b");
        assert_selects(
            &on_hub,
            "https://example.com/.well-known/mercure/subscriptions/Exact/a/b",
        );
        assert_skips(
            &on_hub,
            "https://example.org/.well-known/mercure/subscriptions/Exact/a/b",
        );
        assert_ne!(
            on_hub, events,
            "the base URL is part of a URL pattern selector"
        );
    }

    #[test]
    fn a_url_pattern_matcher_matches_its_own_string_as_payloads_compare_them() {
        // "Payloads": the subscribe detail `https://example.com/bar/:id`
        // matches the subscription `matchURLPattern=https://example.com/bar/:id`.
        assert_selects(
            &pattern("https://example.com/bar/:id"),
            "https://example.com/bar/:id",
        );
        assert_selects(&pattern("*"), "https://example.com/bar/:id");
    }

    #[test]
    fn invalid_url_patterns_and_bases_are_refused() {
        assert_refused(Selector::url_pattern("{unclosed"), "not a URL pattern");
        assert_refused(
            Selector::url_pattern("https://example.com/:id(\\d+"),
            "not a URL pattern",
        );
        assert_refused(
            Selector::url_pattern_with_base("/books/:id", "not a url"),
            "base URL",
        );
        assert_refused(
            Selector::url_pattern_with_base("/books/:id", "mailto:a@example.com"),
            "base URL",
        );
        // A group the size limit refuses.
        assert_refused(
            Selector::url_pattern("https://example.com/:id(a{1000}{1000})"),
            "regular expression",
        );
    }

    #[test]
    fn url_pattern_groups_match_in_linear_time() {
        let s = pattern("https://example.com/:id((?:a+)+b)");
        assert_selects(&s, "https://example.com/aaab");
        let long = format!("https://example.com/{}c", "a".repeat(100_000));
        assert_skips(&s, &long);
    }

    #[test]
    fn topics_that_are_not_urls_do_not_match_url_patterns() {
        let s = pattern("https://example.com/:id");
        assert_skips(&s, "http://[::1");
        assert_skips(&s, "https://exa mple.com/1");
    }

    // --- Drafts up to 0.x: `topic` and bare-string claims --------------------

    #[test]
    fn the_subscription_example_of_draft_04() {
        let foo = template("https://example.com/foo");
        assert_eq!(foo.kind(), SelectorKind::Exact);
        let bar = template("https://example.com/bar/{id}");
        assert_eq!(bar.kind(), SelectorKind::UriTemplate);
        assert_selects(&foo, "https://example.com/foo");
        assert_selects(&bar, "https://example.com/bar/1");
        assert_selects(&bar, "https://example.com/bar/a-b_c.d~e%20f");
        assert_skips(&bar, "https://example.com/bar/1/2");
        assert_skips(&bar, "https://example.com/bar");
        assert_skips(&bar, "https://example.com/foo/1");
    }

    #[test]
    fn the_reference_hub_selector_cases() {
        let s = template("https://example.com/{foo}/bar");
        assert_selects(&s, "https://example.com/foo/bar");
        assert_skips(&s, "https://example.com/foo/bar/baz");
        assert_selects(
            &template("https://example.com/{fistname}/{lastname}"),
            "https://example.com/kevin/dunglas",
        );
        assert_selects(&template("*"), "https://example.com/foo/bar");
        assert_selects(
            &template("https://example.com/foo/bar"),
            "https://example.com/foo/bar",
        );
        assert_selects(&template("foo"), "foo");
        assert_skips(&template("foo"), "bar");
        // The selector itself is compared before the template is matched.
        assert_selects(&s, "https://example.com/{foo}/bar");
    }

    #[test]
    fn the_conformance_suite_cases() {
        let random = "0f9a5c1e2d3b4a596877665544332211aabbccdd";
        // Raw string, one of several topics, one of several selectors, URI.
        assert_selects(&template(random), random);
        assert!(["foo", random].iter().any(|s| template(s).matches(random)));
        let uri = format!("https://example.net/foo/{random}");
        assert_selects(&template(&uri), &uri);
        // URI template.
        assert_selects(&template("https://example.net/foo/{random}"), &uri);
        // Non-matching raw string, URI and URI template.
        assert_skips(&template("another-name"), "will-not-match}");
        assert_skips(
            &template("https://example.net/foo/another-name"),
            "https://example.net/foo/will-not-match}",
        );
        assert_skips(
            &template("https://example.net/bar/{var}"),
            "https://example.net/foo/will-not-match}",
        );
        // A '}' is never part of a simple expansion.
        assert_skips(
            &template("https://example.net/foo/{var}"),
            "https://example.net/foo/will-not-match}",
        );
    }

    #[test]
    fn the_subscription_topics_of_the_0x_subscriptions_api() {
        let s = template("/.well-known/mercure/subscriptions/{topic}/{subscriber}");
        assert_selects(
            &s,
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fa-topic/urn%3Auuid%3A1e0cba4c-4bcd-44f0-ae8a-7b76f7ef1280",
        );
        assert_skips(
            &s,
            "/.well-known/mercure/subscriptions/https://example.com/a-topic/urn:uuid:1",
        );
        let all = template("/.well-known/mercure/subscriptions{/topic}{/subscriber}");
        assert_selects(&all, "/.well-known/mercure/subscriptions");
        assert_selects(&all, "/.well-known/mercure/subscriptions/a");
        assert_selects(&all, "/.well-known/mercure/subscriptions/a/b");
        assert_skips(&all, "/.well-known/mercure/subscriptions/a/b/c");
    }

    // --- RFC 6570 §3.2: every operator, with the RFC's own examples -----------
    //
    // The RFC's variables: count = (one, two, three), dom = (example, com),
    // dub = me/too, hello = Hello World!, half = 50%, var = value, who = fred,
    // base = http://example.com/home/, path = /foo/bar, list = (red, green,
    // blue), keys = [(semi, ;), (dot, .), (comma, ,)], v = 6, x = 1024,
    // y = 768, empty = "", empty_keys = [], undef undefined.

    #[track_caller]
    fn assert_expansions(cases: &[(&str, &str)]) {
        for &(t, expansion) in cases {
            assert_selects(&template(t), expansion);
        }
    }

    #[test]
    fn level_1_simple_string_expansion() {
        assert_expansions(&[
            ("{var}", "value"),
            ("{hello}", "Hello%20World%21"),
            ("{half}", "50%25"),
            ("O{empty}X", "OX"),
            ("O{undef}X", "OX"),
            ("{x,y}", "1024,768"),
            ("{x,hello,y}", "1024,Hello%20World%21,768"),
            ("?{x,empty}", "?1024,"),
            ("?{x,undef}", "?1024"),
            ("?{undef,y}", "?768"),
            ("{var:3}", "val"),
            ("{var:30}", "value"),
            ("{list}", "red,green,blue"),
            ("{list*}", "red,green,blue"),
            ("{keys}", "semi,%3B,dot,.,comma,%2C"),
            ("{keys*}", "semi=%3B,dot=.,comma=%2C"),
        ]);
        let s = template("{var}");
        for topic in [
            "a/b",
            "a?b",
            "a#b",
            "a b",
            "Hello World!",
            "caf\u{e9}",
            "%zz",
            "{var}x",
        ] {
            assert_skips(&s, topic);
        }
        assert_skips(&template("{var:3}"), "valu");
        assert_skips(&template("{x,y}"), "1024/768");
    }

    #[test]
    fn level_2_reserved_expansion() {
        assert_expansions(&[
            ("{+var}", "value"),
            ("{+hello}", "Hello%20World!"),
            ("{+half}", "50%25"),
            ("{base}index", "http%3A%2F%2Fexample.com%2Fhome%2Findex"),
            ("{+base}index", "http://example.com/home/index"),
            ("O{+empty}X", "OX"),
            ("O{+undef}X", "OX"),
            ("{+path}/here", "/foo/bar/here"),
            ("here?ref={+path}", "here?ref=/foo/bar"),
            ("up{+path}{var}/here", "up/foo/barvalue/here"),
            ("{+x,hello,y}", "1024,Hello%20World!,768"),
            ("{+path,x}/here", "/foo/bar,1024/here"),
            ("{+path:6}/here", "/foo/b/here"),
            ("{+list}", "red,green,blue"),
            ("{+list*}", "red,green,blue"),
            ("{+keys}", "semi,;,dot,.,comma,,"),
            ("{+keys*}", "semi=;,dot=.,comma=,"),
        ]);
        let s = template("https://example.com/{+path}");
        assert_selects(&s, "https://example.com/a/b/c?d=e#f");
        assert_skips(&s, "https://example.com/a b");
        assert_skips(&s, "https://example.com/caf\u{e9}");
        assert_skips(&s, "https://example.com/{x}");
        assert_skips(&template("{+path:6}/here"), "/foo/ba/here");
    }

    #[test]
    fn level_2_fragment_expansion() {
        assert_expansions(&[
            ("{#var}", "#value"),
            ("{#hello}", "#Hello%20World!"),
            ("{#half}", "#50%25"),
            ("foo{#empty}", "foo#"),
            ("foo{#undef}", "foo"),
            ("{#x,hello,y}", "#1024,Hello%20World!,768"),
            ("{#path,x}/here", "#/foo/bar,1024/here"),
            ("{#path:6}/here", "#/foo/b/here"),
            ("{#list}", "#red,green,blue"),
            ("{#list*}", "#red,green,blue"),
            ("{#keys}", "#semi,;,dot,.,comma,,"),
            ("{#keys*}", "#semi=;,dot=.,comma=,"),
        ]);
        let s = template("https://example.com/page{#section}");
        assert_selects(&s, "https://example.com/page");
        assert_selects(&s, "https://example.com/page#a/b");
        assert_skips(&s, "https://example.com/page/a");
        assert_skips(&s, "https://example.com/pagea");
    }

    #[test]
    fn level_3_and_4_label_expansion() {
        assert_expansions(&[
            ("{.who}", ".fred"),
            ("{.who,who}", ".fred.fred"),
            ("{.half,who}", ".50%25.fred"),
            ("www{.dom*}", "www.example.com"),
            ("X{.var}", "X.value"),
            ("X{.empty}", "X."),
            ("X{.undef}", "X"),
            ("X{.var:3}", "X.val"),
            ("X{.list}", "X.red,green,blue"),
            ("X{.list*}", "X.red.green.blue"),
            ("X{.keys}", "X.semi,%3B,dot,.,comma,%2C"),
            ("X{.keys*}", "X.semi=%3B.dot=..comma=%2C"),
            ("X{.empty_keys}", "X"),
            ("X{.empty_keys*}", "X"),
        ]);
        assert_skips(&template("X{.var}"), "Xvalue");
        assert_skips(&template("X{.var}"), "X.a/b");
        assert_skips(&template("X{.var:3}"), "X.valu");
    }

    #[test]
    fn level_3_and_4_path_segment_expansion() {
        assert_expansions(&[
            ("{/who}", "/fred"),
            ("{/who,who}", "/fred/fred"),
            ("{/half,who}", "/50%25/fred"),
            ("{/who,dub}", "/fred/me%2Ftoo"),
            ("{/var}", "/value"),
            ("{/var,empty}", "/value/"),
            ("{/var,undef}", "/value"),
            ("{/var,x}/here", "/value/1024/here"),
            ("{/var:1,var}", "/v/value"),
            ("{/list}", "/red,green,blue"),
            ("{/list*}", "/red/green/blue"),
            ("{/list*,path:4}", "/red/green/blue/%2Ffoo"),
            ("{/keys}", "/semi,%3B,dot,.,comma,%2C"),
            ("{/keys*}", "/semi=%3B/dot=./comma=%2C"),
        ]);
        let two = template("{/who,dub}");
        assert_selects(&two, "");
        assert_skips(&two, "/a/b/c");
        assert_skips(&two, "fred/me");
        assert_skips(&template("{/var:1,var}"), "/va/value");
    }

    #[test]
    fn level_3_and_4_path_style_parameter_expansion() {
        assert_expansions(&[
            ("{;who}", ";who=fred"),
            ("{;half}", ";half=50%25"),
            ("{;empty}", ";empty"),
            ("{;v,empty,who}", ";v=6;empty;who=fred"),
            ("{;v,bar,who}", ";v=6;who=fred"),
            ("{;x,y}", ";x=1024;y=768"),
            ("{;x,y,empty}", ";x=1024;y=768;empty"),
            ("{;x,y,undef}", ";x=1024;y=768"),
            ("{;hello:5}", ";hello=Hello"),
            ("{;list}", ";list=red,green,blue"),
            ("{;list*}", ";list=red;list=green;list=blue"),
            ("{;keys}", ";keys=semi,%3B,dot,.,comma,%2C"),
            ("{;keys*}", ";semi=%3B;dot=.;comma=%2C"),
        ]);
        let s = template("{;x,y}");
        assert_skips(&s, ";y=768;x=1024");
        assert_skips(&s, ";z=1");
        assert_skips(&s, ";x=1;x=2;x=3");
        assert_skips(&template("{;hello:5}"), ";hello=Hello%20");
    }

    #[test]
    fn level_3_and_4_form_style_query_expansion() {
        assert_expansions(&[
            ("{?who}", "?who=fred"),
            ("{?half}", "?half=50%25"),
            ("{?x,y}", "?x=1024&y=768"),
            ("{?x,y,empty}", "?x=1024&y=768&empty="),
            ("{?x,y,undef}", "?x=1024&y=768"),
            ("{?var:3}", "?var=val"),
            ("{?list}", "?list=red,green,blue"),
            ("{?list*}", "?list=red&list=green&list=blue"),
            ("{?keys}", "?keys=semi,%3B,dot,.,comma,%2C"),
            ("{?keys*}", "?semi=%3B&dot=.&comma=%2C"),
        ]);
        let s = template("https://example.com/books{?page,sort}");
        assert_selects(&s, "https://example.com/books");
        assert_selects(&s, "https://example.com/books?sort=title");
        assert_selects(&s, "https://example.com/books?page=2&sort=");
        assert_skips(&s, "https://example.com/books?sort=title&page=2");
        assert_skips(&s, "https://example.com/books?page");
        assert_skips(&s, "https://example.com/books&page=2");
        assert_skips(&s, "https://example.com/books?other=1");
        assert_skips(&s, "https://example.com/books?page=1/2");
    }

    #[test]
    fn level_3_and_4_form_style_query_continuation() {
        assert_expansions(&[
            ("{&who}", "&who=fred"),
            ("{&half}", "&half=50%25"),
            ("?fixed=yes{&x}", "?fixed=yes&x=1024"),
            ("{&x,y,empty}", "&x=1024&y=768&empty="),
            ("{&var:3}", "&var=val"),
            ("{&list}", "&list=red,green,blue"),
            ("{&list*}", "&list=red&list=green&list=blue"),
            ("{&keys}", "&keys=semi,%3B,dot,.,comma,%2C"),
            ("{&keys*}", "&semi=%3B&dot=.&comma=%2C"),
        ]);
        assert_skips(&template("?fixed=yes{&x}"), "?fixed=yes?x=1024");
        assert_skips(&template("?fixed=yes{&x}"), "?fixed=yes&y=1");
    }

    #[test]
    fn prefixes_count_characters_not_octets() {
        // "é" is one character, two percent-encoded octets.
        let s = template("{var:2}");
        assert_selects(&s, "%C3%A9t");
        assert_selects(&s, "%c3%a9%C3%A9");
        assert_skips(&s, "%C3%A9tt");
        let emoji = template("{var:1}");
        assert_selects(&emoji, "%F0%9F%98%80");
        assert_skips(&emoji, "%F0%9F%98%80%F0");
        assert_skips(&emoji, "%F0%9F%98%80a");
    }

    #[test]
    fn non_ascii_literals_match_as_iris_and_percent_encoded() {
        let s = template("https://example.com/caf\u{e9}/{id}");
        assert_selects(&s, "https://example.com/caf\u{e9}/1");
        assert_selects(&s, "https://example.com/caf%C3%A9/1");
        assert_selects(&s, "https://example.com/caf%c3%a9/1");
        assert_skips(&s, "https://example.com/cafe/1");
        // A pct-encoded literal is compared as written.
        let p = template("https://example.com/a%2Fb/{id}");
        assert_selects(&p, "https://example.com/a%2Fb/1");
        assert_skips(&p, "https://example.com/a/b/1");
    }

    #[test]
    fn templates_are_anchored_at_both_ends() {
        let s = template("https://example.com/books/{id}");
        for topic in ["https://example.com/books/1", "https://example.com/books/"] {
            assert_selects(&s, topic);
        }
        for topic in [
            "xhttps://example.com/books/1",
            "https://example.com/books/1/reviews",
            "https://example.com/books/1?x=1",
            "https://example.com/books/1#top",
            "prefix https://example.com/books/1",
            "https://example.com/books/1\n",
            "https://example.com/books",
        ] {
            assert_skips(&s, topic);
        }
        let middle = template("{a}/middle/{b}");
        assert_selects(&middle, "x/middle/y");
        assert_skips(&middle, "x/y/middle/z");
    }

    // --- Hostile and invalid selectors ----------------------------------------

    #[test]
    fn long_selectors_are_refused_by_every_constructor() {
        let fits = format!("https://example.com/{}", "a".repeat(MAX_SELECTOR_LEN - 20));
        assert_eq!(fits.len(), MAX_SELECTOR_LEN);
        assert!(Selector::parse(&fits).is_ok());
        let long = format!("{fits}a");
        assert_refused(Selector::parse(&long), "over the limit of 1024");
        assert_refused(Selector::exact(&long), "over the limit of 1024");
        assert_refused(Selector::url_pattern(&long), "over the limit of 1024");
        assert_refused(Selector::parse(&"{a}".repeat(100_000)), "over the limit");
    }

    #[test]
    fn control_characters_are_refused() {
        for s in [
            "foo\u{0}bar",
            "foo\nbar",
            "\u{7f}",
            "a\u{85}b",
            "\u{9f}",
            "{a}\t",
        ] {
            assert_refused(Selector::parse(s), "control character");
            assert_refused(Selector::exact(s), "control character");
            assert_refused(Selector::url_pattern(s), "control character");
        }
    }

    #[test]
    fn expression_and_variable_counts_are_bounded() {
        assert!(Selector::parse(&"{a}".repeat(MAX_EXPRESSIONS)).is_ok());
        assert_refused(
            Selector::parse(&"{a}".repeat(MAX_EXPRESSIONS + 1)),
            "more than 64 expressions",
        );
        let names: Vec<String> = (0..=MAX_VARIABLES).map(|i| format!("v{i}")).collect();
        assert_refused(
            Selector::parse(&format!("{{/{}}}", names.join(","))),
            "more than 64 variables",
        );
        assert!(Selector::parse(&format!("{{/{}}}", names[..MAX_VARIABLES].join(","))).is_ok());
        // The query operator's subsets grow quadratically: still bounded.
        let query = Selector::parse(&format!("{{?{}}}", names[..MAX_VARIABLES].join(",")));
        if let Ok(s) = query {
            assert_selects(&s, "?v0=1&v63=2");
        }
    }

    #[test]
    fn oversized_prefixes_are_refused_as_too_complex() {
        assert!(Selector::parse("{var:100}").is_ok());
        assert_refused(Selector::parse("{var:9999}"), "too complex");
        assert_refused(Selector::parse(&"{+v:999}".repeat(20)), "too complex");
    }

    #[test]
    fn malformed_templates_are_refused() {
        for (s, why) in [
            ("{", "not closed"),
            ("https://example.com/{id", "not closed"),
            ("{a}{", "not closed"),
            ("{a{b}}", "do not nest"),
            ("{{a}}", "do not nest"),
            ("{a}}", "closes no expression"),
            ("a}{b}", "closes no expression"),
            ("{}", "empty expression"),
            ("{=a}", "reserved"),
            ("{,a}", "reserved"),
            ("{!a}", "reserved"),
            ("{@a}", "reserved"),
            ("{|a}", "reserved"),
            ("{a,}", "variable name"),
            ("{+}", "variable name"),
            ("{a b}", "variable name"),
            ("{.}", "variable name"),
            ("{..a}", "variable name"),
            ("{a..b}", "variable name"),
            ("{a.}", "variable name"),
            ("{a%2}", "variable name"),
            ("{a-b}", "variable name"),
            ("{a**}", "variable name"),
            ("{a*:3}", "variable name"),
            ("{a:0}", "prefix"),
            ("{a:01}", "prefix"),
            ("{a:10000}", "prefix"),
            ("{a:}", "prefix"),
            ("{a:1x}", "prefix"),
            ("{a:-1}", "prefix"),
            ("%zz{a}", "hexadecimal"),
            ("{a}%", "hexadecimal"),
            ("{a}%4", "hexadecimal"),
            ("a b{c}", "not allowed"),
            ("a|{b}", "not allowed"),
            ("\"{a}\"", "not allowed"),
            ("it's/{a}", "not allowed"),
            ("<{a}>", "not allowed"),
            ("{a}\u{fffe}", "not allowed"),
        ] {
            assert_refused(Selector::parse(s), why);
        }
        // Valid names and modifiers.
        for s in [
            "{a.b}",
            "{a%20b}",
            "{_1}",
            "{A9:9999}",
            "{a*}",
            "{x,y*,z:3}",
        ] {
            if let Err(e) = Selector::parse(s) {
                assert!(!e.to_string().contains("variable name"), "{s:?}: {e}");
            }
        }
    }

    #[test]
    fn hostile_templates_match_long_topics_in_linear_time() {
        let s = template(&"{+a}".repeat(MAX_EXPRESSIONS));
        let long = "a".repeat(200_000);
        assert_selects(&s, &long);
        assert_skips(&s, &format!("{long} "));
        let q = template(&"{?a,b,c,d}".repeat(16));
        assert_skips(&q, &"?a=".repeat(50_000));
    }

    // --- Identity, equality, display -----------------------------------------

    #[test]
    fn equality_follows_kind_string_and_base() {
        assert_eq!(
            Selector::parse("foo").unwrap(),
            Selector::exact("foo").unwrap()
        );
        assert_ne!(
            Selector::parse("{a}").unwrap(),
            Selector::exact("{a}").unwrap()
        );
        assert_ne!(
            Selector::exact("a").unwrap(),
            Selector::url_pattern("a").unwrap()
        );
        assert_eq!(template("{a}"), template("{a}").clone());
        assert_eq!(pattern("/a/:b"), pattern("/a/:b"));
        assert_eq!(template("{a}").to_string(), "{a}");
        let debug = format!("{:?}", pattern("/a/:b"));
        assert!(
            debug.contains("UrlPattern")
                && debug.contains("/a/:b")
                && debug.contains(DEFAULT_BASE_URL)
        );
        // Deduplicating subscriptions ("Subscription Events") keys on the
        // kind and the string.
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert((template("{a}").kind(), template("{a}").as_str().to_owned())));
        assert!(!seen.insert((SelectorKind::UriTemplate, "{a}".to_owned())));
    }

    // --- Properties -----------------------------------------------------------

    /// A variable's value for the test expander (RFC 6570 §2.3).
    #[derive(Clone, Debug)]
    enum Value {
        Undefined,
        Str(String),
        List(Vec<String>),
        Pairs(Vec<(String, String)>),
    }

    /// Percent-encodes `s` for an expansion (RFC 6570 §3.2.1).
    fn encode(s: &str, reserved: bool, out: &mut String) {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if reserved
                && c == b'%'
                && b.len() > i + 2
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit()
            {
                out.push_str(&s[i..i + 3]);
                i += 3;
                continue;
            }
            let unreserved = c.is_ascii_alphanumeric() || b"-._~".contains(&c);
            if unreserved || (reserved && b":/?#[]@!$&'()*+,;=".contains(&c)) {
                out.push(char::from(c));
            } else {
                out.push_str(&format!("%{c:02X}"));
            }
            i += 1;
        }
    }

    /// Expands a template per RFC 6570 Appendix A; `encode_literals` picks
    /// §3.1's percent-encoding of non-ASCII literals over the IRI form.
    fn expand(template: &str, value: &dyn Fn(&str) -> Value, encode_literals: bool) -> String {
        let mut out = String::new();
        let mut rest = template;
        while !rest.is_empty() {
            let Some(start) = rest.find('{') else {
                push_literal(rest, encode_literals, &mut out);
                break;
            };
            push_literal(&rest[..start], encode_literals, &mut out);
            let end = start + rest[start..].find('}').unwrap();
            let body = &rest[start + 1..end];
            rest = &rest[end + 1..];
            let (op, op_len) = parse_operator(body, 0).unwrap();
            let mut first = true;
            for spec in body[op_len..].split(',') {
                let (name, modifier) = parse_varspec(spec, 0).unwrap();
                let v = value(name);
                match &v {
                    Value::Undefined => continue,
                    Value::List(l) if l.is_empty() => continue,
                    Value::Pairs(p) if p.is_empty() => continue,
                    _ => {}
                }
                out.push_str(if first { op.first } else { op.sep });
                first = false;
                let explode = matches!(modifier, Modifier::Explode);
                match v {
                    Value::Undefined => unreachable!(),
                    Value::Str(s) => {
                        if op.named {
                            out.push_str(name);
                            if s.is_empty() {
                                if op.ifemp_equals {
                                    out.push('=');
                                }
                                continue;
                            }
                            out.push('=');
                        }
                        let s: String = match modifier {
                            Modifier::Prefix(n) => s.chars().take(usize::from(n)).collect(),
                            _ => s,
                        };
                        encode(&s, op.reserved, &mut out);
                    }
                    Value::List(items) if explode => {
                        for (k, item) in items.iter().enumerate() {
                            if k > 0 {
                                out.push_str(op.sep);
                            }
                            if op.named {
                                out.push_str(name);
                                if item.is_empty() {
                                    if op.ifemp_equals {
                                        out.push('=');
                                    }
                                    continue;
                                }
                                out.push('=');
                            }
                            encode(item, op.reserved, &mut out);
                        }
                    }
                    Value::List(items) => {
                        if op.named {
                            out.push_str(name);
                            out.push('=');
                        }
                        for (k, item) in items.iter().enumerate() {
                            if k > 0 {
                                out.push(',');
                            }
                            encode(item, op.reserved, &mut out);
                        }
                    }
                    Value::Pairs(pairs) if explode => {
                        for (k, (key, val)) in pairs.iter().enumerate() {
                            if k > 0 {
                                out.push_str(op.sep);
                            }
                            encode(key, op.reserved, &mut out);
                            if op.named && val.is_empty() {
                                if op.ifemp_equals {
                                    out.push('=');
                                }
                                continue;
                            }
                            out.push('=');
                            encode(val, op.reserved, &mut out);
                        }
                    }
                    Value::Pairs(pairs) => {
                        if op.named {
                            out.push_str(name);
                            out.push('=');
                        }
                        for (k, (key, val)) in pairs.iter().enumerate() {
                            if k > 0 {
                                out.push(',');
                            }
                            encode(key, op.reserved, &mut out);
                            out.push(',');
                            encode(val, op.reserved, &mut out);
                        }
                    }
                }
            }
        }
        out
    }

    fn push_literal(literal: &str, encode_literals: bool, out: &mut String) {
        for c in literal.chars() {
            if c.is_ascii() || !encode_literals {
                out.push(c);
            } else {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }

    fn value_string() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 %/,;=?&.\u{e9}\u{65e5}\u{1f600}_~:#@!$'()*+\\[\\]-]{0,8}"
    }

    fn value_for(modifier: Modifier) -> BoxedStrategy<Value> {
        let string = value_string().prop_map(Value::Str);
        match modifier {
            Modifier::Prefix(_) => prop_oneof![Just(Value::Undefined), string].boxed(),
            _ => prop_oneof![
                Just(Value::Undefined),
                string,
                prop::collection::vec(value_string(), 0..4).prop_map(Value::List),
                prop::collection::vec((value_string(), value_string()), 0..4)
                    .prop_map(Value::Pairs),
            ]
            .boxed(),
        }
    }

    fn modifier() -> impl Strategy<Value = Modifier> {
        prop_oneof![
            Just(Modifier::None),
            Just(Modifier::Explode),
            (1u16..12).prop_map(Modifier::Prefix),
        ]
    }

    /// A template (with at least one expression, every variable named once)
    /// and a value for each of its variables.
    fn template_and_values() -> impl Strategy<Value = (String, Vec<Value>)> {
        let literal = prop::sample::select(vec![
            "",
            "https://example.com/",
            "/",
            "books",
            "caf\u{e9}",
            "%2F",
            "-",
            "?q=1",
            ":",
            "\u{65e5}\u{672c}",
        ]);
        let op = prop::sample::select(vec!["", "+", "#", ".", "/", ";", "?", "&"]);
        let expression = (op, prop::collection::vec(modifier(), 1..4));
        prop::collection::vec((literal, expression), 1..5).prop_flat_map(|parts| {
            let mut template = String::new();
            let mut values = Vec::new();
            let mut n = 0;
            for (literal, (op, modifiers)) in parts {
                template.push_str(literal);
                template.push('{');
                template.push_str(op);
                for (k, modifier) in modifiers.into_iter().enumerate() {
                    if k > 0 {
                        template.push(',');
                    }
                    template.push_str(&format!("v{n}"));
                    n += 1;
                    match modifier {
                        Modifier::None => {}
                        Modifier::Explode => template.push('*'),
                        Modifier::Prefix(p) => template.push_str(&format!(":{p}")),
                    }
                    values.push(value_for(modifier));
                }
                template.push('}');
            }
            (Just(template), values)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_rfc_6570_expansion_is_selected((t, values) in template_and_values(), encode_literals in any::<bool>()) {
            let selector = Selector::parse(&t).map_err(|e| TestCaseError::fail(format!("{t:?}: {e}")))?;
            prop_assert_eq!(selector.kind(), SelectorKind::UriTemplate);
            let value = |name: &str| values[name[1..].parse::<usize>().unwrap()].clone();
            let expansion = expand(&t, &value, encode_literals);
            prop_assert!(selector.matches(&expansion), "{:?} should select {:?} ({:?})", t, expansion, values);
        }

        #[test]
        fn an_exact_topic_always_matches_itself(s in "\\PC{0,64}") {
            prop_assert!(Selector::exact(&s).unwrap().matches(&s));
            if let Ok(selector) = Selector::parse(&s) {
                prop_assert!(selector.matches(&s));
            }
        }

        #[test]
        fn a_template_without_expressions_matches_only_itself(
            s in "[^{\\p{Cc}]{0,48}",
            other in "[^{\\p{Cc}]{0,48}",
            same in any::<bool>(),
        ) {
            prop_assume!(s != "*");
            let topic = if same { s.clone() } else { other };
            let selector = Selector::parse(&s).unwrap();
            prop_assert_eq!(selector.kind(), SelectorKind::Exact);
            prop_assert_eq!(selector.matches(&topic), s == topic);
            let (longer, earlier) = (format!("{s}x"), format!("x{s}"));
            prop_assert!(!selector.matches(&longer));
            prop_assert!(!selector.matches(&earlier));
        }

        #[test]
        fn no_input_makes_the_parsers_panic(s in "[{}a-z0-9:*+#./;?&=,%!@|()\\\\ \u{e9}-]{0,96}") {
            for selector in [Selector::parse(&s), Selector::exact(&s), Selector::url_pattern(&s)].into_iter().flatten() {
                let _ = selector.matches("https://example.com/a/b?c=d#e");
                let _ = selector.matches(&s);
            }
        }
    }
}
