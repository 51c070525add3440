//! The content-addressed blob store.
mod digest;
mod store;

pub use digest::Digest;
pub use store::ContentStore;
