//! The wire format: Avro single-object encoding of [`Event`]s, with the schemas of the
//! workspace `schemas/` folder embedded at compile time.
//!
//! This module owns the byte layout (`C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint
//! of the writer schema's Parsing Canonical Form, then the Avro binary datum), the schema
//! catalog (every version of every type: the fingerprint picks the writer's), the mapping
//! between typed events and Avro values, and the one place an older version becomes the
//! current model (`upcast_order_created_v1`). It must not invent domain
//! rules (those live in `validate`, which it calls on both sides), must not read schemas from
//! disk at run time, and [`decode`] must never panic or allocate without bound, whatever bytes
//! it is handed: it reads untrusted input straight off the log.

use std::sync::LazyLock;

use apache_avro::rabin::Rabin;
use apache_avro::schema::SchemaKind;
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::*;
use crate::validate::{validate, ValidationError};

/// The two bytes every single-object encoded record starts with (Avro spec, format version 1).
const MARKER: [u8; 2] = [0xC3, 0x01];
/// Marker plus fingerprint.
const HEADER_LEN: usize = 10;
/// The largest datum (bytes after the header) this codec writes or reads. Far above any real
/// event (an order has at most 500 lines); anything larger is treated as malformed so that a
/// crafted record cannot make a consumer allocate without bound.
const MAX_DATUM_BYTES: usize = 16 * 1024 * 1024;

/// Why an event could not be encoded.
///
/// Apart from [`EncodeError::Invalid`], encoding only fails on a bug in this crate (a value
/// that does not fit its own schema) or an absurdly large event; callers should treat those as
/// fatal for the event, not retry.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The event breaks a domain rule; it was not encoded. Fix the producer.
    #[error("refusing to encode an invalid event: {0}")]
    Invalid(#[from] ValidationError),
    /// The Avro library refused the value built for the event's schema. A bug in this crate.
    #[error("{event_type} does not fit its own schema (a bug in the events crate): {reason}")]
    Avro {
        event_type: EventType,
        reason: String,
    },
    /// [`encode_version`] was asked for a version of the type that this build has no schema
    /// for. A bug in the caller.
    #[error("{event_type} has no schema version {version} (this build knows 1 to {current})")]
    UnknownVersion {
        event_type: EventType,
        version: u32,
        current: u32,
    },
    /// [`encode_version`] was asked for an older version that cannot carry the event's data
    /// (e.g. a contact in an `OrderCreated` v1). Write the current version instead.
    #[error("{event_type} version {version} cannot carry {field}; write the current version")]
    NotRepresentable {
        event_type: EventType,
        version: u32,
        field: &'static str,
    },
    /// The encoded datum is larger than any reader accepts, so it would be dead on arrival.
    #[error("{event_type} encodes to {len} bytes, more than the {max} readers accept")]
    TooLarge {
        event_type: EventType,
        len: usize,
        max: usize,
    },
}

/// Why bytes could not be turned into an [`Event`].
///
/// Every variant is permanent: the same bytes will fail the same way on every attempt. A
/// consumer should dead-letter the record (keeping the bytes and this error's message) and
/// move on; retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the 10-byte single-object header. Dead-letter; do not retry.
    #[error("record is {len} bytes, shorter than the 10-byte single-object header")]
    TooShort { len: usize },
    /// The first two bytes are not `C3 01`: not Avro single-object encoded (perhaps JSON or
    /// another producer's format). Dead-letter; do not retry.
    #[error("record starts with {:02X} {:02X}, not the single-object marker C3 01", found[0], found[1])]
    BadMarker { found: [u8; 2] },
    /// The schema fingerprint names no schema this build knows: a newer writer or a foreign
    /// producer. Dead-letter; do not retry (deploying a build that knows the schema and
    /// replaying the dead letters is the remedy).
    #[error("unknown schema fingerprint {fingerprint:#018x}")]
    UnknownFingerprint { fingerprint: u64 },
    /// The bytes after the header are not exactly one datum of the schema the fingerprint
    /// names (truncated, corrupted, oversized, or with trailing bytes). Dead-letter; do not
    /// retry.
    #[error("malformed {event_type} datum: {reason}")]
    MalformedDatum {
        event_type: EventType,
        reason: String,
    },
    /// The datum decodes, but its `event_type` or `schema_version` field disagrees with the
    /// schema the fingerprint names: a writer bug. Dead-letter; do not retry.
    #[error("{event_type} record says {field} = {found}, the schema requires {expected}")]
    WrongEnvelope {
        event_type: EventType,
        field: &'static str,
        expected: String,
        found: String,
    },
    /// The record is well-formed but breaks a domain rule. Dead-letter; do not retry.
    #[error("invalid {event_type} for order {order_id:?}: {error}")]
    Invalid {
        event_type: EventType,
        order_id: String,
        error: ValidationError,
    },
}

/// One embedded writer schema, as other readers need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaInfo {
    pub event_type: EventType,
    pub version: u32,
    /// The file name in the workspace `schemas/` folder, e.g. `OrderCreated.v1.avsc`.
    pub file_name: &'static str,
    /// The schema's Parsing Canonical Form, as the Avro specification defines it.
    pub canonical_form: String,
    /// CRC-64-AVRO of `canonical_form`; written little-endian in every record's header.
    pub fingerprint: u64,
    /// The schema file's text, exactly as embedded.
    pub schema_json: &'static str,
}

/// Every schema this build reads: every version of every event type, in [`EventType::ALL`]
/// order and by version within a type. The one it writes for a type is the highest
/// ([`writer_schema`]); the older ones are kept so that records already on the log and in
/// archives stay readable.
pub fn schema_catalog() -> &'static [SchemaInfo] {
    &CATALOG.infos
}

/// The schema this build writes for `event_type`: its [`EventType::current_version`].
pub fn writer_schema(event_type: EventType) -> &'static SchemaInfo {
    &CATALOG.entry(event_type).info
}

/// Encode `event` as an Avro single-object encoded record of its type's current schema
/// version ([`writer_schema`]).
///
/// The event is validated first; an invalid event is refused with [`EncodeError::Invalid`].
/// `occurred_at` is written at microsecond precision (the schema's `timestamp-micros`): any
/// sub-microsecond part is dropped, so such an event does not round-trip exactly.
pub fn encode(event: &Event) -> Result<Vec<u8>, EncodeError> {
    encode_version(event, event.event_type().current_version())
}

/// Encode `event` with an older schema version of its type, as a build from before that
/// version's successor wrote it: for tests of mixed logs and for a producer that must keep
/// writing what not-yet-upgraded readers know. Refused when the version does not exist
/// ([`EncodeError::UnknownVersion`]) or cannot carry the event's data
/// ([`EncodeError::NotRepresentable`]: an `OrderCreated` v1 has no contact or sealed fields).
pub fn encode_version(event: &Event, version: u32) -> Result<Vec<u8>, EncodeError> {
    validate(event)?;
    let event_type = event.event_type();
    let entry = CATALOG
        .version(event_type, version)
        .ok_or(EncodeError::UnknownVersion {
            event_type,
            version,
            current: event_type.current_version(),
        })?;
    if let (1, EventBody::OrderCreated(order)) = (version, &event.body) {
        let lost = [
            ("contact", order.contact.is_some()),
            ("sealed", order.sealed.is_some()),
        ];
        if let Some((field, _)) = lost.into_iter().find(|(_, present)| *present) {
            return Err(EncodeError::NotRepresentable {
                event_type,
                version,
                field,
            });
        }
    }
    let avro = |reason: String| EncodeError::Avro { event_type, reason };

    let version = i32::try_from(entry.info.version).map_err(|_| {
        avro(format!(
            "version {} does not fit an int",
            entry.info.version
        ))
    })?;
    let value = to_value(event, version);
    let datum =
        apache_avro::to_avro_datum(&entry.schema, value).map_err(|e| avro(e.to_string()))?;
    if datum.len() > MAX_DATUM_BYTES {
        return Err(EncodeError::TooLarge {
            event_type,
            len: datum.len(),
            max: MAX_DATUM_BYTES,
        });
    }

    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&entry.info.fingerprint.to_le_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

/// The event type a record's header names, without decoding it: `None` when the header is
/// missing, bad or names an unknown schema (then [`decode`] says exactly what is wrong). A
/// consumer skips records of types it does not want this way; the datum may still be
/// malformed, which only [`decode`] finds.
pub fn peek_type(bytes: &[u8]) -> Option<EventType> {
    let (header, _) = bytes.split_first_chunk::<HEADER_LEN>()?;
    let [m0, m1, fp @ ..] = *header;
    if [m0, m1] != MARKER {
        return None;
    }
    CATALOG
        .by_fingerprint(u64::from_le_bytes(fp))
        .map(|entry| entry.info.event_type)
}

/// Decode an Avro single-object encoded record into a validated [`Event`].
///
/// Never panics and never allocates much more than the input's size, whatever the input: a
/// structural pre-check walks the datum against the schema before the Avro library decodes
/// it, so a crafted length cannot make it allocate. Every error is permanent (see
/// [`DecodeError`]).
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let Some((header, datum)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::TooShort { len: bytes.len() });
    };
    let [m0, m1, fp @ ..] = *header;
    if [m0, m1] != MARKER {
        return Err(DecodeError::BadMarker { found: [m0, m1] });
    }
    let fingerprint = u64::from_le_bytes(fp);
    let entry = CATALOG
        .by_fingerprint(fingerprint)
        .ok_or(DecodeError::UnknownFingerprint { fingerprint })?;
    let event_type = entry.info.event_type;
    let malformed = |reason: String| DecodeError::MalformedDatum { event_type, reason };

    if datum.len() > MAX_DATUM_BYTES {
        return Err(malformed(format!(
            "datum is {} bytes, more than the {MAX_DATUM_BYTES} accepted",
            datum.len()
        )));
    }
    bounds::check(&entry.schema, datum).map_err(malformed)?;
    let mut rest = datum;
    let value = apache_avro::from_avro_datum(&entry.schema, &mut rest, None)
        .map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        // The bounds check already rejects trailing bytes; kept in case the two ever disagree.
        return Err(malformed(format!(
            "{} trailing bytes after the datum",
            rest.len()
        )));
    }

    let event = from_value(entry, value)?;
    validate(&event).map_err(|error| DecodeError::Invalid {
        event_type,
        order_id: event.meta.order_id.clone(),
        error,
    })?;
    Ok(event)
}

// ---------------------------------------------------------------------------------------------
// The catalog of embedded schemas.

struct Entry {
    info: SchemaInfo,
    schema: Schema,
}

struct Catalog {
    infos: Vec<SchemaInfo>,
    entries: Vec<Entry>,
}

impl Catalog {
    /// The entry this build writes for `event_type`.
    fn entry(&self, event_type: EventType) -> &Entry {
        self.version(event_type, event_type.current_version())
            // SOURCES has every version up to the current one of every EventType; the catalog
            // test checks every type.
            .expect("every event type has an embedded schema of its current version")
    }

    fn version(&self, event_type: EventType, version: u32) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.info.event_type == event_type && e.info.version == version)
    }

    fn by_fingerprint(&self, fingerprint: u64) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.info.fingerprint == fingerprint)
    }
}

/// `(event type, version, file name, file text)`, in `EventType::ALL` order, then by version.
macro_rules! source {
    ($t:ident) => {
        source!($t, 1)
    };
    ($t:ident, $v:literal) => {
        (
            EventType::$t,
            $v,
            concat!(stringify!($t), ".v", $v, ".avsc"),
            include_str!(concat!("../../schemas/", stringify!($t), ".v", $v, ".avsc")),
        )
    };
}

/// Every schema file of `schemas/`. A new version is added here beside the old ones, never
/// instead of them (docs/schema-evolution.md).
const SOURCES: [(EventType, u32, &str, &str); 21] = [
    source!(OrderCreated, 1),
    source!(OrderCreated, 2),
    source!(InventoryReserved),
    source!(InventoryRejected),
    source!(InventoryReleased),
    source!(PaymentAuthorized),
    source!(PaymentDeclined),
    source!(PaymentVoided),
    source!(ShipmentScheduled),
    source!(ShipmentFailed),
    source!(OrderCompleted),
    source!(OrderCancelled),
    source!(ShipmentCancelled),
    source!(OrderCancellationRequested),
    source!(OrderCancellationAccepted),
    source!(OrderCancellationRejected),
    source!(SagaStepTimedOut),
    source!(StockAdjusted),
    source!(CustomerBlocked),
    source!(CustomerUnblocked),
    source!(CustomerForgotten),
];

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    // Belt and braces next to the bounds check: cap what apache-avro may allocate for one
    // length-prefixed value. The setting is process-wide and only the first call counts, so it
    // is made here, before this crate decodes anything.
    apache_avro::util::max_allocation_bytes(MAX_DATUM_BYTES);

    let mut infos = Vec::with_capacity(SOURCES.len());
    let mut entries = Vec::with_capacity(SOURCES.len());
    for (event_type, version, file_name, schema_json) in SOURCES {
        let schema = Schema::parse_str(schema_json).unwrap_or_else(|e| {
            panic!("embedded schema {file_name} parses; a test checks it: {e}")
        });
        let (canonical_form, fingerprint) = canonical_form_and_fingerprint(&schema);
        let info = SchemaInfo {
            event_type,
            version,
            file_name,
            canonical_form,
            fingerprint,
            schema_json,
        };
        infos.push(info.clone());
        entries.push(Entry { info, schema });
    }
    Catalog { infos, entries }
});

/// The spec's Parsing Canonical Form of `schema` and its CRC-64-AVRO fingerprint.
///
/// apache-avro 0.21 strips `logicalType` but leaves the primitive in object form, so
/// `{"type":"long","logicalType":"timestamp-micros"}` canonicalises to `{"type":"long"}`
/// instead of `"long"` as the specification (and Java's `SchemaNormalization`, and fastavro)
/// have it; its fingerprints would then differ from every other language's. Parsing that
/// output again yields a schema without logical types, whose canonical form is the spec's.
fn canonical_form_and_fingerprint(schema: &Schema) -> (String, u64) {
    let plain = Schema::parse_str(&schema.canonical_form())
        // The canonical form of a schema that parsed is itself a valid schema.
        .expect("apache-avro's canonical form of a parsed schema parses");
    let canonical_form = plain.canonical_form();
    let digest = plain.fingerprint::<Rabin>().bytes;
    let bytes: [u8; 8] = digest
        .as_slice()
        .try_into()
        // Rabin is a 64-bit digest by definition.
        .expect("CRC-64-AVRO digest is 8 bytes");
    (canonical_form, u64::from_le_bytes(bytes))
}

// ---------------------------------------------------------------------------------------------
// Event -> Avro value. Field order is the schema's: `to_avro_datum` checks the value against
// the schema, so a mismatch here surfaces as `EncodeError::Avro` in the round-trip tests.

fn to_value(event: &Event, version: i32) -> Value {
    let m = &event.meta;
    let mut f: Vec<(&'static str, Value)> = vec![
        ("event_id", Value::Uuid(m.event_id)),
        ("event_type", string(event.event_type().as_str())),
        ("schema_version", Value::Int(version)),
        ("order_id", string(&m.order_id)),
        (
            "occurred_at",
            Value::TimestampMicros(m.occurred_at.timestamp_micros()),
        ),
        ("correlation_id", Value::Uuid(m.correlation_id)),
        ("causation_id", Value::Uuid(m.causation_id)),
    ];
    match &event.body {
        EventBody::OrderCreated(b) => {
            f.push(("customer_id", string(&b.customer_id)));
            f.push((
                "lines",
                Value::Array(b.lines.iter().map(line_value).collect()),
            ));
            f.push(("currency", string(&b.currency)));
            f.push(("shipping_address", address_value(&b.shipping_address)));
            if version >= 2 {
                f.push(("contact", optional(b.contact.as_ref().map(contact_value))));
                f.push(("sealed", optional(b.sealed.as_ref().map(sealed_value))));
            }
        }
        EventBody::InventoryReserved(b) => {
            f.push(("reservation_id", Value::Uuid(b.reservation_id)));
            f.push(("items", items_value(&b.items)));
        }
        EventBody::InventoryRejected(b) => {
            f.push(("reason", string(&b.reason)));
            let shortages = b.shortages.iter().map(shortage_value).collect();
            f.push(("shortages", Value::Array(shortages)));
        }
        EventBody::InventoryReleased(b) => {
            f.push(("reservation_id", Value::Uuid(b.reservation_id)));
            f.push(("items", items_value(&b.items)));
            f.push(("reason", string(&b.reason)));
        }
        EventBody::PaymentAuthorized(b) => {
            f.push(("payment_id", Value::Uuid(b.payment_id)));
            f.push(("customer_id", string(&b.customer_id)));
            f.push(("amount_minor", Value::Long(b.amount_minor)));
            f.push(("currency", string(&b.currency)));
            f.push(("provider_reference", string(&b.provider_reference)));
        }
        EventBody::PaymentDeclined(b) => {
            f.push(("customer_id", string(&b.customer_id)));
            f.push(("amount_minor", Value::Long(b.amount_minor)));
            f.push(("currency", string(&b.currency)));
            f.push(("reason", string(&b.reason)));
        }
        EventBody::PaymentVoided(b) => {
            f.push(("payment_id", Value::Uuid(b.payment_id)));
            f.push(("amount_minor", Value::Long(b.amount_minor)));
            f.push(("currency", string(&b.currency)));
            f.push(("reason", string(&b.reason)));
        }
        EventBody::ShipmentScheduled(b) => {
            f.push(("shipment_id", Value::Uuid(b.shipment_id)));
            f.push(("carrier", string(&b.carrier)));
            f.push(("tracking_number", string(&b.tracking_number)));
        }
        EventBody::ShipmentFailed(b) => {
            f.push(("carrier", string(&b.carrier)));
            f.push(("reason", string(&b.reason)));
        }
        EventBody::OrderCompleted(b) => {
            f.push(("total_minor", Value::Long(b.total_minor)));
            f.push(("currency", string(&b.currency)));
        }
        EventBody::OrderCancelled(b) => {
            f.push(("reason", string(&b.reason)));
            f.push(("detail", string(&b.detail)));
        }
        EventBody::ShipmentCancelled(b) => {
            f.push(("shipment_id", Value::Uuid(b.shipment_id)));
            f.push(("carrier", string(&b.carrier)));
            f.push(("reason", string(&b.reason)));
        }
        EventBody::OrderCancellationRequested(b) => {
            f.push(("reason", string(&b.reason)));
            f.push(("requested_by", string(&b.requested_by)));
        }
        EventBody::OrderCancellationAccepted(b) => {
            f.push(("reason", string(&b.reason)));
            f.push(("requested_by", string(&b.requested_by)));
        }
        EventBody::OrderCancellationRejected(b) => {
            f.push(("reason", string(&b.reason)));
            f.push(("detail", string(&b.detail)));
        }
        EventBody::SagaStepTimedOut(b) => {
            f.push(("step", string(&b.step)));
            f.push((
                "deadline",
                Value::TimestampMicros(b.deadline.timestamp_micros()),
            ));
            f.push(("attempts", Value::Int(b.attempts)));
        }
        EventBody::StockAdjusted(b) => {
            f.push(("sku", string(&b.sku)));
            f.push(("delta", Value::Long(b.delta)));
            f.push(("reason", string(&b.reason)));
        }
        EventBody::CustomerBlocked(b) => {
            f.push(("customer_id", string(&b.customer_id)));
            f.push(("note", string(&b.note)));
        }
        EventBody::CustomerUnblocked(b) => {
            f.push(("customer_id", string(&b.customer_id)));
        }
        EventBody::CustomerForgotten(b) => {
            f.push(("customer_id", string(&b.customer_id)));
            let keys = b.key_ids.iter().map(|k| string(&k.to_string())).collect();
            f.push(("key_ids", Value::Array(keys)));
        }
    }
    record(f)
}

fn record(fields: Vec<(&'static str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn line_value(l: &OrderLine) -> Value {
    record(vec![
        ("sku", string(&l.sku)),
        ("quantity", Value::Int(l.quantity)),
        ("unit_price_minor", Value::Long(l.unit_price_minor)),
    ])
}

fn address_value(a: &Address) -> Value {
    // Union ["null","string"]: branch 0 is null, branch 1 a string.
    let line2 = match &a.line2 {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(string(s))),
    };
    record(vec![
        ("name", string(&a.name)),
        ("line1", string(&a.line1)),
        ("line2", line2),
        ("city", string(&a.city)),
        ("postal_code", string(&a.postal_code)),
        ("country", string(&a.country)),
    ])
}

/// A `["null", T]` union: branch 0 is null, branch 1 the value.
fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn contact_value(c: &Contact) -> Value {
    record(vec![
        ("email", string(&c.email)),
        ("phone", optional(c.phone.as_deref().map(string))),
    ])
}

fn sealed_value(s: &SealedPersonal) -> Value {
    record(vec![
        ("key_id", string(&s.key_id)),
        ("algorithm", string(&s.algorithm)),
        ("nonce", Value::Bytes(s.nonce.clone())),
        ("ciphertext", Value::Bytes(s.ciphertext.clone())),
    ])
}

fn items_value(items: &[SkuQuantity]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|i| {
                record(vec![
                    ("sku", string(&i.sku)),
                    ("quantity", Value::Int(i.quantity)),
                ])
            })
            .collect(),
    )
}

fn shortage_value(s: &Shortage) -> Value {
    record(vec![
        ("sku", string(&s.sku)),
        ("requested", Value::Int(s.requested)),
        ("available", Value::Int(s.available)),
    ])
}

// ---------------------------------------------------------------------------------------------
// Avro value -> Event. The value has already been decoded under the schema, so shape errors
// here mean the schema and this code disagree; they are still reported, never panicked on.

fn from_value(entry: &Entry, value: Value) -> Result<Event, DecodeError> {
    let event_type = entry.info.event_type;
    let malformed = |reason: String| DecodeError::MalformedDatum { event_type, reason };

    let mut r = Fields::new(event_type.as_str(), value).map_err(malformed)?;
    let event_id = r.uuid("event_id").map_err(malformed)?;
    let found_type = r.string("event_type").map_err(malformed)?;
    let found_version = r.int("schema_version").map_err(malformed)?;
    if found_type != event_type.as_str() {
        return Err(DecodeError::WrongEnvelope {
            event_type,
            field: "event_type",
            expected: format!("{:?}", event_type.as_str()),
            found: format!("{found_type:?}"),
        });
    }
    if u32::try_from(found_version).ok() != Some(entry.info.version) {
        return Err(DecodeError::WrongEnvelope {
            event_type,
            field: "schema_version",
            expected: entry.info.version.to_string(),
            found: found_version.to_string(),
        });
    }
    let meta = read_meta(&mut r, event_id).map_err(malformed)?;
    let body = read_body(event_type, entry.info.version, &mut r).map_err(malformed)?;
    r.finish().map_err(malformed)?;
    Ok(Event { meta, body })
}

fn read_meta(r: &mut Fields, event_id: Uuid) -> Result<Metadata, String> {
    Ok(Metadata {
        event_id,
        order_id: r.string("order_id")?,
        occurred_at: r.timestamp_micros("occurred_at")?,
        correlation_id: r.uuid("correlation_id")?,
        causation_id: r.uuid("causation_id")?,
    })
}

/// The body of a record written with `version` of `event_type`'s schema, as the current model.
fn read_body(event_type: EventType, version: u32, r: &mut Fields) -> Result<EventBody, String> {
    Ok(match event_type {
        EventType::OrderCreated => {
            let v1 = read_order_created_v1(r)?;
            EventBody::OrderCreated(match version {
                1 => upcast_order_created_v1(v1),
                _ => OrderCreated {
                    contact: r.optional_record("contact", "Contact", |c| {
                        Ok(Contact {
                            email: c.string("email")?,
                            phone: c.optional_string("phone")?,
                        })
                    })?,
                    sealed: r.optional_record("sealed", "SealedPersonal", |s| {
                        Ok(SealedPersonal {
                            key_id: s.string("key_id")?,
                            algorithm: s.string("algorithm")?,
                            nonce: s.bytes("nonce")?,
                            ciphertext: s.bytes("ciphertext")?,
                        })
                    })?,
                    ..upcast_order_created_v1(v1)
                },
            })
        }
        EventType::InventoryReserved => EventBody::InventoryReserved(InventoryReserved {
            reservation_id: r.uuid("reservation_id")?,
            items: r.records("items", "SkuQuantity", read_sku_quantity)?,
        }),
        EventType::InventoryRejected => EventBody::InventoryRejected(InventoryRejected {
            reason: r.string("reason")?,
            shortages: r.records("shortages", "Shortage", |s| {
                Ok(Shortage {
                    sku: s.string("sku")?,
                    requested: s.int("requested")?,
                    available: s.int("available")?,
                })
            })?,
        }),
        EventType::InventoryReleased => EventBody::InventoryReleased(InventoryReleased {
            reservation_id: r.uuid("reservation_id")?,
            items: r.records("items", "SkuQuantity", read_sku_quantity)?,
            reason: r.string("reason")?,
        }),
        EventType::PaymentAuthorized => EventBody::PaymentAuthorized(PaymentAuthorized {
            payment_id: r.uuid("payment_id")?,
            customer_id: r.string("customer_id")?,
            amount_minor: r.long("amount_minor")?,
            currency: r.string("currency")?,
            provider_reference: r.string("provider_reference")?,
        }),
        EventType::PaymentDeclined => EventBody::PaymentDeclined(PaymentDeclined {
            customer_id: r.string("customer_id")?,
            amount_minor: r.long("amount_minor")?,
            currency: r.string("currency")?,
            reason: r.string("reason")?,
        }),
        EventType::PaymentVoided => EventBody::PaymentVoided(PaymentVoided {
            payment_id: r.uuid("payment_id")?,
            amount_minor: r.long("amount_minor")?,
            currency: r.string("currency")?,
            reason: r.string("reason")?,
        }),
        EventType::ShipmentScheduled => EventBody::ShipmentScheduled(ShipmentScheduled {
            shipment_id: r.uuid("shipment_id")?,
            carrier: r.string("carrier")?,
            tracking_number: r.string("tracking_number")?,
        }),
        EventType::ShipmentFailed => EventBody::ShipmentFailed(ShipmentFailed {
            carrier: r.string("carrier")?,
            reason: r.string("reason")?,
        }),
        EventType::OrderCompleted => EventBody::OrderCompleted(OrderCompleted {
            total_minor: r.long("total_minor")?,
            currency: r.string("currency")?,
        }),
        EventType::OrderCancelled => EventBody::OrderCancelled(OrderCancelled {
            reason: r.string("reason")?,
            detail: r.string("detail")?,
        }),
        EventType::ShipmentCancelled => EventBody::ShipmentCancelled(ShipmentCancelled {
            shipment_id: r.uuid("shipment_id")?,
            carrier: r.string("carrier")?,
            reason: r.string("reason")?,
        }),
        EventType::OrderCancellationRequested => {
            EventBody::OrderCancellationRequested(OrderCancellationRequested {
                reason: r.string("reason")?,
                requested_by: r.string("requested_by")?,
            })
        }
        EventType::OrderCancellationAccepted => {
            EventBody::OrderCancellationAccepted(OrderCancellationAccepted {
                reason: r.string("reason")?,
                requested_by: r.string("requested_by")?,
            })
        }
        EventType::OrderCancellationRejected => {
            EventBody::OrderCancellationRejected(OrderCancellationRejected {
                reason: r.string("reason")?,
                detail: r.string("detail")?,
            })
        }
        EventType::SagaStepTimedOut => EventBody::SagaStepTimedOut(SagaStepTimedOut {
            step: r.string("step")?,
            deadline: r.timestamp_micros("deadline")?,
            attempts: r.int("attempts")?,
        }),
        EventType::StockAdjusted => EventBody::StockAdjusted(StockAdjusted {
            sku: r.string("sku")?,
            delta: r.long("delta")?,
            reason: r.string("reason")?,
        }),
        EventType::CustomerBlocked => EventBody::CustomerBlocked(CustomerBlocked {
            customer_id: r.string("customer_id")?,
            note: r.string("note")?,
        }),
        EventType::CustomerUnblocked => EventBody::CustomerUnblocked(CustomerUnblocked {
            customer_id: r.string("customer_id")?,
        }),
        EventType::CustomerForgotten => EventBody::CustomerForgotten(CustomerForgotten {
            customer_id: r.string("customer_id")?,
            key_ids: r.uuid_strings("key_ids")?,
        }),
    })
}

/// The fields of `OrderCreated` v1, which v2 keeps unchanged at the same positions.
struct OrderCreatedV1 {
    customer_id: String,
    lines: Vec<OrderLine>,
    currency: String,
    shipping_address: Address,
}

fn read_order_created_v1(r: &mut Fields) -> Result<OrderCreatedV1, String> {
    Ok(OrderCreatedV1 {
        customer_id: r.string("customer_id")?,
        lines: r.records("lines", "OrderLine", |l| {
            Ok(OrderLine {
                sku: l.string("sku")?,
                quantity: l.int("quantity")?,
                unit_price_minor: l.long("unit_price_minor")?,
            })
        })?,
        currency: r.string("currency")?,
        shipping_address: r.record("shipping_address", "Address", |a| {
            Ok(Address {
                name: a.string("name")?,
                line1: a.string("line1")?,
                line2: a.optional_string("line2")?,
                city: a.string("city")?,
                postal_code: a.string("postal_code")?,
                country: a.string("country")?,
            })
        })?,
    })
}

/// The one place an `OrderCreated` v1 becomes the current model: every v1 field keeps its
/// meaning, and the fields v2 added take the defaults its schema declares (`contact` and
/// `sealed` null), exactly what Avro schema resolution of a v1 record under the v2 reader
/// schema gives (`scripts/check-schemas` checks that resolution). Every reader of the log —
/// steps, projections, the archive's restore — gets v1 records through here, so they fold v1
/// and v2 alike. A v3 would add `upcast_order_created_v2` and chain the two.
fn upcast_order_created_v1(v1: OrderCreatedV1) -> OrderCreated {
    OrderCreated {
        customer_id: v1.customer_id,
        lines: v1.lines,
        currency: v1.currency,
        shipping_address: v1.shipping_address,
        contact: None,
        sealed: None,
    }
}

fn read_sku_quantity(r: &mut Fields) -> Result<SkuQuantity, String> {
    Ok(SkuQuantity {
        sku: r.string("sku")?,
        quantity: r.int("quantity")?,
    })
}

/// Reads a decoded record's fields in schema order, checking each name and type.
struct Fields {
    record: &'static str,
    fields: std::vec::IntoIter<(String, Value)>,
}

impl Fields {
    fn new(record: &'static str, value: Value) -> Result<Fields, String> {
        match value {
            Value::Record(fields) => Ok(Fields {
                record,
                fields: fields.into_iter(),
            }),
            other => Err(format!(
                "{record}: expected a record, found {:?}",
                SchemaKind::from(&other)
            )),
        }
    }

    fn take(&mut self, name: &'static str) -> Result<Value, String> {
        match self.fields.next() {
            Some((found, value)) if found == name => Ok(value),
            Some((found, _)) => Err(format!(
                "{}: expected field {name}, found {found}",
                self.record
            )),
            None => Err(format!("{}: field {name} is missing", self.record)),
        }
    }

    fn mismatch(&self, name: &str, expected: &str, found: &Value) -> String {
        format!(
            "{}.{name}: expected {expected}, found {:?}",
            self.record,
            SchemaKind::from(found)
        )
    }

    fn string(&mut self, name: &'static str) -> Result<String, String> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.mismatch(name, "string", &other)),
        }
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, String> {
        match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                other => Err(self.mismatch(name, "null or string", &other)),
            },
            other => Err(self.mismatch(name, "union", &other)),
        }
    }

    fn bytes(&mut self, name: &'static str) -> Result<Vec<u8>, String> {
        match self.take(name)? {
            Value::Bytes(b) => Ok(b),
            other => Err(self.mismatch(name, "bytes", &other)),
        }
    }

    /// A `["null", record]` union.
    fn optional_record<T>(
        &mut self,
        name: &'static str,
        record: &'static str,
        read: impl FnOnce(&mut Fields) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                value => {
                    let mut inner = Fields::new(record, value)?;
                    let out = read(&mut inner)?;
                    inner.finish()?;
                    Ok(Some(out))
                }
            },
            other => Err(self.mismatch(name, "union", &other)),
        }
    }

    /// An array of UUIDs in their text form.
    fn uuid_strings(&mut self, name: &'static str) -> Result<Vec<Uuid>, String> {
        let values = match self.take(name)? {
            Value::Array(values) => values,
            other => return Err(self.mismatch(name, "array", &other)),
        };
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| match value {
                Value::String(s) => Uuid::parse_str(&s)
                    .map_err(|e| format!("{}.{name}[{i}]: {s:?} is not a UUID: {e}", self.record)),
                other => Err(self.mismatch(name, "array of strings", &other)),
            })
            .collect()
    }

    fn int(&mut self, name: &'static str) -> Result<i32, String> {
        match self.take(name)? {
            Value::Int(i) => Ok(i),
            other => Err(self.mismatch(name, "int", &other)),
        }
    }

    fn long(&mut self, name: &'static str) -> Result<i64, String> {
        match self.take(name)? {
            Value::Long(i) => Ok(i),
            other => Err(self.mismatch(name, "long", &other)),
        }
    }

    fn uuid(&mut self, name: &'static str) -> Result<Uuid, String> {
        match self.take(name)? {
            Value::Uuid(u) => Ok(u),
            other => Err(self.mismatch(name, "uuid", &other)),
        }
    }

    fn timestamp_micros(&mut self, name: &'static str) -> Result<DateTime<Utc>, String> {
        match self.take(name)? {
            Value::TimestampMicros(us) => DateTime::from_timestamp_micros(us).ok_or_else(|| {
                format!(
                    "{}.{name}: {us} µs since the epoch is out of range",
                    self.record
                )
            }),
            other => Err(self.mismatch(name, "timestamp-micros", &other)),
        }
    }

    fn record<T>(
        &mut self,
        name: &'static str,
        record: &'static str,
        read: impl FnOnce(&mut Fields) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut inner = Fields::new(record, self.take(name)?)?;
        let out = read(&mut inner)?;
        inner.finish()?;
        Ok(out)
    }

    fn records<T>(
        &mut self,
        name: &'static str,
        record: &'static str,
        mut read: impl FnMut(&mut Fields) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        match self.take(name)? {
            Value::Array(values) => values
                .into_iter()
                .map(|v| {
                    let mut inner = Fields::new(record, v)?;
                    let out = read(&mut inner)?;
                    inner.finish()?;
                    Ok(out)
                })
                .collect(),
            other => Err(self.mismatch(name, "array", &other)),
        }
    }

    fn finish(mut self) -> Result<(), String> {
        match self.fields.next() {
            Some((name, _)) => Err(format!("{}: unexpected field {name}", self.record)),
            None => Ok(()),
        }
    }
}

/// A structural check of a datum against its schema that allocates nothing.
///
/// apache-avro 0.21 sizes buffers from the lengths it reads (`vec![0; len]` for strings,
/// `reserve(count)` of 56-byte values for array blocks) before it reads the data, reads a
/// string or union cut short by end of input as `null` instead of failing, and ignores
/// trailing bytes. Walking the datum first, with every length and block count checked against
/// the bytes actually left, closes all three: after this check the library allocates at most a
/// small multiple of the datum's size.
mod bounds {
    use apache_avro::schema::SchemaKind;
    use apache_avro::Schema;

    /// `Ok` iff `datum` is exactly one complete value of `schema`.
    pub(super) fn check(schema: &Schema, datum: &[u8]) -> Result<(), String> {
        let mut cursor = Cursor { rest: datum };
        walk(schema, &mut cursor)?;
        match cursor.rest.len() {
            0 => Ok(()),
            n => Err(format!("{n} trailing bytes after the datum")),
        }
    }

    struct Cursor<'a> {
        rest: &'a [u8],
    }

    impl Cursor<'_> {
        fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
            if n > self.rest.len() {
                return Err(format!(
                    "{what} needs {n} bytes, only {} left",
                    self.rest.len()
                ));
            }
            let (head, tail) = self.rest.split_at(n);
            self.rest = tail;
            Ok(head)
        }

        /// A zig-zag varint, as Avro writes `int` and `long`: at most 10 bytes.
        fn long(&mut self) -> Result<i64, String> {
            let mut raw: u64 = 0;
            for i in 0..10 {
                let (&byte, tail) = self
                    .rest
                    .split_first()
                    .ok_or_else(|| "a varint is cut short".to_owned())?;
                self.rest = tail;
                raw |= u64::from(byte & 0x7F) << (7 * i);
                if byte & 0x80 == 0 {
                    // Zig-zag decoding: 0 -> 0, 1 -> -1, 2 -> 1, ... (`raw >> 1` fits an i64).
                    let magnitude = (raw >> 1) as i64;
                    return Ok(if raw & 1 == 0 { magnitude } else { !magnitude });
                }
            }
            Err("varint longer than 10 bytes".to_owned())
        }

        fn int(&mut self) -> Result<i32, String> {
            let v = self.long()?;
            i32::try_from(v).map_err(|_| format!("int value {v} out of range"))
        }

        /// A byte length or item count: never negative, never more than the bytes left.
        fn length(&mut self, what: &str) -> Result<usize, String> {
            let n = self.long()?;
            let n = usize::try_from(n).map_err(|_| format!("{what} has negative length {n}"))?;
            if n > self.rest.len() {
                return Err(format!(
                    "{what} claims {n}, but only {} bytes are left",
                    self.rest.len()
                ));
            }
            Ok(n)
        }
    }

    fn walk(schema: &Schema, c: &mut Cursor) -> Result<(), String> {
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match c.take(1, "a boolean")? {
                [0 | 1] => Ok(()),
                other => Err(format!("invalid boolean byte {other:?}")),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => c.int().map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => c.long().map(drop),
            Schema::Float => c.take(4, "a float").map(drop),
            Schema::Double => c.take(8, "a double").map(drop),
            Schema::Bytes => {
                let n = c.length("a byte string")?;
                c.take(n, "a byte string").map(drop)
            }
            Schema::Uuid => {
                // Our uuids are strings, and the spec's text form is exactly 36 characters.
                // apache-avro would also take 16 raw bytes or the 32-digit form as a uuid,
                // which no conforming writer produces; refusing them keeps decoding exact.
                let n = c.length("a uuid")?;
                let bytes = c.take(n, "a uuid")?;
                if bytes.len() != 36 {
                    return Err(format!("uuid string is {n} bytes, not 36"));
                }
                Ok(())
            }
            Schema::String => {
                let n = c.length("a string")?;
                let bytes = c.take(n, "a string")?;
                std::str::from_utf8(bytes)
                    .map(drop)
                    .map_err(|e| format!("string is not UTF-8: {e}"))
            }
            Schema::Fixed(f) => c.take(f.size, "a fixed").map(drop),
            Schema::Enum(e) => {
                let i = c.int()?;
                match usize::try_from(i) {
                    Ok(i) if i < e.symbols.len() => Ok(()),
                    _ => Err(format!("enum index {i} out of range")),
                }
            }
            Schema::Array(a) => blocks(c, |c| walk(&a.items, c)),
            Schema::Map(m) => blocks(c, |c| {
                walk(&Schema::String, c)?;
                walk(&m.types, c)
            }),
            Schema::Union(u) => {
                let i = c.long()?;
                let branch = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union branch {i} does not exist"))?;
                walk(branch, c)
            }
            Schema::Record(r) => r.fields.iter().try_for_each(|f| walk(&f.schema, c)),
            // Not used by any schema in `schemas/`; the round-trip tests would fail first.
            other => Err(format!(
                "{:?} is not supported by the bounds check",
                SchemaKind::from(other)
            )),
        }
    }

    /// Array and map blocks: a count, then that many items, until a zero count. A negative
    /// count is followed by the block's size in bytes (the spec's skippable form).
    fn blocks(
        c: &mut Cursor,
        mut item: impl FnMut(&mut Cursor) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = c.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                let size = c.long()?;
                if size < 0 {
                    return Err(format!("block size {size} is negative"));
                }
            }
            let count = count.unsigned_abs();
            // Every item of our schemas takes at least one byte, so a count larger than the
            // bytes left is a lie; rejecting it is what keeps the library's `reserve(count)`
            // proportional to the input.
            if count > c.rest.len() as u64 {
                return Err(format!(
                    "block claims {count} items, but only {} bytes are left",
                    c.rest.len()
                ));
            }
            for _ in 0..count {
                item(c)?;
            }
        }
    }
}
