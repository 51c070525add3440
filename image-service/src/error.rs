//! The one error type of hull-image, and the coarse kind hulld maps to a gRPC code.

use std::path::PathBuf;

/// What kind of failure an [`ImageError`] is; hulld maps it to a gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The image, manifest or blob does not exist (gRPC `NotFound`).
    NotFound,
    /// The registry refused the credentials, or demanded some (gRPC `Unauthenticated`).
    Unauthenticated,
    /// The caller's reference or argument is malformed (gRPC `InvalidArgument`).
    InvalidArgument,
    /// The operation conflicts with the current state, e.g. the image is in use
    /// (gRPC `FailedPrecondition`).
    FailedPrecondition,
    /// Anything else: I/O, bad registry content, store failures (gRPC `Internal`).
    Internal,
}

/// Errors of the image service. Variants are named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image reference could not be parsed.
    #[error("Invalid image reference {reference:?}: {reason}")]
    ParseReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A caller-supplied argument was invalid (container id, auth, ...).
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),
    /// The registry configuration is invalid.
    #[error("Invalid registry configuration: {0}")]
    Config(String),
    /// The image is not known locally.
    #[error("Image {0:?} not found")]
    ImageNotFound(String),
    /// The registry does not have the manifest or blob.
    #[error("Image {reference:?} not found in registry {registry}: {message}")]
    RegistryNotFound {
        /// The reference being pulled.
        reference: String,
        /// Which endpoint answered.
        registry: String,
        /// The registry's answer.
        message: String,
    },
    /// The registry refused the credentials (or needs some).
    #[error(
        "Registry {registry} refused access to {reference:?} (wrong or missing credentials): {message}"
    )]
    Unauthenticated {
        /// The reference being pulled.
        reference: String,
        /// Which endpoint answered.
        registry: String,
        /// The registry's answer.
        message: String,
    },
    /// Any other registry failure (network, protocol).
    #[error("Pulling {reference:?} from {registry} failed")]
    Registry {
        /// The reference being pulled.
        reference: String,
        /// Which endpoint failed.
        registry: String,
        /// The client error.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// A manifest, index or config could not be understood.
    #[error("Bad manifest or config {digest}: {reason}")]
    ParseManifest {
        /// The digest of the document.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No manifest in an index matches the wanted platform.
    #[error("Image index {digest} has no manifest for platform {platform}")]
    NoMatchingPlatform {
        /// The digest of the index.
        digest: String,
        /// The wanted platform.
        platform: String,
    },
    /// A digest string is malformed or uses an unsupported algorithm.
    #[error("Invalid digest {0:?}")]
    InvalidDigest(String),
    /// Downloaded content does not hash to its digest.
    #[error("Content of {expected} does not match its digest (got {actual})")]
    DigestMismatch {
        /// The digest the content should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// Content is larger than its descriptor or a configured limit.
    #[error("Content {what} exceeds its size limit of {limit} bytes")]
    SizeLimit {
        /// What was too big.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// Streaming a blob from the registry failed midway.
    #[error("Downloading blob {digest} failed")]
    FetchBlob {
        /// The blob.
        digest: String,
        /// The stream error.
        #[source]
        source: std::io::Error,
    },
    /// A file-system operation of the content store, unpacker or rootfs failed.
    #[error("{op} {path:?} failed")]
    Fs {
        /// The step, e.g. "Write blob".
        op: &'static str,
        /// The path it worked on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A layer archive entry is hostile or malformed.
    #[error("Layer {layer}: rejected entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The layer digest.
        layer: String,
        /// The entry path.
        entry: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Reading or decompressing a layer archive failed.
    #[error("Layer {layer}: reading the archive failed")]
    ReadLayer {
        /// The layer digest.
        layer: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The layer media type is not one we can unpack.
    #[error("Unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    /// The image is in use by a container and cannot be removed.
    #[error("Image {0} is in use by a container")]
    InUse(String),
    /// Mounting or unmounting the container rootfs failed.
    #[error("{op} at {path:?} failed")]
    Mount {
        /// The step.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The metadata store failed.
    #[error("Image metadata store: {op} failed: {message}")]
    Metadata {
        /// The step.
        op: &'static str,
        /// The redb or serde error, as text (redb has many error types).
        message: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("Background task failed: {0}")]
    Task(String),
}

impl ImageError {
    /// The kind of this error, for hulld's one error → gRPC code mapping.
    pub fn code(&self) -> ErrorKind {
        match self {
            Self::ParseReference { .. } | Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::ImageNotFound(_) | Self::RegistryNotFound { .. } => ErrorKind::NotFound,
            Self::NoMatchingPlatform { .. } => ErrorKind::NotFound,
            Self::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Self::InUse(_) => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }

    pub(crate) fn fs(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Fs { op, path, source }
    }

    pub(crate) fn meta(op: &'static str) -> impl FnOnce(String) -> Self {
        move |message| Self::Metadata { op, message }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
