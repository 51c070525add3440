//! # hulld
//!
//! The hull CRI runtime daemon: serves the Kubernetes CRI `RuntimeService` and
//! `ImageService` on a unix socket.
#![forbid(unsafe_code)]
