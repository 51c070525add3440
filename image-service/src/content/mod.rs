//! The content-addressed blob store.
mod digest;
mod ingest;
mod store;

pub use digest::Digest;
pub use ingest::BlobStream;
pub use store::ContentStore;
