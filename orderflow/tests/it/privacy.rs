//! Forgetting a customer on an immutable log (issue 14, item 4): orders of two customers go
//! through the intake (which seals their personal fields) and the pipeline; customer A is forgotten; then no
//! personal field of A is readable anywhere in Postgres, A's orders on the log still decode and
//! read as erased while B's still open, analysts' aggregates are unchanged (also after a
//! rebuild), and a restore from an archive taken before the erasure, with a key backup taken
//! after it, shows A erased and B readable, the non-personal tables equal.

use std::path::Path;

use events::{Contact, Event, EventBody};
use orderflow::operator::Change;
use privacy::{KeyState, Revealed};

use crate::archive::{archive_once, use_new_archive};
use crate::restore::operate;
use crate::support::{order, TestEnv};

/// Customer A's personal field values: none may be readable in Postgres after the forget.
const A_FIELDS: [&str; 7] = [
    "Grace Hopper",
    "1 Cobol Lane",
    "Apt 9",
    "Arlington",
    "VA 22201",
    "grace@example.com",
    "+1 555 0100",
];

/// An order of `customer` with the personal fields `f` (name, line1, line2, city, postal code,
/// email, phone).
fn order_of(order_id: &str, customer: &str, f: [&str; 7]) -> producers::OrderInput {
    let mut o = order(order_id, &[("SKU-A", 1, 1000)], "DE");
    o.customer_id = customer.into();
    o.shipping_address.name = f[0].into();
    o.shipping_address.line1 = f[1].into();
    o.shipping_address.line2 = Some(f[2].into());
    o.shipping_address.city = f[3].into();
    o.shipping_address.postal_code = f[4].into();
    o.contact = Some(Contact {
        email: f[5].into(),
        phone: Some(f[6].into()),
    });
    o
}

/// Every (table.column, rows) of the database whose text, JSON or bytes hold `needle`.
async fn scan(env: &TestEnv, needle: &str) -> Vec<(String, i64)> {
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type
         FROM information_schema.columns c
         JOIN information_schema.tables t
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE t.table_type = 'BASE TABLE'
           AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
           AND c.data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea')",
    )
    .fetch_all(&env.pool)
    .await
    .expect("columns");
    assert!(
        columns.len() > 50,
        "the scan sees every table: {}",
        columns.len()
    );
    let mut found = Vec::new();
    for (schema, table, column, kind) in columns {
        let test = if kind == "bytea" {
            format!("position(convert_to($1, 'UTF8') IN \"{column}\") > 0")
        } else {
            format!("strpos(\"{column}\"::text, $1) > 0")
        };
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE {test}"
        ))
        .bind(needle)
        .fetch_one(&env.pool)
        .await
        .unwrap_or_else(|e| panic!("{schema}.{table}.{column}: {e}"));
        if n > 0 {
            found.push((format!("{schema}.{table}.{column}"), n));
        }
    }
    found
}

/// What analysts read: totals and counts per status, day and sku.
async fn aggregates(env: &TestEnv) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT status, count(*), sum(total_minor), date_trunc('day', created_at)
         FROM analytics.orders GROUP BY 1, 4 ORDER BY 1, 4",
        "SELECT * FROM analytics.daily_sales ORDER BY 1, 2",
        "SELECT * FROM analytics.sku_daily_sales ORDER BY 1, 2, 3",
        "SELECT customer_id, currency, orders_placed, orders_completed, revenue_minor
         FROM analytics.customer_summary ORDER BY 1, 2",
        "SELECT event_type, count(*) FROM analytics.order_events GROUP BY 1 ORDER BY 1",
    ] {
        out.extend(rows(env, sql).await);
    }
    out
}

async fn rows(env: &TestEnv, sql: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::text FROM ({sql}) t ORDER BY 1"
    ))
    .fetch_all(&env.pool)
    .await
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The tables a restore rebuilds that hold no time of their own, as rows.
async fn non_personal_tables(env: &TestEnv) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT order_id, status, amount_minor, decline_reason FROM payment.payments",
        "SELECT order_id, status, failure_reason, tracking_number FROM shipping.shipments",
        "SELECT order_id, address, country, customer_id FROM shipping.orders",
        "SELECT order_id, state, customer_id, total_minor FROM saga.orders",
        "SELECT order_id, customer_id, status, total_minor FROM analytics.orders",
    ] {
        out.push(sql.to_string());
        out.extend(rows(env, sql).await);
    }
    out
}

/// Every archived `OrderCreated` in `dir`, as events.
fn archived_orders(dir: &Path, topic: &str) -> Vec<Event> {
    let manifest = ::archive::Manifest::load(dir, topic).expect("manifest");
    let mut reader = ::archive::ArchiveReader::new(dir, &manifest);
    let mut orders = Vec::new();
    while let Some(batch) = reader.next_batch(1000).expect("archive readable") {
        for record in batch {
            let event = events::decode(record.value.as_deref().expect("value"))
                .expect("every archived record decodes");
            if matches!(event.body, EventBody::OrderCreated(_)) {
                orders.push(event);
            }
        }
    }
    orders
}

/// What each order of `orders` reveals with the keys of `env` (order id, customer, name or
/// "erased").
async fn revealed(env: &TestEnv, orders: &[Event]) -> Vec<(String, String, String)> {
    let ring = env.settings.privacy.key_ring().expect("master key");
    let mut conn = env.pool.acquire().await.expect("connection");
    let mut out = Vec::new();
    for event in orders {
        let EventBody::OrderCreated(o) = &event.body else {
            unreachable!()
        };
        let id = &event.meta.order_id;
        let key_id = privacy::personal::sealed_key_id(o, id)
            .expect("key id")
            .expect("sealed");
        let keys = ring.by_ids(&mut conn, &[key_id]).await.expect("keys");
        let key = match keys.get(&key_id) {
            Some(KeyState::Live(k)) => Some(k),
            _ => None,
        };
        let shown = match privacy::reveal(o, id, key).expect("opens or is erased") {
            Revealed::Unsealed(p) | Revealed::Plain(p) => p.name,
            Revealed::Erased => "erased".to_string(),
        };
        out.push((id.clone(), o.customer_id.clone(), shown));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forgotten_customer_is_erased_everywhere_and_stays_erased_after_a_rebuild_and_a_restore()
{
    let mut env = TestEnv::new().await;
    let dir = use_new_archive(&mut env);
    // Stock only from events, so that a restore from the archive alone has it.
    sqlx::query("DELETE FROM inventory.stock")
        .execute(&env.pool)
        .await
        .expect("stock emptied");
    env.start_all();
    operate(&env, Change::AdjustStock(vec![("SKU-A".into(), 10)])).await;
    env.wait_count(
        "SELECT count(*) FROM inventory.stock WHERE sku = 'SKU-A' AND available = 10",
        1,
    )
    .await;

    // Sealed on the way in, as the intake and the API do: each customer's data key.
    let b_fields = [
        "Alan Turing",
        "2 Bletchley Park",
        "Hut 8",
        "Milton Keynes",
        "MK3 6EB",
        "alan@example.com",
        "+44 1908 640404",
    ];
    let inputs = [
        order_of("priv-a1", "cust-a", A_FIELDS),
        order_of("priv-a2", "cust-a", A_FIELDS),
        order_of("priv-b1", "cust-b", b_fields),
    ];
    // Through the intake, as upstream systems publish: it issues each customer's data key and
    // seals the personal fields before the orders reach the log.
    env.publish_to_intake(&inputs).await;
    // Something A's system sent that is not an order at all, naming A: the intake
    // dead-letters the bytes as they came.
    let junk = format!("not avro: cust-a {}", A_FIELDS.join(" "));
    let intake_topic = env.settings.kafka.intake_topic.clone();
    env.produce_raw_to(&intake_topic, "priv-a9", junk.as_bytes())
        .await;
    for input in &inputs {
        assert_eq!(env.wait_terminal(&input.order_id).await.0, "completed");
    }
    // The live shipping step opened the sealed address in memory and kept only the sealed
    // copy.
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.orders WHERE address ? 'ciphertext'")
            .await,
        3
    );
    env.wait_count(
        "SELECT count(*) FROM pipeline.dead_letters WHERE position('cust-a'::bytea IN payload) > 0",
        1,
    )
    .await;
    // An intake-style dead letter holding A's order in clear (a valid order the intake
    // refused, as an upstream system sent it).
    let clear = inputs[0]
        .clone()
        .into_event(chrono::Utc::now())
        .expect("valid");
    sqlx::query(
        "INSERT INTO pipeline.dead_letters (id, consumer, topic, partition, \"offset\", payload,
             dlq_topic, error_class, error_kind, error, attempts, history, first_failed_at,
             last_failed_at)
         VALUES (gen_random_uuid(), 'intake', 'intake', 0, 7, $1, 'intake.dlq', 'permanent',
                 'rule', 'refused', 1, '[]', now(), now())",
    )
    .bind(events::encode(&clear).expect("encoded"))
    .execute(&env.pool)
    .await
    .expect("dead letter");
    // And the same clear order parked by a step no one runs here (waiting for a retry).
    sqlx::query(
        "INSERT INTO pipeline.parked (step, order_id, topic, partition, \"offset\", payload)
         VALUES ('retired-step', 'priv-a1', 'intake', 0, 7, $1)",
    )
    .bind(events::encode(&clear).expect("encoded"))
    .execute(&env.pool)
    .await
    .expect("parked");
    env.wait_count(
        "SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    env.stop().await;
    archive_once(&env.settings).await.expect("archive");
    // The archive taken before the forget, kept aside for the restore.
    let before_dir = dir.with_extension("before-forget");
    let _ = std::fs::remove_dir_all(&before_dir);
    copy_dir(&dir, &before_dir);

    // (a) can fail: before the forget the scan finds A's fields (in the dead letter).
    for field in A_FIELDS {
        assert!(
            !scan(&env, field).await.is_empty(),
            "{field} is readable before the forget"
        );
    }
    let aggregates_before = aggregates(&env).await;
    let a_keys: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT key_id FROM privacy.data_keys WHERE customer_id = 'cust-a' ORDER BY key_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("A's keys");
    assert_eq!(a_keys.len(), 1, "the intake issued A one key");

    // A key backup taken before the forget: it still holds A's live key.
    let old_backup = dir.with_extension("keys-before.json");
    orderflow::keys::export(&env.pool, &old_backup)
        .await
        .expect("export");

    env.start_all();
    let command = uuid::Uuid::new_v4();
    let forgotten = orderflow::operator::forget(&env.settings, &env.pool, command, "cust-a")
        .await
        .expect("forgotten");
    assert!(forgotten.new);
    let EventBody::CustomerForgotten(f) = &forgotten.event.body else {
        panic!("{:?}", forgotten.event.body)
    };
    assert_eq!(f.key_ids, a_keys);
    // A repeat with the same command id changes and appends nothing.
    let again = orderflow::operator::forget(&env.settings, &env.pool, command, "cust-a")
        .await
        .expect("repeat");
    assert!(!again.new);
    assert_eq!(again.event.meta.event_id, forgotten.event.meta.event_id);
    assert_eq!(
        env.count("SELECT count(*) FROM pipeline.outbox WHERE event_type = 'CustomerForgotten'")
            .await,
        1
    );
    // The shipping step applies CustomerForgotten too (its scrub is what a replay redoes).
    env.wait_count(
        &format!(
            "SELECT count(*) FROM pipeline.inbox WHERE step = 'shipping' AND event_id = '{}'",
            forgotten.event.meta.event_id
        ),
        1,
    )
    .await;
    // An unknown customer is forgotten all the same, with no keys.
    let nobody = orderflow::operator::forget(
        &env.settings,
        &env.pool,
        uuid::Uuid::new_v4(),
        "cust-never-seen",
    )
    .await
    .expect("an erasure request succeeds");
    assert!(matches!(&nobody.event.body, EventBody::CustomerForgotten(f) if f.key_ids.is_empty()));

    // (a) No personal field of A is readable anywhere in Postgres; B's kept copy is still
    // there sealed, and the dead letter stays with a note.
    for field in A_FIELDS {
        assert_eq!(scan(&env, field).await, vec![], "{field} after the forget");
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM pipeline.dead_letters
             WHERE history::text LIKE '%customer forgotten%'"
        )
        .await,
        2
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM shipping.orders
             WHERE (customer_id = 'cust-a') = (address IS NULL)"
        )
        .await,
        3
    );
    let scrubbed: std::collections::BTreeMap<&str, u64> =
        forgotten.scrubbed.iter().copied().collect();
    assert_eq!(scrubbed["shipping.orders"], 2);
    assert_eq!(scrubbed["pipeline.dead_letters"], 2);
    assert_eq!(scrubbed["pipeline.parked"], 1);

    // (b) A's orders on the log decode and read as erased; B's still open.
    env.wait_count(
        "SELECT count(*) FROM pipeline.outbox WHERE published_at IS NULL",
        0,
    )
    .await;
    env.stop().await;
    archive_once(&env.settings).await.expect("archive");
    let want = vec![
        ("priv-a1".into(), "cust-a".into(), "erased".into()),
        ("priv-a2".into(), "cust-a".into(), "erased".into()),
        ("priv-b1".into(), "cust-b".into(), "Alan Turing".into()),
    ];
    let topic = env.settings.kafka.topic.clone();
    assert_eq!(revealed(&env, &archived_orders(&dir, &topic)).await, want);

    // (c) Analysts' aggregates are unchanged by the forget, and by a rebuild.
    assert_eq!(aggregates(&env).await, aggregates_before);
    let code = orderflow::replay::run(
        &env.settings,
        &env.pool,
        &projections::rebuild::Options::default(),
    )
    .await
    .expect("rebuild");
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(aggregates(&env).await, aggregates_before);
    let tables_after_forget = non_personal_tables(&env).await;

    // (d) A key backup taken after the forget; a restore from the archive taken before it.
    let backup = dir.with_extension("keys.json");
    assert_eq!(
        orderflow::keys::export(&env.pool, &backup)
            .await
            .expect("export"),
        2
    );
    let text = std::fs::read_to_string(&backup).expect("backup");
    assert!(!text.contains(crate::support::TEST_MASTER_KEY));
    let mut after = TestEnv::new().await;
    sqlx::query("DELETE FROM inventory.stock")
        .execute(&after.pool)
        .await
        .expect("stock emptied");
    after.settings.kafka.group_prefix = env.settings.kafka.group_prefix.clone();
    orderflow::components::ensure_topics(&after.settings, crate::support::PARTITIONS)
        .await
        .expect("topics");
    point_manifest_at(&before_dir, &after.settings.kafka.topic);
    let report = orderflow::restore::restore_with_keys(
        &after.settings,
        &after.pool,
        &before_dir,
        Some(&backup),
    )
    .await
    .expect("restore");
    assert_eq!(report.keys.map(|k| k.records), Some(2));
    let restored_orders = archived_orders(&before_dir, &after.settings.kafka.topic);
    assert_eq!(revealed(&after, &restored_orders).await, want);
    assert_eq!(non_personal_tables(&after).await, tables_after_forget);
    for field in A_FIELDS {
        assert_eq!(
            scan(&after, field).await,
            vec![],
            "{field} after the restore"
        );
    }
    after.finish().await;

    // The other way round: the archive taken after the forget and the backup taken before it.
    // The backup brings A's key back; the archived CustomerForgotten destroys it again.
    let mut after2 = TestEnv::new().await;
    sqlx::query("DELETE FROM inventory.stock")
        .execute(&after2.pool)
        .await
        .expect("stock emptied");
    after2.settings.kafka.group_prefix = env.settings.kafka.group_prefix.clone();
    orderflow::components::ensure_topics(&after2.settings, crate::support::PARTITIONS)
        .await
        .expect("topics");
    point_manifest_at(&dir, &after2.settings.kafka.topic);
    let report = orderflow::restore::restore_with_keys(
        &after2.settings,
        &after2.pool,
        &dir,
        Some(&old_backup),
    )
    .await
    .expect("restore");
    assert_eq!((report.keys_destroyed, report.forgotten), (1, 2));
    let restored_orders = archived_orders(&dir, &after2.settings.kafka.topic);
    assert_eq!(revealed(&after2, &restored_orders).await, want);
    assert_eq!(non_personal_tables(&after2).await, tables_after_forget);
    after2.finish().await;
    env.finish().await;
    let _ = std::fs::remove_dir_all(&before_dir);
    let _ = std::fs::remove_file(&backup);
    let _ = std::fs::remove_file(&old_backup);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Point the archive in `dir` at `topic` (the restored log has another name here).
fn point_manifest_at(dir: &Path, topic: &str) {
    let path = dir.join(::archive::MANIFEST);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read manifest")).expect("json");
    manifest["topic"] = serde_json::Value::String(topic.to_string());
    std::fs::write(&path, serde_json::to_vec(&manifest).expect("json")).expect("write manifest");
}

/// A sealed order whose seal does not check out (a changed byte; another order's seal) is
/// dead-lettered by the shipping step with the typed reason, and nothing of it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_seal_is_dead_lettered_by_shipping_with_its_reason() {
    let mut env = TestEnv::new().await;
    env.start(&[orderflow::components::Component::Shipping]);
    let ring = env.settings.privacy.key_ring().expect("master key");
    let key = ring.issue("cust-t");
    {
        let mut tx = env.pool.begin().await.expect("begin");
        privacy::KeyRing::insert(&mut tx, std::slice::from_ref(&key))
            .await
            .expect("key");
        tx.commit().await.expect("commit");
    }
    let sealed = |order_id: &str, sealed_for: &str| {
        let input = order_of(order_id, "cust-t", A_FIELDS);
        let mut event = input.into_event(chrono::Utc::now()).expect("valid");
        let EventBody::OrderCreated(o) = &mut event.body else {
            unreachable!()
        };
        privacy::seal(o, sealed_for, &key.key).expect("sealed");
        event
    };
    let mut changed = sealed("priv-t1", "priv-t1");
    if let EventBody::OrderCreated(o) = &mut changed.body {
        o.sealed.as_mut().expect("sealed").ciphertext[5] ^= 0x20;
    }
    let swapped = sealed("priv-t2", "priv-other");
    let fine = sealed("priv-t3", "priv-t3");
    for event in [&changed, &swapped, &fine] {
        env.produce_raw(
            &event.meta.order_id,
            &events::encode(event).expect("encoded"),
        )
        .await;
    }
    env.wait_count(
        "SELECT count(*) FROM shipping.orders WHERE order_id = 'priv-t3'",
        1,
    )
    .await;
    env.wait_count(
        "SELECT count(*) FROM pipeline.dead_letters
         WHERE error_class = 'permanent' AND error LIKE '%sealed personal data refused (tampered)%'
           AND (error LIKE '%order priv-t1%' OR error LIKE '%order priv-t2%')",
        2,
    )
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM shipping.orders WHERE order_id IN ('priv-t1', 'priv-t2')")
            .await,
        0,
        "a refused record is not applied"
    );
    env.stop().await;
    env.finish().await;
}
