//! The request id: the client's `X-Request-Id` when it is acceptable (1 to 64 characters of
//! `A-Z a-z 0-9 - _ . :`), else a new UUID; returned on every answer, quoted in every problem,
//! logged, and used as the correlation id of the events a request causes (when it is a UUID;
//! otherwise a UUID v5 of it).

use uuid::Uuid;

pub const HEADER: &str = "x-request-id";

/// Namespace of correlation ids derived from request ids that are not UUIDs.
const CORRELATION_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7266_6c6f_772d_7265_7169_6400);

tokio::task_local! {
    static CURRENT: String;
}

/// The client's id if acceptable, else a new one.
pub fn accept_or_generate(given: Option<&str>) -> String {
    match given {
        Some(id) if is_acceptable(id) => id.to_string(),
        _ => Uuid::new_v4().to_string(),
    }
}

/// Whether a client-given request id is short and plain enough to log and echo.
pub fn is_acceptable(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The correlation id of the events a request with this id causes.
pub fn correlation_id(request_id: &str) -> Uuid {
    Uuid::parse_str(request_id)
        .unwrap_or_else(|_| Uuid::new_v5(&CORRELATION_NAMESPACE, request_id.as_bytes()))
}

/// Run `future` with `id` as the current request id (read by [`current`]).
pub async fn scope<F: std::future::Future>(id: String, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// The id of the request being handled, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_others_replaced() {
        for (given, kept) in [
            (Some("abc-123"), true),
            (Some("9b2f0c1e-1d7e-4a59-8a0d-2f3d4c5b6a79"), true),
            (Some(""), false),
            (Some("has space"), false),
            (Some("<script>"), false),
            (Some(&*"x".repeat(65)), false),
            (None, false),
        ] {
            let id = accept_or_generate(given);
            assert_eq!(Some(id.as_str()) == given, kept, "{given:?}");
            assert!(is_acceptable(&id));
        }
    }

    #[test]
    fn correlation_ids_are_the_uuid_or_derived_stably() {
        let uuid = "9b2f0c1e-1d7e-4a59-8a0d-2f3d4c5b6a79";
        assert_eq!(correlation_id(uuid).to_string(), uuid);
        assert_eq!(correlation_id("req-1"), correlation_id("req-1"));
        assert_ne!(correlation_id("req-1"), correlation_id("req-2"));
    }
}
