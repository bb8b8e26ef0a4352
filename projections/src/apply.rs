//! Records of the log applied to a generation, batch by batch: the live projector's work and a
//! rebuild's catch-up, the same code for both.
//!
//! A batch is decoded first ([`Decoded::decode`], pure CPU, outside any transaction: the
//! projector decodes the next batch while the current one is written). [`apply`] then runs in
//! the caller's transaction with a fixed number of statements whatever the batch size: the
//! timeline rows in one insert (events already there are duplicates and change nothing else),
//! the stored state of every order with a new event loaded with one query per table, the
//! events folded onto it in memory by [`Fold`] (the fold a rebuild runs from empty), every
//! table written with one set-based statement per kind of change ([`store::write`]), and the
//! positions moved. Nothing here talks to Kafka.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{Event, EventBody};
use platform::deadletter::{self, DeadLetter, ErrorClass, FailedAttempt};
use platform::outbox::OutboxRow;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::fold::{self, EventRow, Fold, LogPosition, OrderRow};
use crate::store::{self, Advance, Target};
use crate::NAME;

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProjectionOutcome {
    pub applied: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// Orders this batch ended: `completed` or `cancelled`, and the time from their
    /// `OrderCreated` to the terminal event (both event times), for
    /// `orderflow_order_terminal_seconds`. Empty for batches without a terminal event.
    pub terminal: Vec<(&'static str, chrono::TimeDelta)>,
    /// Orders this batch applied a new event to (sorted, once each): the live projector
    /// announces them ([`crate::changes`]).
    pub changed_orders: Vec<String>,
}

/// A batch of records with each one decoded: its event and timeline row, or why it does not
/// decode.
pub struct Decoded {
    messages: Vec<OwnedMessage>,
    decoded: Vec<Result<(Event, EventRow), String>>,
}

impl Decoded {
    /// Decode every record of `messages` (no I/O).
    pub fn decode(messages: Vec<OwnedMessage>) -> Decoded {
        let decoded = messages
            .iter()
            .map(|message| {
                let event = match message.payload() {
                    None => Err("record has no value".to_string()),
                    Some(payload) => events::decode(payload).map_err(|e| e.to_string()),
                }?;
                let row = fold::timeline_row(
                    &event,
                    &LogPosition {
                        topic: message.topic(),
                        partition: message.partition(),
                        offset: message.offset(),
                    },
                );
                Ok((event, row))
            })
            .collect();
        Decoded { messages, decoded }
    }

    /// The records, as read.
    pub fn messages(&self) -> &[OwnedMessage] {
        &self.messages
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Split into at most `parts` batches that each hold whole partitions (so each can be
    /// applied in a transaction of its own, with the positions of its partitions), with about
    /// as many records each. Records keep their order.
    pub fn split(self, parts: usize) -> Vec<Decoded> {
        let mut sizes: BTreeMap<(&str, i32), usize> = BTreeMap::new();
        for m in &self.messages {
            *sizes.entry((m.topic(), m.partition())).or_default() += 1;
        }
        let parts = parts.clamp(1, sizes.len().max(1));
        if parts == 1 {
            return vec![self];
        }
        // Largest partitions first, each to the part with the fewest records so far.
        let mut by_size: Vec<((&str, i32), usize)> = sizes.into_iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut load = vec![0usize; parts];
        let mut part_of: HashMap<(String, i32), usize> = HashMap::new();
        for ((topic, partition), size) in by_size {
            let (emptiest, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(i, records)| (**records, *i))
                .expect("at least one part");
            load[emptiest] += size;
            part_of.insert((topic.to_string(), partition), emptiest);
        }
        let mut split: Vec<Decoded> = (0..parts)
            .map(|_| Decoded {
                messages: Vec::new(),
                decoded: Vec::new(),
            })
            .collect();
        for (message, decoded) in self.messages.into_iter().zip(self.decoded) {
            let part = part_of[&(message.topic().to_string(), message.partition())];
            split[part].messages.push(message);
            split[part].decoded.push(decoded);
        }
        split
    }
}

/// Set an undecodable record aside for the projections group `group`: the dead-letter row and
/// its outbox record (returned, to publish).
pub async fn dead_letter_undecodable(
    tx: &mut PgConnection,
    group: &str,
    message: &OwnedMessage,
    reason: String,
) -> Result<Option<OutboxRow>, sqlx::Error> {
    let history = vec![FailedAttempt {
        at: Utc::now(),
        class: ErrorClass::Permanent,
        kind: "decode".into(),
        error: reason,
    }];
    deadletter::dead_letter(&mut *tx, DeadLetter::of(NAME, group, message, history)).await
}

/// Apply a decoded batch to `target` inside the caller's transaction: timeline rows, every
/// read model, positions. Records before the target's stored position and events already in
/// its timeline change nothing. Undecodable records are dead-lettered when `dead_letter_group`
/// is given (the live projector) and only counted otherwise (a rebuild: the live one already
/// set them aside); either way the position moves past them.
pub async fn apply(
    tx: &mut PgConnection,
    target: &Target,
    batch: &Decoded,
    dead_letter_group: Option<&str>,
) -> anyhow::Result<(ProjectionOutcome, Vec<OutboxRow>)> {
    let mut outcome = ProjectionOutcome::default();
    let mut dead = Vec::new();
    store::plan_key_lookups(tx, true).await?;
    let stored: HashMap<(String, i32), i64> = store::positions(tx, target, false)
        .await?
        .into_iter()
        .map(|p| ((p.topic, p.partition), p.next_offset))
        .collect();
    // Indexes into the batch of the records at or after the stored positions.
    let pending: Vec<usize> = (0..batch.len())
        .filter(|i| {
            let m = &batch.messages[*i];
            stored
                .get(&(m.topic().to_string(), m.partition()))
                .is_none_or(|next| m.offset() >= *next)
        })
        .collect();
    outcome.duplicates += batch.len() - pending.len();
    let mut rows: Vec<&EventRow> = Vec::with_capacity(pending.len());
    let mut decoded: Vec<(usize, &Event)> = Vec::with_capacity(pending.len());
    for &i in &pending {
        match &batch.decoded[i] {
            // Stock and customer events belong to no order: the read models skip them (the
            // steps apply them); the position still moves past them.
            Ok((event, _)) if !event.event_type().concerns_order() => {}
            Ok((event, row)) => {
                rows.push(row);
                decoded.push((i, event));
            }
            Err(reason) => {
                outcome.rejected += 1;
                let Some(group) = dead_letter_group else {
                    continue;
                };
                // Undecodable records are the only failure a projection dead-letters:
                // everything that decodes can be folded.
                let message = &batch.messages[i];
                dead.extend(dead_letter_undecodable(tx, group, message, reason.clone()).await?);
            }
        }
    }
    let fresh = store::insert_events(tx, target, &rows).await?;
    let mut seen: HashSet<Uuid> = HashSet::with_capacity(fresh.len());
    let new_events: Vec<(usize, &Event)> = decoded
        .iter()
        .filter(|(_, event)| {
            fresh.contains(&event.meta.event_id) && seen.insert(event.meta.event_id)
        })
        .copied()
        .collect();
    outcome.applied = new_events.len();
    outcome.duplicates += decoded.len() - new_events.len();
    let mut order_ids: Vec<&str> = new_events
        .iter()
        .map(|(_, event)| event.meta.order_id.as_str())
        .collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let (orders, lines, steps) = store::load(tx, target, &order_ids).await?;
    outcome.changed_orders = order_ids.iter().map(|id| id.to_string()).collect();
    outcome.terminal = terminal_ages(&orders, &new_events);
    let mut folding = Fold::resume(orders, lines, steps);
    for (_, event) in &new_events {
        folding.apply(event);
    }
    store::write(tx, target, &folding.into_changes()).await?;
    store::advance(tx, target, &advances(batch, &pending, &new_events)).await?;
    store::plan_key_lookups(tx, false).await?;
    Ok((outcome, dead))
}

/// The orders `events` end (their first `OrderCompleted` or `OrderCancelled`, for orders not
/// already terminal in `stored`), with the time from their creation to that event.
fn terminal_ages(
    stored: &[OrderRow],
    events: &[(usize, &Event)],
) -> Vec<(&'static str, chrono::TimeDelta)> {
    let ends = |e: &Event| match e.body {
        EventBody::OrderCompleted(_) => Some("completed"),
        EventBody::OrderCancelled(_) => Some("cancelled"),
        _ => None,
    };
    if !events.iter().any(|(_, e)| ends(e).is_some()) {
        return Vec::new();
    }
    let mut created: HashMap<&str, Option<DateTime<Utc>>> = stored
        .iter()
        .map(|o| {
            let open = o.completed_at.is_none() && o.cancelled_at.is_none();
            (o.order_id.as_str(), open.then_some(o.created_at))
        })
        .collect();
    let mut ages = Vec::new();
    for (_, event) in events {
        let order_id = event.meta.order_id.as_str();
        if matches!(event.body, EventBody::OrderCreated(_)) {
            created
                .entry(order_id)
                .or_insert(Some(event.meta.occurred_at));
        } else if let Some(outcome) = ends(event) {
            // Taken once: a second terminal event of the order changes nothing.
            if let Some(Some(at)) = created.insert(order_id, None) {
                ages.push((outcome, event.meta.occurred_at - at));
            }
        }
    }
    ages
}

/// Per partition of the `pending` records: the next offset, the latest event time and how many
/// new events were applied.
fn advances(batch: &Decoded, pending: &[usize], applied: &[(usize, &Event)]) -> Vec<Advance> {
    let mut per_partition: BTreeMap<(&str, i32), Advance> = BTreeMap::new();
    for &i in pending {
        let message = &batch.messages[i];
        let entry = per_partition
            .entry((message.topic(), message.partition()))
            .or_insert_with(|| Advance {
                topic: message.topic().to_string(),
                partition: message.partition(),
                next_offset: 0,
                last_event_at: None,
                events_applied: 0,
            });
        entry.next_offset = entry.next_offset.max(message.offset() + 1);
    }
    for (i, event) in applied {
        let message = &batch.messages[*i];
        if let Some(entry) = per_partition.get_mut(&(message.topic(), message.partition())) {
            entry.events_applied += 1;
            entry.last_event_at = entry.last_event_at.max(Some(event.meta.occurred_at));
        }
    }
    per_partition.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone};
    use events::{EventBody, Metadata, OrderCompleted};
    use rdkafka::Timestamp;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, second)
            .single()
            .expect("valid time")
    }

    fn event(second: u32) -> Event {
        Event {
            meta: Metadata {
                event_id: Uuid::new_v4(),
                order_id: "o1".into(),
                occurred_at: at(second),
                correlation_id: Uuid::nil(),
                causation_id: Uuid::nil(),
            },
            body: EventBody::OrderCompleted(OrderCompleted {
                total_minor: 100,
                currency: "EUR".into(),
            }),
        }
    }

    fn record(partition: i32, offset: i64, payload: Option<Vec<u8>>) -> OwnedMessage {
        OwnedMessage::new(
            payload,
            Some(b"o1".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn decoding_keeps_every_record_and_says_why_one_does_not_decode() {
        let good = event(1);
        let payload = events::encode(&good).expect("encodes");
        let batch = Decoded::decode(vec![
            record(2, 7, Some(payload)),
            record(2, 8, None),
            record(3, 0, Some(b"not avro".to_vec())),
        ]);
        assert_eq!(batch.len(), 3);
        let (decoded, row) = batch.decoded[0].as_ref().expect("decodes");
        assert_eq!(decoded, &good);
        assert_eq!(
            (row.event_id, row.topic.as_str(), row.partition, row.offset),
            (good.meta.event_id, "t", 2, 7)
        );
        assert_eq!(
            batch.decoded[1].as_ref().err().map(String::as_str),
            Some("record has no value")
        );
        assert!(batch.decoded[2].is_err());
    }

    #[test]
    fn a_split_keeps_partitions_whole_and_in_order_and_about_even() {
        // partitions of the records in log order -> parts wanted -> partitions per part
        type Case = (&'static [i32], usize, Vec<Vec<i32>>);
        let table: [Case; 5] = [
            (&[], 2, vec![vec![]]),
            (&[0, 1, 0, 1], 1, vec![vec![0, 1, 0, 1]]),
            (&[0, 0, 0], 2, vec![vec![0, 0, 0]]),
            (&[0, 1, 2, 0, 1, 0], 2, vec![vec![0, 0, 0], vec![1, 2, 1]]),
            (
                &[5, 4, 3, 2, 1, 0, 5, 4, 5],
                3,
                vec![vec![5, 5, 5], vec![4, 2, 4], vec![3, 1, 0]],
            ),
        ];
        for (partitions, parts, want) in table {
            let batch = Decoded::decode(
                partitions
                    .iter()
                    .enumerate()
                    .map(|(offset, p)| record(*p, offset as i64, None))
                    .collect(),
            );
            let split = batch.split(parts);
            let got: Vec<Vec<i32>> = split
                .iter()
                .map(|part| {
                    let offsets: Vec<i64> = part.messages().iter().map(|m| m.offset()).collect();
                    assert!(offsets.is_sorted(), "{partitions:?}: order kept");
                    assert_eq!(part.decoded.len(), part.len());
                    part.messages().iter().map(|m| m.partition()).collect()
                })
                .collect();
            assert_eq!(got, want, "{partitions:?} in {parts}");
        }
    }

    #[test]
    fn positions_move_past_every_pending_record_and_count_only_applied_events() {
        // Records as (partition, offset, event second); `None` does not decode.
        let records = [
            (0, 10, Some(1)),
            (0, 11, None),
            (0, 12, Some(5)),
            (1, 4, Some(3)),
        ];
        let events: Vec<Option<Event>> = records.iter().map(|r| r.2.map(event)).collect();
        let batch = Decoded::decode(
            records
                .iter()
                .zip(&events)
                .map(|((p, o, _), e)| {
                    record(
                        *p,
                        *o,
                        e.as_ref().map(|e| events::encode(e).expect("encodes")),
                    )
                })
                .collect(),
        );
        // (pending, applied) -> per partition (next offset, last event time, events applied)
        type Expected = Vec<(i32, i64, Option<u32>, i64)>;
        let table: [(Vec<usize>, Vec<usize>, Expected); 4] = [
            (vec![], vec![], vec![]),
            (
                vec![0, 1, 2, 3],
                vec![0, 2, 3],
                vec![(0, 13, Some(5), 2), (1, 5, Some(3), 1)],
            ),
            // Duplicates and undecodable records move the position, counting nothing.
            (
                vec![0, 1, 2, 3],
                vec![0],
                vec![(0, 13, Some(1), 1), (1, 5, None, 0)],
            ),
            // Records below the stored position are not pending: their partition stays.
            (vec![1, 2], vec![2], vec![(0, 13, Some(5), 1)]),
        ];
        for (pending, applied, want) in table {
            let applied: Vec<(usize, &Event)> = applied
                .iter()
                .map(|i| (*i, events[*i].as_ref().expect("an event")))
                .collect();
            let got: Expected = advances(&batch, &pending, &applied)
                .into_iter()
                .map(|a| {
                    assert_eq!(a.topic, "t");
                    (
                        a.partition,
                        a.next_offset,
                        a.last_event_at.map(|t| t.timestamp() as u32 % 60),
                        a.events_applied,
                    )
                })
                .collect();
            assert_eq!(got, want, "pending {pending:?}, applied {applied:?}");
        }
    }
}
