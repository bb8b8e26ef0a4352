//! The header's fingerprint, checked against an independent implementation of the Avro
//! specification: its Parsing Canonical Form rules and its CRC-64-AVRO algorithm, written here
//! from the spec and sharing no code with the crate or apache-avro.

use crate::schemas::{read_schema_file, schema_files};
use events::*;
use serde_json::Value as Json;

/// The spec's `EMPTY` fingerprint, the CRC's initial value and its polynomial.
const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

/// The spec's table-building loop.
fn table() -> [u64; 256] {
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        *slot = fp;
    }
    table
}

/// CRC-64-AVRO as the spec's `fingerprint64` computes it.
pub fn crc64_avro(data: &[u8]) -> u64 {
    let table = table();
    let mut fp = EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The spec's Parsing Canonical Form of a schema given as JSON, for the subset of Avro the
/// workspace schemas use (records, arrays, maps, unions, primitives, logical types).
pub fn canonical_form(schema: &Json) -> String {
    fn full_name(name: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
            _ => name.to_owned(),
        }
    }
    fn pcf(s: &Json, namespace: Option<&str>) -> String {
        match s {
            // [PRIMITIVES] / [FULLNAMES] for references to named types.
            Json::String(name) if PRIMITIVES.contains(&name.as_str()) => format!("\"{name}\""),
            Json::String(name) => format!("\"{}\"", full_name(name, namespace)),
            Json::Array(branches) => {
                let inner: Vec<String> = branches.iter().map(|b| pcf(b, namespace)).collect();
                format!("[{}]", inner.join(","))
            }
            Json::Object(map) => {
                let ty = map["type"].as_str().expect("type is a string here");
                match ty {
                    // [STRIP] drops logicalType and everything else; [PRIMITIVES] then
                    // reduces {"type":"long"} to "long".
                    t if PRIMITIVES.contains(&t) => format!("\"{t}\""),
                    "array" => format!(
                        "{{\"type\":\"array\",\"items\":{}}}",
                        pcf(&map["items"], namespace)
                    ),
                    "map" => format!(
                        "{{\"type\":\"map\",\"values\":{}}}",
                        pcf(&map["values"], namespace)
                    ),
                    "record" => {
                        let ns = map.get("namespace").and_then(Json::as_str).or(namespace);
                        let name = full_name(map["name"].as_str().expect("record name"), ns);
                        // Nested types inherit the namespace of the full name.
                        let inner_ns = name.rsplit_once('.').map(|(ns, _)| ns.to_owned());
                        let fields: Vec<String> = map["fields"]
                            .as_array()
                            .expect("fields")
                            .iter()
                            .map(|f| {
                                format!(
                                    "{{\"name\":\"{}\",\"type\":{}}}",
                                    f["name"].as_str().expect("field name"),
                                    pcf(&f["type"], inner_ns.as_deref())
                                )
                            })
                            .collect();
                        format!(
                            "{{\"name\":\"{name}\",\"type\":\"record\",\"fields\":[{}]}}",
                            fields.join(",")
                        )
                    }
                    other => panic!("schema construct {other} not covered by this test's PCF"),
                }
            }
            other => panic!("not a schema: {other}"),
        }
    }
    pcf(schema, None)
}

#[test]
fn crc64_avro_known_vectors() {
    // The CRC of the empty input is EMPTY itself, by the algorithm.
    assert_eq!(crc64_avro(b""), EMPTY);
    // Fingerprint of the canonical form `"int"`: 8f5c393f1ad57572 as little-endian bytes,
    // computed with fastavro 1.13.1 and with the Apache `avro` 1.12.2 Python package, which
    // agree.
    assert_eq!(
        crc64_avro(b"\"int\"").to_le_bytes(),
        hex8("8f5c393f1ad57572")
    );
    // And of `"string"`, by fastavro 1.13.1.
    assert_eq!(
        crc64_avro(b"\"string\"").to_le_bytes(),
        hex8("c70345637248018f")
    );
}

#[test]
fn header_fingerprint_is_crc64_avro_of_the_spec_canonical_form() {
    for info in schema_catalog() {
        let json: Json = serde_json::from_str(info.schema_json).expect("schema is JSON");
        let expected_pcf = canonical_form(&json);
        assert_eq!(info.canonical_form, expected_pcf, "{}", info.file_name);
        assert!(
            !info.canonical_form.contains("logicalType"),
            "{}",
            info.file_name
        );
        assert!(!info.canonical_form.contains("doc"), "{}", info.file_name);

        let expected = crc64_avro(expected_pcf.as_bytes());
        assert_eq!(info.fingerprint, expected, "{}", info.file_name);

        if info.version == info.event_type.current_version() {
            let bytes = crate::samples::encoded(info.event_type);
            assert_eq!(bytes[..2], [0xC3, 0x01]);
            assert_eq!(bytes[2..10], expected.to_le_bytes(), "{}", info.file_name);
        }
    }
}

#[test]
fn fingerprints_match_another_implementation_and_stay_frozen() {
    // Computed with fastavro 1.13.1:
    // fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), which prints the
    // little-endian bytes in hex. A published v1 schema must never change in a way that
    // alters its canonical form: this table failing means a new version is needed instead.
    // (Doc strings may change freely; they are not part of the canonical form.)
    let expected = [
        ("OrderCreated.v1.avsc", "8ac9024616caea2d"),
        ("OrderCreated.v2.avsc", "f3cd7de85eff406d"),
        ("InventoryReserved.v1.avsc", "2a5a205dc4cf9a58"),
        ("InventoryRejected.v1.avsc", "c4e95cba6d3d1eae"),
        ("InventoryReleased.v1.avsc", "c52bd34ee4d5b259"),
        ("PaymentAuthorized.v1.avsc", "61ad038fa3cf13f0"),
        ("PaymentDeclined.v1.avsc", "b4dca9c3db0ff2df"),
        ("PaymentVoided.v1.avsc", "938849f47146648a"),
        ("ShipmentScheduled.v1.avsc", "ac6267d049b3f48f"),
        ("ShipmentFailed.v1.avsc", "1f26c345f881fd84"),
        ("OrderCompleted.v1.avsc", "fc7f26e803d80123"),
        ("OrderCancelled.v1.avsc", "161ebd79d3dbd587"),
        ("ShipmentCancelled.v1.avsc", "8d4496ba3ba69fbc"),
        ("OrderCancellationRequested.v1.avsc", "273cbf69be12d800"),
        ("OrderCancellationAccepted.v1.avsc", "1e17dd3adebb42ec"),
        ("OrderCancellationRejected.v1.avsc", "3ee2a775b828f41e"),
        ("SagaStepTimedOut.v1.avsc", "ed2ab31491042b06"),
        ("StockAdjusted.v1.avsc", "edfde92b5e0a6771"),
        ("CustomerBlocked.v1.avsc", "c9d23c0bcea2f3cf"),
        ("CustomerUnblocked.v1.avsc", "5318adb0879b7384"),
        ("CustomerForgotten.v1.avsc", "ce116c62196de365"),
    ];
    assert_eq!(expected.len(), schema_catalog().len());
    for (file, fp) in expected {
        let info = schema_catalog()
            .iter()
            .find(|i| i.file_name == file)
            .unwrap_or_else(|| panic!("{file} in catalog"));
        assert_eq!(info.fingerprint.to_le_bytes(), hex8(fp), "{file}");
    }
}

#[test]
fn fingerprint_from_the_file_on_disk_alone_matches_the_header() {
    // What a reader in another language does: read schemas/, canonicalise, fingerprint.
    for (path, text) in schema_files().iter().map(|p| (p, read_schema_file(p))) {
        let json: Json = serde_json::from_str(&text).expect("schema is JSON");
        let fp = crc64_avro(canonical_form(&json).as_bytes());
        let name = json["name"].as_str().expect("name");
        let event_type = EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .unwrap_or_else(|| panic!("{} names an event type", path.display()));
        let file = path.file_name().expect("file name").to_string_lossy();
        let info = schema_catalog()
            .iter()
            .find(|i| i.file_name == file)
            .unwrap_or_else(|| panic!("{file} in catalog"));
        assert_eq!(info.fingerprint, fp, "{file}");
        // The version the crate writes: what every record it encodes carries.
        if writer_schema(event_type).file_name == file {
            let bytes = crate::samples::encoded(event_type);
            assert_eq!(bytes[2..10], fp.to_le_bytes(), "{}", path.display());
        }
    }
}

fn hex8(s: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}
