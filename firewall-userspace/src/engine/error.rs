//! How an engine request fails. Each kind says what happened to the firewall (nothing changed,
//! or a failure was rolled back); `daemon/server.rs` maps the kinds to HTTP statuses, so the
//! engine knows nothing of HTTP.

/// A refused or failed request: its kind and a message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is invalid (a bad address, TTL or body): nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// No such request or object.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not make this request.
    #[error("{0}")]
    Forbidden(String),
    /// A table or kernel map has no room for the change: nothing was changed.
    #[error("{0}")]
    Full(String),
    /// The kernel, the disk or the audit log failed; what the request had changed was rolled
    /// back.
    #[error("{0}")]
    Failed(String),
}

impl EngineError {
    /// Bad input.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// The kernel or the disk failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }
}
