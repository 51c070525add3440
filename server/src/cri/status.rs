//! The one place where hulld's errors become gRPC status codes (containerd's
//! `instrumented_service.go` does the same in one wrapper).

use tonic::{Code, Status};

/// An error from a CRI call, by what kubelet should make of it.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The node cannot hold what was asked for (kubelet retries with back-off).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{rpc} is not implemented by hull yet ({why})")]
    Unimplemented {
        rpc: &'static str,
        why: &'static str,
    },
    #[error("{context}: {source}")]
    Internal {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CriError {
    /// Wraps any error as `Internal`, keeping its whole source chain in the message.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unimplemented { .. } => Code::Unimplemented,
            Self::Internal { .. } => Code::Internal,
        }
    }
}

/// The message with every `source()` in the chain, so the client sees the root cause.
pub(crate) fn full_message(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        Status::new(err.code(), full_message(&err))
    }
}

impl From<crate::state::StoreError> for CriError {
    fn from(err: crate::state::StoreError) -> Self {
        CriError::internal("Metadata store", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let s: Status = CriError::NotFound("sandbox \"x\" not found".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "sandbox \"x\" not found");
        let s: Status = CriError::Unimplemented {
            rpc: "Exec",
            why: "streaming",
        }
        .into();
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().starts_with("Exec is not implemented"));
    }

    #[test]
    fn internal_keeps_the_source_chain() {
        let io = std::io::Error::other("disk on fire");
        let s: Status = CriError::internal("Writing record", io).into();
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "Writing record: disk on fire");
    }
}
