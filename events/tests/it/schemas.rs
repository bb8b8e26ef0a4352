//! The `schemas/` folder is the contract with every other reader: each file parses on its own,
//! the folder and the catalog agree, and a generic Avro reader that knows only a file can read
//! what the crate writes.

use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use apache_avro::Schema;
use events::*;
use serde_json::Value as Json;

pub fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

/// Every `.avsc` file in `schemas/`, sorted.
pub fn schema_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(schemas_dir())
        .expect("schemas/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .collect();
    files.sort();
    files
}

pub fn read_schema_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_file_parses_alone_and_folder_equals_catalog() {
    let files = schema_files();
    assert_eq!(
        files.len(),
        schema_catalog().len(),
        "one schema file per catalog entry"
    );
    for path in &files {
        let text = read_schema_file(path);
        let schema = Schema::parse_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        let info = schema_catalog()
            .iter()
            .find(|i| i.file_name == file_name(path))
            .unwrap_or_else(|| panic!("{} is not in the catalog", path.display()));
        assert_eq!(
            info.schema_json, text,
            "embedded text of {}",
            info.file_name
        );
        let Schema::Record(record) = schema else {
            panic!("{} is not a record", path.display())
        };
        assert_eq!(record.name.name, info.event_type.as_str());
        assert_eq!(record.name.namespace.as_deref(), Some("orderflow.events"));
        assert_eq!(
            info.file_name,
            format!("{}.v{}.avsc", info.event_type, info.version)
        );
    }
    for info in schema_catalog() {
        assert!(
            files.iter().any(|p| file_name(p) == info.file_name),
            "{} is in the catalog but not in schemas/",
            info.file_name
        );
    }
}

#[test]
fn catalog_has_every_version_of_every_event_type_in_order() {
    // Every type, in EventType::ALL order, with versions 1 to its current one, contiguous:
    // an older version is never dropped, or its records on the log and in archives would no
    // longer decode.
    let expected: Vec<(EventType, u32)> = EventType::ALL
        .into_iter()
        .flat_map(|t| (1..=t.current_version()).map(move |v| (t, v)))
        .collect();
    let found: Vec<(EventType, u32)> = schema_catalog()
        .iter()
        .map(|i| (i.event_type, i.version))
        .collect();
    assert_eq!(found, expected);
    for t in EventType::ALL {
        assert_eq!(writer_schema(t).version, t.current_version(), "{t}");
        assert_eq!(writer_schema(t).event_type, t);
    }
    assert_eq!(writer_schema(EventType::OrderCreated).version, 2);
    let mut fingerprints: Vec<u64> = schema_catalog().iter().map(|i| i.fingerprint).collect();
    fingerprints.sort_unstable();
    fingerprints.dedup();
    assert_eq!(
        fingerprints.len(),
        schema_catalog().len(),
        "fingerprints are distinct"
    );
}

#[test]
fn every_schema_has_the_envelope_and_docs_everywhere() {
    const ENVELOPE: [(&str, &str); 7] = [
        ("event_id", r#"{"logicalType":"uuid","type":"string"}"#),
        ("event_type", r#""string""#),
        ("schema_version", r#""int""#),
        ("order_id", r#""string""#),
        (
            "occurred_at",
            r#"{"logicalType":"timestamp-micros","type":"long"}"#,
        ),
        (
            "correlation_id",
            r#"{"logicalType":"uuid","type":"string"}"#,
        ),
        ("causation_id", r#"{"logicalType":"uuid","type":"string"}"#),
    ];
    fn docs_everywhere(schema: &Json, at: &str) {
        match schema {
            Json::Object(map) if map.get("type") == Some(&Json::from("record")) => {
                assert!(has_doc(schema), "record {at} has no doc");
                for field in map["fields"].as_array().expect("fields") {
                    let name = field["name"].as_str().expect("name");
                    assert!(has_doc(field), "field {at}.{name} has no doc");
                    docs_everywhere(&field["type"], &format!("{at}.{name}"));
                }
            }
            Json::Object(map) if map.get("type") == Some(&Json::from("array")) => {
                docs_everywhere(&map["items"], at)
            }
            Json::Array(branches) => branches.iter().for_each(|b| docs_everywhere(b, at)),
            _ => {}
        }
    }
    fn has_doc(v: &Json) -> bool {
        v.get("doc")
            .and_then(Json::as_str)
            .is_some_and(|d| !d.trim().is_empty())
    }
    for info in schema_catalog() {
        let json: Json = serde_json::from_str(info.schema_json).expect("JSON");
        docs_everywhere(&json, info.event_type.as_str());
        let fields = json["fields"].as_array().expect("fields");
        for (i, (name, ty)) in ENVELOPE.iter().enumerate() {
            assert_eq!(fields[i]["name"], *name, "{} field {i}", info.file_name);
            // serde_json sorts object keys, hence the alphabetical order above.
            assert_eq!(
                fields[i]["type"].to_string(),
                *ty,
                "{}.{name}",
                info.file_name
            );
        }
    }
}

#[test]
fn a_generic_reader_needs_only_the_schema_file() {
    for event in crate::samples::all() {
        let event_type = event.event_type();
        let bytes = encode(&event).expect("encodes");
        let info = writer_schema(event_type);
        let text = read_schema_file(&schemas_dir().join(info.file_name));
        let schema = Schema::parse_str(&text).expect("parses");

        let mut datum = &bytes[10..];
        let value = apache_avro::from_avro_datum(&schema, &mut datum, None)
            .unwrap_or_else(|e| panic!("{event_type}: generic read failed: {e}"));
        assert!(datum.is_empty(), "{event_type}: datum fully consumed");
        let Value::Record(fields) = value else {
            panic!("{event_type}: not a record")
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{event_type}: no field {name}"))
        };
        assert_eq!(
            get("event_type"),
            Value::String(event_type.as_str().to_owned())
        );
        let version = i32::try_from(event_type.current_version()).expect("small");
        assert_eq!(get("schema_version"), Value::Int(version));
        assert_eq!(get("order_id"), Value::String(event.meta.order_id.clone()));
        assert_eq!(get("event_id"), Value::Uuid(event.meta.event_id));
        assert_eq!(
            get("occurred_at"),
            Value::TimestampMicros(event.meta.occurred_at.timestamp_micros())
        );
        if let EventBody::OrderCreated(order) = &event.body {
            let Value::Array(lines) = get("lines") else {
                panic!("lines is an array")
            };
            assert_eq!(lines.len(), order.lines.len());
            let Value::Record(address) = get("shipping_address") else {
                panic!("address is a record")
            };
            let line2 = address
                .iter()
                .find(|(n, _)| n == "line2")
                .expect("line2")
                .1
                .clone();
            let expected = match &order.shipping_address.line2 {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
            };
            assert_eq!(line2, expected);
        }
    }
}
