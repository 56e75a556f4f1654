//! The on-disk format, as pure functions over bytes: the marker file, keys
//! and values. Nothing here touches a file.
//!
//! - The marker file `HERALD-STORE` (text) names the format version and the
//!   store's epoch. It is read before the store is opened, so an
//!   incompatible data dir is refused before anything touches it.
//! - `events` keyspace: key = topic id (u64, big-endian) ++ seq (u64,
//!   big-endian), so one topic's events are contiguous and in order; value =
//!   [`encode_event`].
//! - `topics` keyspace: key = `t` + topic name; value = [`TopicMeta`]: the
//!   topic's id, epoch, head and first retained sequence. It is written in the
//!   same atomic batch as the events it describes. Beside them, under the key
//!   [`STORE_RECORD_KEY`], the store record: the format version and epoch
//!   again, so that a marker whose store files were lost or swapped is noticed;
//!   the commit counter ([`COMMIT_COUNTER_KEY`]) and the topic epoch
//!   ([`TOPIC_EPOCH_KEY`]).
//! - `idempotency` keyspace: records of publishes with an `id` (key
//!   [`idempotency_key`], value [`encode_idempotency_record`]), written in the
//!   batch of their event, and their expiry index ([`idempotency_expiry_key`]).
//! - The high-water file `HERALD-HIGH-WATER`: the commit counter, fsynced
//!   after each commit, so that a journal that lost acknowledged commits is
//!   noticed on open.
//!
//! Every value starts with a version byte; a decoder refuses anything it does
//! not fully understand rather than guessing.

use herald_core::Data;

/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The marker file's name, in the data dir.
pub const MARKER_FILE: &str = "HERALD-STORE";

/// The key of the store record in the `topics` keyspace (no topic record
/// has it: theirs start with `t`).
pub const STORE_RECORD_KEY: &[u8] = b"store";

const MARKER_HEADER: &str = "herald embedded store";
const VALUE_VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are shorter (or, for fixed-size values, other) than the
    /// layout needs.
    #[error("{what} is {len} bytes, too short")]
    Truncated {
        /// What was decoded, such as "a topic record".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The leading version byte is not one this build reads.
    #[error("{what} has record version {found}; this build reads version {VALUE_VERSION}")]
    Version {
        /// What was decoded.
        what: &'static str,
        /// The version byte found.
        found: u8,
    },
    /// The layout is right but a field's value is not.
    #[error("{what}: {detail}")]
    Invalid {
        /// What was decoded.
        what: &'static str,
        /// Which field is wrong and how.
        detail: &'static str,
    },
}

/// What the marker file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The format version of the store ([`FORMAT_VERSION`] for this build).
    pub format: u32,
    /// The store's epoch: positions it hands out carry it, and a store that
    /// lost its history starts a new one.
    pub epoch: u64,
}

/// Why a marker file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    /// The first line is not the marker header.
    #[error("it is not a Herald store marker")]
    NotAMarker,
    /// A line (given) is not `key = value`, or its `format` is not a decimal
    /// number or its `epoch` not non-zero hexadecimal.
    #[error("its line {0:?} is malformed")]
    Malformed(String),
    /// A required line (named) is absent.
    #[error("it has no {0} line")]
    Missing(&'static str),
}

/// The marker file's text.
pub fn encode_marker(m: Marker) -> String {
    format!(
        "{MARKER_HEADER}\nformat = {}\nepoch = {:x}\n",
        m.format, m.epoch
    )
}

/// Parses the marker file's text.
pub fn decode_marker(text: &str) -> Result<Marker, MarkerError> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(MARKER_HEADER) {
        return Err(MarkerError::NotAMarker);
    }
    let (mut format, mut epoch) = (None, None);
    for line in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(MarkerError::Malformed(line.into()));
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "format" => {
                format = Some(
                    v.parse::<u32>()
                        .map_err(|_| MarkerError::Malformed(line.into()))?,
                )
            }
            "epoch" => {
                epoch = Some(
                    u64::from_str_radix(v, 16)
                        .ok()
                        .filter(|e| *e != 0)
                        .ok_or_else(|| MarkerError::Malformed(line.into()))?,
                )
            }
            // Later formats may add lines; the format number decides
            // whether this build may read them.
            _ => {}
        }
    }
    Ok(Marker {
        format: format.ok_or(MarkerError::Missing("format"))?,
        epoch: epoch.ok_or(MarkerError::Missing("epoch"))?,
    })
}

/// The store record: the same facts as the marker, and the epoch before
/// the current one (0: none). A recovery that starts a new epoch writes the
/// record first and the marker after it, so a marker naming the previous
/// epoch is a marker whose rewrite was interrupted, not a swapped store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreRecord {
    /// The format version and epoch, as the marker should say.
    pub marker: Marker,
    /// The epoch before the current one (0: none).
    pub previous_epoch: u64,
}

/// `[format u32][epoch u64]`, then `[previous epoch u64]` if there is one
/// (a store that never changed epoch keeps the 12-byte record earlier
/// builds read), little-endian.
pub fn encode_store_record(r: StoreRecord) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&r.marker.format.to_le_bytes());
    b.extend_from_slice(&r.marker.epoch.to_le_bytes());
    if r.previous_epoch != 0 {
        b.extend_from_slice(&r.previous_epoch.to_le_bytes());
    }
    b
}

/// Reads [`encode_store_record`]'s 12 or 20 bytes; any other length is
/// [`DecodeError::Truncated`].
pub fn decode_store_record(b: &[u8]) -> Result<StoreRecord, DecodeError> {
    let what = "the store record";
    if b.len() != 12 && b.len() != 20 {
        return Err(DecodeError::Truncated { what, len: b.len() });
    }
    Ok(StoreRecord {
        marker: Marker {
            format: u32::from_le_bytes(arr(&b[..4])),
            epoch: u64::from_le_bytes(arr(&b[4..12])),
        },
        previous_epoch: if b.len() == 20 {
            u64::from_le_bytes(arr(&b[12..]))
        } else {
            0
        },
    })
}

/// The key, in the `topics` keyspace, of the commit counter: how many
/// commits the store holds. It is written in every commit's batch.
pub const COMMIT_COUNTER_KEY: &[u8] = b"commits";

/// The key, in the `topics` keyspace (not starting with `t`, like topic
/// records), of the topic epoch: the epoch new
/// topics get, and reads of a topic the store does not hold report (absent:
/// the store's epoch). It changes in every commit that drops a topic, so a
/// cursor of a dropped topic never resumes silently into a later topic of
/// the same name: it gets an `epoch_changed` gap.
pub const TOPIC_EPOCH_KEY: &[u8] = b"new-topic-epoch";

/// A counter or epoch value: `u64`, little-endian.
pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// Reads [`encode_u64`]'s 8 bytes; `what` names the value in the error.
pub fn decode_u64(what: &'static str, b: &[u8]) -> Result<u64, DecodeError> {
    if b.len() != 8 {
        return Err(DecodeError::Truncated { what, len: b.len() });
    }
    Ok(u64::from_le_bytes(arr(b)))
}

/// The high-water file's name, in the data dir: the number of commits
/// acknowledged, fsynced after each commit. A store that opens with fewer
/// commits than it says lost acknowledged writes.
pub const HIGH_WATER_FILE: &str = "HERALD-HIGH-WATER";

/// `[commits u64][!commits u64]`, little-endian: the complement tells a
/// complete file from a damaged one.
pub fn encode_high_water(commits: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&commits.to_le_bytes());
    b[8..].copy_from_slice(&(!commits).to_le_bytes());
    b
}

/// Reads [`encode_high_water`]'s 16 bytes; a complement that does not match
/// is [`DecodeError::Invalid`].
pub fn decode_high_water(b: &[u8]) -> Result<u64, DecodeError> {
    let what = "the high-water file";
    if b.len() != 16 {
        return Err(DecodeError::Truncated { what, len: b.len() });
    }
    let (v, check) = (
        u64::from_le_bytes(arr(&b[..8])),
        u64::from_le_bytes(arr(&b[8..])),
    );
    if check != !v {
        return Err(DecodeError::Invalid {
            what,
            detail: "its check value does not match",
        });
    }
    Ok(v)
}

/// An idempotency record's key in the `idempotency` keyspace: `r` + topic
/// + NUL + id.
pub fn idempotency_key(topic: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + topic.len() + id.len());
    k.push(b'r');
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The expiry index entry of an idempotency record: `x` + published at
/// (u64, big-endian, so entries sort oldest first) + the record's key.
pub fn idempotency_expiry_key(at_ms: u64, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + record_key.len());
    k.push(b'x');
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(record_key);
    k
}

/// Splits an expiry index key into (published at, record key).
pub fn decode_idempotency_expiry_key(k: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    if k.len() < 10 || k[0] != b'x' {
        return Err(DecodeError::Truncated {
            what: "an idempotency expiry key",
            len: k.len(),
        });
    }
    Ok((u64::from_be_bytes(arr(&k[1..9])), &k[9..]))
}

/// What an idempotency record says: the event's position and publish time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The epoch of the event's position.
    pub epoch: u64,
    /// The sequence number of the event's position.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the event was accepted.
    pub published_at_ms: u64,
}

/// `[version][epoch u64][seq u64][published at u64]`, little-endian.
pub fn encode_idempotency_record(r: &IdempotencyRecord) -> [u8; 25] {
    let mut b = [0u8; 25];
    b[0] = VALUE_VERSION;
    b[1..9].copy_from_slice(&r.epoch.to_le_bytes());
    b[9..17].copy_from_slice(&r.seq.to_le_bytes());
    b[17..25].copy_from_slice(&r.published_at_ms.to_le_bytes());
    b
}

/// Reads [`encode_idempotency_record`]'s 25 bytes, refusing another length
/// or version byte.
pub fn decode_idempotency_record(b: &[u8]) -> Result<IdempotencyRecord, DecodeError> {
    let what = "an idempotency record";
    if b.len() != 25 {
        return Err(DecodeError::Truncated { what, len: b.len() });
    }
    if b[0] != VALUE_VERSION {
        return Err(DecodeError::Version { what, found: b[0] });
    }
    Ok(IdempotencyRecord {
        epoch: u64::from_le_bytes(arr(&b[1..9])),
        seq: u64::from_le_bytes(arr(&b[9..17])),
        published_at_ms: u64::from_le_bytes(arr(&b[17..25])),
    })
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// The key of event `seq` of topic `id`.
pub fn event_key(id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Splits an event key into (topic id, seq).
pub fn decode_event_key(k: &[u8]) -> Result<(u64, u64), DecodeError> {
    if k.len() != 16 {
        return Err(DecodeError::Truncated {
            what: "an event key",
            len: k.len(),
        });
    }
    Ok((
        u64::from_be_bytes(arr(&k[..8])),
        u64::from_be_bytes(arr(&k[8..])),
    ))
}

/// An event as stored: everything but its topic and position, which the
/// key and the topic record hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Milliseconds since the Unix epoch when the event was accepted.
    pub published_at_ms: u64,
    /// The event name; `None` for the default `message`.
    pub name: Option<Box<str>>,
    /// The payload, text or JSON as published.
    pub data: Data,
}

const KIND_TEXT: u8 = 0;
const KIND_JSON: u8 = 1;

/// `[version][published_at u64][kind u8][name_len u32][name][data]`,
/// little-endian; `name_len` is `u32::MAX` for no name.
pub fn encode_event(published_at_ms: u64, name: Option<&str>, data: &Data) -> Vec<u8> {
    let (kind, text) = match data {
        Data::Text(s) => (KIND_TEXT, s),
        Data::Json(s) => (KIND_JSON, s),
    };
    let name_bytes = name.map_or(&[][..], str::as_bytes);
    let mut v = Vec::with_capacity(14 + name_bytes.len() + text.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&published_at_ms.to_le_bytes());
    v.push(kind);
    let name_len = match name {
        None => u32::MAX,
        Some(n) => u32::try_from(n.len()).unwrap_or(u32::MAX - 1),
    };
    v.extend_from_slice(&name_len.to_le_bytes());
    v.extend_from_slice(name_bytes);
    v.extend_from_slice(text.as_bytes());
    v
}

/// Reads [`encode_event`]'s layout, refusing a short value, another version
/// byte, a name or data that is not UTF-8, or an unknown data kind.
pub fn decode_event(b: &[u8]) -> Result<StoredEvent, DecodeError> {
    let what = "a stored event";
    if b.len() < 14 {
        return Err(DecodeError::Truncated { what, len: b.len() });
    }
    if b[0] != VALUE_VERSION {
        return Err(DecodeError::Version { what, found: b[0] });
    }
    let published_at_ms = u64::from_le_bytes(arr(&b[1..9]));
    let kind = b[9];
    let name_len = u32::from_le_bytes(arr(&b[10..14]));
    let rest = &b[14..];
    let (name, data) = if name_len == u32::MAX {
        (None, rest)
    } else {
        let n = name_len as usize;
        if rest.len() < n {
            return Err(DecodeError::Truncated { what, len: b.len() });
        }
        let name = std::str::from_utf8(&rest[..n]).map_err(|_| DecodeError::Invalid {
            what,
            detail: "its name is not UTF-8",
        })?;
        (Some(name.into()), &rest[n..])
    };
    let text: Box<str> = std::str::from_utf8(data)
        .map_err(|_| DecodeError::Invalid {
            what,
            detail: "its data is not UTF-8",
        })?
        .into();
    let data = match kind {
        KIND_TEXT => Data::Text(text),
        KIND_JSON => Data::Json(text),
        _ => {
            return Err(DecodeError::Invalid {
                what,
                detail: "unknown data kind",
            })
        }
    };
    Ok(StoredEvent {
        published_at_ms,
        name,
        data,
    })
}

/// A topic's record in the `topics` keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMeta {
    /// The short id its events are keyed by.
    pub id: u64,
    /// The epoch of the topic's positions.
    pub epoch: u64,
    /// Sequence of its latest event (0: none yet).
    pub head: u64,
    /// Sequence of its oldest retained event (`head + 1`: none retained).
    pub first: u64,
}

/// `[version][id u64][epoch u64][head u64][first u64]`, little-endian.
pub fn encode_topic_meta(m: &TopicMeta) -> [u8; 33] {
    let mut b = [0u8; 33];
    b[0] = VALUE_VERSION;
    b[1..9].copy_from_slice(&m.id.to_le_bytes());
    b[9..17].copy_from_slice(&m.epoch.to_le_bytes());
    b[17..25].copy_from_slice(&m.head.to_le_bytes());
    b[25..33].copy_from_slice(&m.first.to_le_bytes());
    b
}

/// Reads [`encode_topic_meta`]'s 33 bytes, refusing another length or
/// version byte and positions that cannot be (epoch 0, first 0, or first
/// beyond `head + 1`).
pub fn decode_topic_meta(b: &[u8]) -> Result<TopicMeta, DecodeError> {
    let what = "a topic record";
    if b.len() != 33 {
        return Err(DecodeError::Truncated { what, len: b.len() });
    }
    if b[0] != VALUE_VERSION {
        return Err(DecodeError::Version { what, found: b[0] });
    }
    let m = TopicMeta {
        id: u64::from_le_bytes(arr(&b[1..9])),
        epoch: u64::from_le_bytes(arr(&b[9..17])),
        head: u64::from_le_bytes(arr(&b[17..25])),
        first: u64::from_le_bytes(arr(&b[25..33])),
    };
    if m.epoch == 0 || m.first == 0 || m.first > m.head.saturating_add(1) {
        return Err(DecodeError::Invalid {
            what,
            detail: "its positions are inconsistent",
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests;
