//! The one error type handlers return, classified once here as retryable or permanent.

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Postgres failed. Retryable when the server is unreachable, timed out, or aborted us
    /// for a deadlock or serialization conflict: the runner rolls the batch back and retries
    /// it with backoff. Any other database error is a bug or a schema mismatch: permanent.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// An external provider (payment, carrier) could not answer. Retry when `retryable`
    /// (timeouts, 5xx), otherwise treat as permanent.
    #[error("provider {provider} failed: {message}")]
    Provider {
        provider: &'static str,
        message: String,
        retryable: bool,
    },

    /// An outside service is known to be failing: its circuit breaker is open and the call was
    /// not made. Retryable; the order parks without spending its retry budget.
    #[error("{service} unavailable: {message}")]
    Unavailable {
        service: &'static str,
        message: String,
    },

    /// The decision needs an answer from outside that was not asked before the transaction
    /// (the state changed between the two). The engine asks and tries again; retryable.
    #[error("answer missing: {0}")]
    Unanswered(String),

    /// The event cannot be applied in the step's current state (for example a reply for an
    /// order the step never saw). Permanent: the record is set aside with this reason and the
    /// partition moves on.
    #[error("business rule violated: {0}")]
    Rule(String),

    /// Restore only: a decision recorded in the archive cannot be applied to the state rebuilt
    /// so far (the archive and the rebuilt state disagree). The restore stops; nothing is
    /// dead-lettered, since the live step never saw this failure.
    #[error("restore diverged from the archive: {0}")]
    Diverged(String),
}

impl HandlerError {
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::Database(error) => platform::db::is_retryable(error),
            HandlerError::Provider { retryable, .. } => *retryable,
            HandlerError::Unavailable { .. } | HandlerError::Unanswered(_) => true,
            HandlerError::Rule(_) | HandlerError::Diverged(_) => false,
        }
    }

    /// A short stable code for logs and the rejected-records table.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::Database(_) => "database",
            HandlerError::Provider { .. } => "provider",
            HandlerError::Unavailable { .. } => "unavailable",
            HandlerError::Unanswered(_) => "unanswered",
            HandlerError::Rule(_) => "rule",
            HandlerError::Diverged(_) => "diverged",
        }
    }
}
