//! Schema evolution of `OrderCreated`: records written with v1 (by an older build, by an
//! upstream client, or found in an archive) and with v2 decode to the same current model, v1
//! upcast with no contact and no sealed data; v2 round-trips everything it added; and the two
//! versions resolve against each other both ways, as Avro readers in other languages see them.

use apache_avro::types::Value;
use apache_avro::Schema;
use events::*;

use crate::crafted::header;
use crate::samples;
use crate::schemas::{read_schema_file, schemas_dir};

fn schema_file(version: u32) -> Schema {
    let path = schemas_dir().join(format!("OrderCreated.v{version}.avsc"));
    Schema::parse_str(&read_schema_file(&path)).expect("parses")
}

fn info(version: u32) -> &'static SchemaInfo {
    schema_catalog()
        .iter()
        .find(|i| i.event_type == EventType::OrderCreated && i.version == version)
        .unwrap_or_else(|| panic!("OrderCreated v{version} in the catalog"))
}

/// `order` as an order without personal data of v2 (what v1 can carry).
fn event(order: OrderCreated) -> Event {
    Event {
        meta: samples::meta(),
        body: EventBody::OrderCreated(order),
    }
}

/// The v1 bytes of `e`, written by a generic Avro writer that knows only the v1 file: the v2
/// datum read back under v1 as reader schema (dropping contact and sealed), written under v1.
fn v1_by_a_generic_writer(e: &Event) -> Vec<u8> {
    let v2 = encode(e).expect("encodes");
    let value =
        apache_avro::from_avro_datum(&schema_file(2), &mut &v2[10..], Some(&schema_file(1)))
            .expect("v1 reader reads v2");
    let Value::Record(mut fields) = value else {
        panic!("a record")
    };
    for (name, value) in &mut fields {
        if name == "schema_version" {
            *value = Value::Int(1);
        }
    }
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&info(1).fingerprint.to_le_bytes());
    out.extend(apache_avro::to_avro_datum(&schema_file(1), Value::Record(fields)).expect("writes"));
    out
}

fn orders_v1_can_carry() -> Vec<(&'static str, OrderCreated)> {
    let mut many_lines = samples::order(None);
    many_lines.lines = (1..=500)
        .map(|i| OrderLine {
            sku: format!("SKU-{i}"),
            quantity: i,
            unit_price_minor: i64::from(i) * 7,
        })
        .collect();
    let mut zero_price_jpy = samples::order(Some(""));
    zero_price_jpy.currency = "JPY".into();
    zero_price_jpy.shipping_address.country = "JP".into();
    zero_price_jpy.shipping_address.postal_code = String::new();
    vec![
        ("sample", samples::order(None)),
        ("with line2", samples::order(Some("Hinterhaus, 3. OG"))),
        ("500 lines", many_lines),
        ("empty line2 and postal code, JPY", zero_price_jpy),
    ]
}

#[test]
fn v1_and_v2_bytes_of_the_same_order_decode_to_the_same_model() {
    for (name, order) in orders_v1_can_carry() {
        let e = event(order);
        let v2 = encode(&e).expect("encodes v2");
        let v1 = encode_version(&e, 1).expect("encodes v1");
        let generic_v1 = v1_by_a_generic_writer(&e);
        assert_eq!(v2[2..10], info(2).fingerprint.to_le_bytes(), "{name}");
        assert_eq!(v1[2..10], info(1).fingerprint.to_le_bytes(), "{name}");
        assert_eq!(v1, generic_v1, "{name}: the crate's v1 is any writer's v1");
        for (version, bytes) in [("v2", &v2), ("v1", &v1), ("generic v1", &generic_v1)] {
            let decoded = decode(bytes).unwrap_or_else(|err| panic!("{name} {version}: {err}"));
            assert_eq!(decoded, e, "{name} {version}");
            let EventBody::OrderCreated(o) = decoded.body else {
                panic!("{name} {version}: not an order")
            };
            assert_eq!((o.contact, o.sealed), (None, None), "{name} {version}");
            assert_eq!(peek_type(bytes), Some(EventType::OrderCreated));
        }
    }
}

#[test]
fn v2_round_trips_what_it_added() {
    let personal = samples::order_with_personal_data();
    let contact = personal.contact.clone();
    let sealed = personal.sealed.clone();
    let cases = [
        (
            "contact with phone, sealed",
            contact.clone(),
            sealed.clone(),
        ),
        (
            "contact without phone",
            contact.clone().map(|c| Contact { phone: None, ..c }),
            None,
        ),
        ("sealed only", None, sealed),
        ("neither", None, None),
    ];
    for (name, contact, sealed) in cases {
        let e = event(OrderCreated {
            contact,
            sealed,
            ..samples::order(None)
        });
        let bytes = encode(&e).expect(name);
        assert_eq!(decode(&bytes).expect(name), e, "{name}");
    }
}

#[test]
fn v1_cannot_carry_v2_data_and_unknown_versions_are_refused() {
    let personal = samples::order_with_personal_data();
    let cases = [
        (
            "contact",
            OrderCreated {
                sealed: None,
                ..personal.clone()
            },
        ),
        (
            "sealed",
            OrderCreated {
                contact: None,
                ..personal.clone()
            },
        ),
        ("contact", personal),
    ];
    for (field, order) in cases {
        match encode_version(&event(order), 1) {
            Err(EncodeError::NotRepresentable {
                version: 1,
                field: f,
                ..
            }) => assert_eq!(f, field),
            other => panic!("{field}: expected NotRepresentable, got {other:?}"),
        }
    }
    for version in [0, 3] {
        assert!(matches!(
            encode_version(&event(samples::order(None)), version),
            Err(EncodeError::UnknownVersion { current: 2, .. })
        ));
    }
    let follow_up = samples::of(EventType::OrderCompleted);
    assert!(encode_version(&follow_up, 1).is_ok());
    assert!(matches!(
        encode_version(&follow_up, 2),
        Err(EncodeError::UnknownVersion { current: 1, .. })
    ));
}

#[test]
fn readers_of_either_version_resolve_the_other() {
    // What a v1-only consumer elsewhere sees of our v2 records, and what a v2 reader makes of
    // v1 records: Avro schema resolution, by a library that is not this crate's codec.
    let e = event(samples::order_with_personal_data());
    let v2 = encode(&e).expect("encodes");
    let as_v1 =
        apache_avro::from_avro_datum(&schema_file(2), &mut &v2[10..], Some(&schema_file(1)))
            .expect("a v1 reader reads v2");
    let Value::Record(fields) = as_v1 else {
        panic!("a record")
    };
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !names.contains(&"contact") && !names.contains(&"sealed"),
        "{names:?}"
    );
    assert_eq!(names.last(), Some(&"shipping_address"));

    let v1 = encode_version(&event(samples::order(None)), 1).expect("encodes v1");
    let as_v2 =
        apache_avro::from_avro_datum(&schema_file(1), &mut &v1[10..], Some(&schema_file(2)))
            .expect("a v2 reader reads v1");
    let Value::Record(fields) = as_v2 else {
        panic!("a record")
    };
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    for name in ["contact", "sealed"] {
        assert!(
            matches!(get(name), Some(Value::Union(0, ref v)) if **v == Value::Null)
                || get(name) == Some(Value::Null),
            "{name}: {:?}",
            get(name)
        );
    }
}

#[test]
fn a_record_must_carry_the_version_its_fingerprint_names() {
    // v2 fingerprint over a datum that says schema_version 1, and the reverse: writer bugs.
    let e = event(samples::order(None));
    let mut v2_saying_1 = header(EventType::OrderCreated);
    let v2 = encode(&e).expect("encodes");
    let Value::Record(mut fields) =
        apache_avro::from_avro_datum(&schema_file(2), &mut &v2[10..], None).expect("reads")
    else {
        panic!("a record")
    };
    for (name, value) in &mut fields {
        if name == "schema_version" {
            *value = Value::Int(1);
        }
    }
    v2_saying_1.extend(
        apache_avro::to_avro_datum(&schema_file(2), Value::Record(fields)).expect("writes"),
    );
    assert!(matches!(
        decode(&v2_saying_1),
        Err(DecodeError::WrongEnvelope { field: "schema_version", ref expected, ref found, .. })
            if expected == "2" && found == "1"
    ));

    // A v2 datum under the v1 fingerprint: trailing bytes (contact and sealed) refused.
    let mut v2_under_v1 = v2.clone();
    v2_under_v1[2..10].copy_from_slice(&info(1).fingerprint.to_le_bytes());
    assert!(matches!(
        decode(&v2_under_v1),
        Err(DecodeError::MalformedDatum { .. })
    ));
}
