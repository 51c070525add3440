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
    /// A policy of hulld's config forbids it (host isolation outside the allow-list).
    #[error("{0}")]
    PermissionDenied(String),
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
            Self::PermissionDenied(_) => Code::PermissionDenied,
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

/// `value` quoted for an error message, cut to an excerpt: a client's 1 MiB id must not
/// come back as a 1 MiB message. Use it wherever a message quotes client input.
pub fn quote(value: &str) -> String {
    format!("{:?}", hull_agent_api::validate::excerpt(value))
}

/// How many bytes the `grpc-message` header of an error may take once percent-encoded.
/// Default gRPC clients (C-core, grpc-java) accept 8 KiB of response metadata in all.
pub const MAX_ENCODED_MESSAGE: usize = 4096;

/// The bytes a message byte takes in `grpc-message` (tonic percent-encodes controls,
/// space, `"#<>`?{}` and everything past ASCII; `%` is counted as encoded too).
fn encoded_len(b: u8) -> usize {
    if b.is_ascii_graphic() && !b"\"#<>`?{}%".contains(&b) {
        1
    } else {
        3
    }
}

/// `message` cut so that its encoded form fits [`MAX_ENCODED_MESSAGE`], saying how long
/// it was when cut (the whole message is in hulld's log).
pub fn cap_message(message: &str) -> String {
    const TAIL: usize = 64;
    let mut used = 0;
    let mut end = 0;
    for (i, c) in message.char_indices() {
        let mut buf = [0u8; 4];
        let cost: usize = c.encode_utf8(&mut buf).bytes().map(encoded_len).sum();
        if used + cost > MAX_ENCODED_MESSAGE - 3 * TAIL {
            return format!(
                "{}... (message cut, {} bytes in all)",
                &message[..end],
                message.len()
            );
        }
        used += cost;
        end = i + c.len_utf8();
    }
    message.to_owned()
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Self {
        let message = full_message(&err);
        if message.len() > MAX_ENCODED_MESSAGE / 3 {
            tracing::debug!(code = ?err.code(), %message, "CRI error (full message)");
        }
        Status::new(err.code(), cap_message(&message))
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
    fn long_messages_are_cut_to_fit_client_metadata() {
        let huge = format!("container {} not found", quote(&"a".repeat(1 << 20)));
        assert!(huge.len() < 300, "quote cuts: {} bytes", huge.len());
        for text in [
            "x".repeat(1 << 20),
            " ".repeat(1 << 20),
            "é".repeat(1 << 19),
        ] {
            let s: Status = CriError::NotFound(text.clone()).into();
            let encoded: usize = s.message().bytes().map(encoded_len).sum();
            assert!(encoded <= MAX_ENCODED_MESSAGE, "{encoded} bytes encoded");
            assert!(
                s.message()
                    .contains(&format!("{} bytes in all", text.len()))
            );
        }
        let short: Status = CriError::NotFound("pod \"x\" not found".into()).into();
        assert_eq!(short.message(), "pod \"x\" not found");
    }

    #[test]
    fn internal_keeps_the_source_chain() {
        let io = std::io::Error::other("disk on fire");
        let s: Status = CriError::internal("Writing record", io).into();
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "Writing record: disk on fire");
    }
}
