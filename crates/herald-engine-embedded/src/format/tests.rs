//! Round trips and refusals of every on-disk value, property-tested.

use super::*;
use proptest::prelude::*;

#[test]
fn marker_round_trip_and_refusals() {
    let m = Marker {
        format: 1,
        epoch: 0xabc,
    };
    assert_eq!(decode_marker(&encode_marker(m)), Ok(m));
    assert_eq!(decode_marker("hello"), Err(MarkerError::NotAMarker));
    assert_eq!(
        decode_marker("herald embedded store\nepoch = 1\n"),
        Err(MarkerError::Missing("format"))
    );
    assert!(matches!(
        decode_marker("herald embedded store\nformat = x\nepoch = 1\n"),
        Err(MarkerError::Malformed(_))
    ));
    assert!(matches!(
        decode_marker("herald embedded store\nformat = 1\nepoch = 0\n"),
        Err(MarkerError::Malformed(_))
    ));
}

#[test]
fn event_keys_sort_by_topic_then_seq() {
    assert!(event_key(1, 2) < event_key(1, 3));
    assert!(event_key(1, u64::MAX) < event_key(2, 0));
    assert!(event_key(1, 255) < event_key(1, 256));
    assert_eq!(decode_event_key(&event_key(7, 9)), Ok((7, 9)));
}

#[test]
fn decoders_refuse_damage() {
    let v = encode_event(5, Some("n"), &Data::Text("x".into()));
    assert!(decode_event(&v[..10]).is_err());
    let mut bad = v.clone();
    bad[0] = 9;
    assert!(matches!(
        decode_event(&bad),
        Err(DecodeError::Version { .. })
    ));
    let mut bad = v.clone();
    bad[9] = 7;
    assert!(decode_event(&bad).is_err());
    let mut bad = v;
    bad[10] = 200; // name longer than the value
    assert!(decode_event(&bad).is_err());
    let m = TopicMeta {
        id: 1,
        epoch: 2,
        head: 3,
        first: 9,
    };
    assert!(decode_topic_meta(&encode_topic_meta(&m)).is_err());
}

#[test]
fn records_round_trip() {
    let r = StoreRecord {
        marker: Marker {
            format: 1,
            epoch: 7,
        },
        previous_epoch: 3,
    };
    assert_eq!(decode_store_record(&encode_store_record(r)), Ok(r));
    // A store that never changed epoch: the record earlier builds wrote.
    let first = StoreRecord {
        previous_epoch: 0,
        ..r
    };
    assert_eq!(encode_store_record(first).len(), 12);
    assert_eq!(decode_store_record(&encode_store_record(first)), Ok(first));
    assert_eq!(decode_high_water(&encode_high_water(42)), Ok(42));
    let mut torn = encode_high_water(42);
    torn[3] = 1;
    assert!(decode_high_water(&torn).is_err());
    let i = IdempotencyRecord {
        epoch: 1,
        seq: 2,
        published_at_ms: 3,
    };
    assert_eq!(
        decode_idempotency_record(&encode_idempotency_record(&i)),
        Ok(i)
    );
    let k = idempotency_key("t", "id");
    let x = idempotency_expiry_key(9, &k);
    assert_eq!(decode_idempotency_expiry_key(&x), Ok((9, &k[..])));
    assert!(idempotency_expiry_key(1, &k) < idempotency_expiry_key(256, &k));
}

proptest! {
    #[test]
    fn event_round_trip(ts in any::<u64>(), name in proptest::option::of(".{0,20}"), text in ".{0,50}", json in any::<bool>()) {
        let data = if json { Data::Json(text.into()) } else { Data::Text(text.into()) };
        let v = encode_event(ts, name.as_deref(), &data);
        let e = decode_event(&v).unwrap();
        prop_assert_eq!(e.published_at_ms, ts);
        prop_assert_eq!(e.name.as_deref(), name.as_deref());
        prop_assert_eq!(e.data, data);
    }

    #[test]
    fn topic_meta_round_trip(id in any::<u64>(), epoch in 1..u64::MAX, head in 0..u64::MAX - 1, back in 0u64..5) {
        let m = TopicMeta { id, epoch, head, first: head + 1 - back.min(head) };
        prop_assert_eq!(decode_topic_meta(&encode_topic_meta(&m)), Ok(m));
    }

    #[test]
    fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_event(&b);
        let _ = decode_topic_meta(&b);
        let _ = decode_store_record(&b);
        let _ = decode_high_water(&b);
        let _ = decode_idempotency_record(&b);
        let _ = decode_idempotency_expiry_key(&b);
        let _ = decode_event_key(&b);
        let _ = decode_marker(&String::from_utf8_lossy(&b));
    }
}
