//! The archive's file format: Avro object container files (deflate-compressed blocks) of
//! [`LogRecord`]s, the schema in `schemas/archive/LogRecord.avsc`. Any Avro tool reads them
//! (`avro-tools tojson`, fastavro, ...). The record value is kept byte for byte, so an archived
//! event decodes exactly as it did on the log.

use std::io::{Read, Write};
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::{Codec, DeflateSettings, Reader, Schema, Writer};

/// The Avro schema of an archived record, as JSON.
pub const LOG_RECORD_SCHEMA: &str = include_str!("../../schemas/archive/LogRecord.avsc");

/// One record of the log as the broker held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A problem reading or writing an archive file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("avro: {0}")]
    Avro(String),
    #[error("not an orderflow archive file: {0}")]
    NotAnArchive(String),
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The schema is part of the binary; a test parses it.
        Schema::parse_str(LOG_RECORD_SCHEMA).expect("schemas/archive/LogRecord.avsc is valid")
    })
}

fn avro(error: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Avro(error.to_string())
}

fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

impl LogRecord {
    fn to_value(&self) -> Value {
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| {
                Value::Record(vec![
                    ("key".into(), Value::String(k.clone())),
                    ("value".into(), optional(v.clone().map(Value::Bytes))),
                ])
            })
            .collect();
        Value::Record(vec![
            ("topic".into(), Value::String(self.topic.clone())),
            ("partition".into(), Value::Int(self.partition)),
            ("offset".into(), Value::Long(self.offset)),
            (
                "timestamp_ms".into(),
                optional(self.timestamp_ms.map(Value::Long)),
            ),
            ("key".into(), optional(self.key.clone().map(Value::Bytes))),
            (
                "value".into(),
                optional(self.value.clone().map(Value::Bytes)),
            ),
            ("headers".into(), Value::Array(headers)),
        ])
    }

    fn from_value(value: Value) -> Result<LogRecord, ArchiveError> {
        let bad =
            |what: &str| ArchiveError::NotAnArchive(format!("field {what} missing or mistyped"));
        let Value::Record(fields) = value else {
            return Err(bad("(record)"));
        };
        let mut record = LogRecord {
            topic: String::new(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
        };
        for (name, value) in fields {
            match (name.as_str(), value) {
                ("topic", Value::String(s)) => record.topic = s,
                ("partition", Value::Int(p)) => record.partition = p,
                ("offset", Value::Long(o)) => record.offset = o,
                ("timestamp_ms", Value::Union(_, v)) => {
                    record.timestamp_ms = match *v {
                        Value::Long(t) => Some(t),
                        _ => None,
                    }
                }
                ("key", Value::Union(_, v)) => record.key = bytes(*v),
                ("value", Value::Union(_, v)) => record.value = bytes(*v),
                ("headers", Value::Array(items)) => {
                    for item in items {
                        let Value::Record(pair) = item else {
                            return Err(bad("headers"));
                        };
                        let mut key = None;
                        let mut val = None;
                        for (n, v) in pair {
                            match (n.as_str(), v) {
                                ("key", Value::String(k)) => key = Some(k),
                                ("value", Value::Union(_, v)) => val = bytes(*v),
                                _ => return Err(bad("headers")),
                            }
                        }
                        record
                            .headers
                            .push((key.ok_or_else(|| bad("headers.key"))?, val));
                    }
                }
                (other, _) => return Err(bad(other)),
            }
        }
        Ok(record)
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// Writes one archive file.
pub struct SegmentWriter<W: Write> {
    inner: Writer<'static, W>,
}

impl<W: Write> SegmentWriter<W> {
    /// Start a file; `metadata` goes into the container header (topic, partition, ...).
    pub fn new(out: W, metadata: &[(&str, String)]) -> Result<Self, ArchiveError> {
        let mut inner =
            Writer::with_codec(schema(), out, Codec::Deflate(DeflateSettings::default()));
        for (key, value) in metadata {
            inner
                .add_user_metadata(format!("orderflow.{key}"), value.as_bytes())
                .map_err(avro)?;
        }
        Ok(SegmentWriter { inner })
    }

    pub fn append(&mut self, record: &LogRecord) -> Result<(), ArchiveError> {
        self.inner.append(record.to_value()).map_err(avro)?;
        Ok(())
    }

    /// Flush the last block and hand back the output.
    pub fn finish(self) -> Result<W, ArchiveError> {
        self.inner.into_inner().map_err(avro)
    }
}

/// Read every record of an archive file.
pub fn read_segment(input: impl Read) -> Result<Vec<LogRecord>, ArchiveError> {
    let reader = Reader::new(input).map_err(avro)?;
    if reader.writer_schema().name().map(|n| n.fullname(None))
        != Some("orderflow.archive.LogRecord".to_string())
    {
        return Err(ArchiveError::NotAnArchive(
            "its schema is not orderflow.archive.LogRecord".into(),
        ));
    }
    reader
        .map(|value| LogRecord::from_value(value.map_err(avro)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_container_file() {
        let records = vec![
            LogRecord {
                topic: "orders.events".into(),
                partition: 3,
                offset: 41,
                timestamp_ms: Some(1_763_900_000_000),
                key: Some(b"o-1".to_vec()),
                value: Some(vec![0xC3, 0x01, 0, 255]),
                headers: vec![
                    ("event_type".into(), Some(b"OrderCreated".to_vec())),
                    ("empty".into(), None),
                ],
            },
            LogRecord {
                topic: "orders.events".into(),
                partition: 3,
                offset: 42,
                timestamp_ms: None,
                key: None,
                value: None,
                headers: vec![],
            },
        ];
        let mut writer = SegmentWriter::new(Vec::new(), &[("partition", "3".into())]).unwrap();
        for r in &records {
            writer.append(r).unwrap();
        }
        let bytes = writer.finish().unwrap();
        assert_eq!(&bytes[..4], b"Obj\x01", "an Avro object container file");
        assert_eq!(read_segment(bytes.as_slice()).unwrap(), records);
    }

    #[test]
    fn other_avro_files_are_refused() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"X","fields":[{"name":"a","type":"int"}]}"#,
        )
        .unwrap();
        let mut writer = Writer::new(&schema, Vec::new());
        writer
            .append(Value::Record(vec![("a".into(), Value::Int(1))]))
            .unwrap();
        let bytes = writer.into_inner().unwrap();
        assert!(matches!(
            read_segment(bytes.as_slice()),
            Err(ArchiveError::NotAnArchive(_))
        ));
    }
}
