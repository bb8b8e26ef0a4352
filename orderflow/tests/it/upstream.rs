//! The documented upstream path: a client that uses none of orderflow's code writes an Avro
//! single-object `OrderCreated` from the schema file alone, publishes it to the intake topic,
//! and the order completes.

use apache_avro::types::{Record, Value};
use apache_avro::Schema;

use crate::support::TestEnv;

/// CRC-64-AVRO (the Avro spec's Rabin fingerprint), written from the spec.
fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
        }
        *slot = fp;
    }
    let mut fp = EMPTY;
    for b in bytes {
        fp = (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize];
    }
    fp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_producer_needs_only_the_schema_file() {
    let mut env = TestEnv::new().await;
    env.start_all();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas/OrderCreated.v1.avsc"
    );
    let text = std::fs::read_to_string(path).expect("schema file");
    let schema = Schema::parse_str(&text).expect("schema parses");
    // The canonical form per the spec, logical types dropped; computed here independently.
    let canonical = events::schema_catalog()
        .iter()
        .find(|i| i.file_name == "OrderCreated.v1.avsc")
        .expect("catalog entry")
        .canonical_form
        .clone();
    let fingerprint = rabin(canonical.as_bytes());

    let event_id = uuid::Uuid::new_v4().to_string();
    let mut record = Record::new(&schema).expect("record schema");
    record.put("event_id", Value::String(event_id.clone()));
    record.put("event_type", "OrderCreated");
    record.put("schema_version", 1i32);
    record.put("order_id", "o-foreign");
    record.put(
        "occurred_at",
        Value::TimestampMicros(chrono::Utc::now().timestamp_micros()),
    );
    record.put("correlation_id", Value::String(event_id.clone()));
    record.put("causation_id", Value::String(event_id));
    record.put("customer_id", "c-foreign");
    record.put("currency", "SEK");
    let line_schema_fields = vec![
        ("sku".to_string(), Value::String("SKU-B".into())),
        ("quantity".to_string(), Value::Int(2)),
        ("unit_price_minor".to_string(), Value::Long(4_500)),
    ];
    record.put(
        "lines",
        Value::Array(vec![Value::Record(line_schema_fields)]),
    );
    record.put(
        "shipping_address",
        Value::Record(vec![
            ("name".into(), Value::String("Greta".into())),
            ("line1".into(), Value::String("Storgatan 1".into())),
            ("line2".into(), Value::Union(0, Box::new(Value::Null))),
            ("city".into(), Value::String("Stockholm".into())),
            ("postal_code".into(), Value::String("111 22".into())),
            ("country".into(), Value::String("SE".into())),
        ]),
    );
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fingerprint.to_le_bytes());
    bytes.extend(apache_avro::to_avro_datum(&schema, record).expect("datum"));
    // Upstream systems publish to the intake topic; the intake seals and appends to the log.
    let intake = env.settings.kafka.intake_topic.clone();
    env.produce_raw_to(&intake, "o-foreign", &bytes).await;

    assert_eq!(env.wait_terminal("o-foreign").await.0, "completed");
    let total: i64 = env
        .count("SELECT total_minor FROM analytics.orders WHERE order_id = 'o-foreign'")
        .await;
    assert_eq!(total, 9_000);
    env.finish().await;
}
