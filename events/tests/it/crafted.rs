//! Each `DecodeError` variant, produced by a record crafted to trigger it. Faulty writers are
//! played by apache-avro used directly or by bytes written by hand.

use apache_avro::types::Value;
use apache_avro::Schema;
use events::*;

use crate::samples;

/// The schema the crate writes for `event_type` (its current version).
pub fn info(event_type: EventType) -> &'static SchemaInfo {
    writer_schema(event_type)
}

pub fn header(event_type: EventType) -> Vec<u8> {
    let mut h = vec![0xC3, 0x01];
    h.extend_from_slice(&info(event_type).fingerprint.to_le_bytes());
    h
}

fn schema(event_type: EventType) -> Schema {
    Schema::parse_str(info(event_type).schema_json).expect("parses")
}

/// The sample of `event_type`, decoded generically, changed by `change`, and written back
/// with a correct header: a record from a writer that skipped this crate's checks.
fn rewritten(event_type: EventType, change: impl FnOnce(&mut Vec<(String, Value)>)) -> Vec<u8> {
    let schema = schema(event_type);
    let bytes = samples::encoded(event_type);
    let value = apache_avro::from_avro_datum(&schema, &mut &bytes[10..], None).expect("reads");
    let Value::Record(mut fields) = value else {
        panic!("a record")
    };
    change(&mut fields);
    let datum = apache_avro::to_avro_datum(&schema, Value::Record(fields)).expect("writes");
    let mut out = header(event_type);
    out.extend(datum);
    out
}

fn set(fields: &mut [(String, Value)], name: &str, value: Value) {
    fields
        .iter_mut()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .1 = value;
}

/// Hand-written Avro binary, for data no library would write.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn long(mut self, n: i64) -> Self {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        loop {
            let byte = (z & 0x7F) as u8;
            z >>= 7;
            if z == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }
    pub fn string(self, s: &str) -> Self {
        let mut me = self.long(s.len() as i64);
        me.0.extend_from_slice(s.as_bytes());
        me
    }
    /// The seven envelope fields of a valid record of `event_type`.
    pub fn envelope(event_type: EventType) -> Self {
        let id = samples::uuid(1).to_string();
        Raw::default()
            .string(&id)
            .string(event_type.as_str())
            .long(1)
            .string("ord-1")
            .long(1_717_171_717_123_456)
            .string(&id)
            .string(&id)
    }
    pub fn record(self, event_type: EventType) -> Vec<u8> {
        let mut out = header(event_type);
        out.extend(self.0);
        out
    }
}

fn malformed(bytes: &[u8]) -> String {
    match decode(bytes) {
        Err(DecodeError::MalformedDatum { reason, .. }) => reason,
        other => panic!("expected MalformedDatum, got {other:?}"),
    }
}

#[test]
fn too_short() {
    for len in [0, 1, 2, 9] {
        let bytes = vec![0xC3; len];
        assert_eq!(decode(&bytes), Err(DecodeError::TooShort { len }));
    }
    assert_eq!(
        DecodeError::TooShort { len: 3 }.to_string(),
        "record is 3 bytes, shorter than the 10-byte single-object header"
    );
}

#[test]
fn bad_marker() {
    let json = br#"{"order_id":"ord-1","event_type":"OrderCreated"}"#;
    let err = decode(json).expect_err("JSON is not Avro");
    assert_eq!(
        err,
        DecodeError::BadMarker {
            found: [b'{', b'"']
        }
    );
    assert!(err.to_string().contains("7B 22"), "{err}");

    let mut bytes = samples::encoded(EventType::OrderCreated);
    bytes[1] = 0x02; // a future single-object format version
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::BadMarker {
            found: [0xC3, 0x02]
        })
    );
}

#[test]
fn unknown_fingerprint() {
    let mut bytes = samples::encoded(EventType::OrderCompleted);
    bytes[2..10].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    let err = decode(&bytes).expect_err("unknown schema");
    assert_eq!(
        err,
        DecodeError::UnknownFingerprint {
            fingerprint: 0x0123_4567_89ab_cdef
        }
    );
    assert!(err.to_string().contains("0x0123456789abcdef"), "{err}");
}

#[test]
fn malformed_datum_cases() {
    let t = EventType::OrderCreated;
    let good = samples::encoded(t);

    // No datum at all.
    malformed(&header(t));
    // Cut short by one byte, and one byte too many.
    malformed(&good[..good.len() - 1]);
    let mut long = good.clone();
    long.push(0);
    assert!(malformed(&long).contains("trailing"));

    // The right fingerprint over another type's datum: reads as garbage or runs out.
    let mut swapped = samples::encoded(EventType::OrderCancelled);
    swapped[2..10].copy_from_slice(&info(t).fingerprint.to_le_bytes());
    assert!(matches!(
        decode(&swapped),
        Err(DecodeError::MalformedDatum {
            event_type: EventType::OrderCreated,
            ..
        })
    ));

    // A string length of 2^40 in a 20-byte record must not allocate a terabyte.
    let huge = Raw::default().long(1 << 40).record(t);
    assert!(
        malformed(&huge).contains("bytes are left"),
        "{}",
        malformed(&huge)
    );
    // Negative string length.
    malformed(&Raw::default().long(-5).record(t));
    // A varint that never ends.
    malformed(&Raw(vec![0xFF; 20]).record(t));

    // An array block claiming 2^50 items, and one claiming i64::MIN (negative form).
    let r = EventType::InventoryRejected;
    let many = Raw::envelope(r)
        .string("out_of_stock")
        .long(1 << 50)
        .record(r);
    assert!(malformed(&many).contains("items"), "{}", malformed(&many));
    let min = Raw::envelope(r)
        .string("out_of_stock")
        .long(i64::MIN)
        .long(0)
        .record(r);
    malformed(&min);
    // The same envelope with an empty array and nothing after it is fine: the check is exact.
    let empty = Raw::envelope(r).string("out_of_stock").long(0).record(r);
    assert!(decode(&empty).is_ok(), "{:?}", decode(&empty));

    // A uuid field that is 36 bytes but no uuid, and one that is 16 raw bytes.
    let bad_uuid = Raw::default().string(&"z".repeat(36)).record(t);
    malformed(&bad_uuid);
    let raw_uuid = Raw::default().string("0123456789abcdef").record(t);
    assert!(malformed(&raw_uuid).contains("36"));

    // Invalid UTF-8 in a string.
    let mut latin1 = Raw::envelope(r).0;
    latin1.extend([0x04, b'o', 0xFF, 0x00]); // reason: 2 bytes, not UTF-8; no shortages
    let bytes = Raw(latin1).record(r);
    assert!(malformed(&bytes).contains("UTF-8"), "{}", malformed(&bytes));

    // A union branch that does not exist (line2 is ["null","string"]).
    let bytes = {
        let mut b = Raw::envelope(t)
            .string("cust-7")
            .long(1)
            .string("ABC-1")
            .long(1)
            .long(100)
            .long(0)
            .string("EUR")
            .string("N")
            .string("L1")
            .long(5); // branch 5 of a 2-branch union
        b.0.extend([0x02, b'x', 0x02, b'y', 0x04, b'D', b'E']);
        b.record(t)
    };
    assert!(malformed(&bytes).contains("union"), "{}", malformed(&bytes));

    // A timestamp chrono cannot represent.
    let far = rewritten(t, |f| {
        set(f, "occurred_at", Value::TimestampMicros(i64::MAX))
    });
    assert!(
        malformed(&far).contains("out of range"),
        "{}",
        malformed(&far)
    );

    // A datum over the 16 MiB limit is refused before any decoding.
    let mut big = header(t);
    big.resize(10 + 16 * 1024 * 1024 + 1, 0);
    assert!(malformed(&big).contains("more than"), "{}", malformed(&big));
}

#[test]
fn wrong_envelope() {
    let t = EventType::OrderCompleted;
    let bytes = rewritten(t, |f| {
        set(f, "event_type", Value::String("PaymentDeclined".into()))
    });
    let err = decode(&bytes).expect_err("wrong type name");
    assert_eq!(
        err,
        DecodeError::WrongEnvelope {
            event_type: t,
            field: "event_type",
            expected: "\"OrderCompleted\"".into(),
            found: "\"PaymentDeclined\"".into(),
        }
    );

    let bytes = rewritten(t, |f| set(f, "schema_version", Value::Int(2)));
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::WrongEnvelope { field: "schema_version", ref found, .. }) if found == "2"
    ));
}

#[test]
fn invalid_domain_values_are_refused_on_decode() {
    let t = EventType::OrderCompleted;
    let bytes = rewritten(t, |f| set(f, "currency", Value::String("XXX".into())));
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::Invalid {
            event_type: t,
            order_id: "ord-2024-000042".into(),
            error: ValidationError::UnknownCurrency { code: "XXX".into() },
        })
    );

    let bytes = rewritten(EventType::PaymentVoided, |f| {
        set(f, "amount_minor", Value::Long(-1))
    });
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::Invalid {
            error: ValidationError::NegativeAmount {
                field: "amount_minor",
                amount: -1
            },
            ..
        })
    ));

    let bytes = rewritten(EventType::ShipmentFailed, |f| {
        set(f, "order_id", Value::String("  ".into()))
    });
    assert!(matches!(
        decode(&bytes),
        Err(DecodeError::Invalid {
            error: ValidationError::MissingField { field: "order_id" },
            ..
        })
    ));
}

#[test]
fn peek_type_reads_the_header_only() {
    for event_type in EventType::ALL {
        let bytes = samples::encoded(event_type);
        assert_eq!(peek_type(&bytes), Some(event_type), "{event_type}");
        // The type is in the header: a broken datum does not hide it, but decode refuses it.
        let header_only = &bytes[..10];
        assert_eq!(peek_type(header_only), Some(event_type));
        assert!(decode(header_only).is_err());
    }
    let mut unknown = samples::encoded(EventType::OrderCreated);
    unknown[2..10].copy_from_slice(&7u64.to_le_bytes());
    for bytes in [
        &b""[..],
        &[0xC3, 0x01, 1][..],
        &br#"{"event_type":"OrderCreated"}"#[..],
        &unknown[..],
    ] {
        assert_eq!(peek_type(bytes), None, "{bytes:?}");
    }
}
