//! Which orders a committed projector batch changed, told to whoever listens: the projector
//! sends Postgres notifications on [`CHANNEL`] inside its batch transaction (Postgres delivers
//! them at commit, never for a batch rolled back), and the HTTP API's `Prefer: wait` listens.
//! The payload format is defined here, on both sides: a JSON array of order ids, or [`ALL`]
//! when an id does not fit a notification.
//!
//! Nothing here decides what a change is: every order a batch applied a new event to is
//! announced.

use sqlx::PgConnection;

/// The notification channel of order changes.
pub const CHANNEL: &str = "orderflow_order_changes";

/// The payload meaning "any order may have changed".
pub const ALL: &str = "*";

/// Postgres refuses payloads of 8000 bytes or more; stay well below.
const PAYLOAD_MAX_BYTES: usize = 7_000;

/// The payloads announcing `order_ids`: JSON arrays of at most [`PAYLOAD_MAX_BYTES`] each, or
/// one [`ALL`] when an id alone does not fit.
pub fn payloads(order_ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk: Vec<&str> = Vec::new();
    let mut size = 2;
    for id in order_ids {
        // The id quoted and escaped, and its comma.
        let cost = serde_json::to_string(id)
            .map(|s| s.len() + 1)
            .unwrap_or(usize::MAX);
        if cost.saturating_add(2) > PAYLOAD_MAX_BYTES {
            return vec![ALL.to_string()];
        }
        if size + cost > PAYLOAD_MAX_BYTES {
            out.push(serde_json::to_string(&chunk).unwrap_or_else(|_| ALL.into()));
            chunk.clear();
            size = 2;
        }
        chunk.push(id);
        size += cost;
    }
    if !chunk.is_empty() {
        out.push(serde_json::to_string(&chunk).unwrap_or_else(|_| ALL.into()));
    }
    out
}

/// What a payload announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    Orders(Vec<String>),
    /// Any order may have changed (an id too long for a payload, or a payload not understood).
    All,
}

/// Read a payload of [`CHANNEL`]; one not understood counts as [`Changed::All`], so a waiter
/// looks again rather than missing a change.
pub fn parse(payload: &str) -> Changed {
    match serde_json::from_str::<Vec<String>>(payload) {
        Ok(ids) => Changed::Orders(ids),
        Err(_) => Changed::All,
    }
}

/// Announce `order_ids` on [`CHANNEL`] in the caller's transaction: delivered at its commit.
pub async fn notify(conn: &mut PgConnection, order_ids: &[&str]) -> Result<(), sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(payloads(order_ids))
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_every_id_in_chunks_that_fit() {
        let table: Vec<(Vec<String>, usize)> = vec![
            (vec![], 0),
            (vec!["o-1".into()], 1),
            ((0..2_000).map(|i| format!("order-{i:06}")).collect(), 5),
        ];
        for (ids, chunks) in table {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let sent = payloads(&refs);
            assert_eq!(sent.len(), chunks, "{} ids", ids.len());
            let mut back = Vec::new();
            for p in &sent {
                assert!(p.len() <= PAYLOAD_MAX_BYTES, "{} bytes", p.len());
                match parse(p) {
                    Changed::Orders(got) => back.extend(got),
                    Changed::All => panic!("{p}"),
                }
            }
            assert_eq!(back, ids);
        }
    }

    #[test]
    fn an_id_too_long_or_an_unknown_payload_means_everything() {
        let long = "x".repeat(PAYLOAD_MAX_BYTES);
        assert_eq!(payloads(&["o-1", &long]), vec![ALL.to_string()]);
        assert_eq!(parse(ALL), Changed::All);
        assert_eq!(parse("o-1,o-2"), Changed::All);
        assert_eq!(
            parse("[\"a,b\",\"c\\n\"]"),
            Changed::Orders(vec!["a,b".into(), "c\n".into()])
        );
    }
}
