//! # hull-cri-api
//!
//! The Kubernetes Container Runtime Interface (`runtime.v1`) as Rust types with tonic
//! servers and clients for the `RuntimeService` and the `ImageService`. hulld serves both
//! services from these types; tests and tools use the clients.
//!
//! The code is generated from the CRI protobuf by the [`k8s_cri`] crate (version 0.11, which
//! needs `protoc` at build time: Debian's `protobuf-compiler`). That crate carries
//! `k8s.io/cri-api` at commit `7d8ade91836419c9dd49d059bda1fe4a7dc283f5` (see
//! [`CRI_API_COMMIT`]): the CRI of Kubernetes 1.31/1.32 (it has `supplemental_groups_policy`,
//! added in 1.31, and not `image_sub_path` or `UpdatePodSandboxResources`, added in 1.33). Its
//! RPCs include `GetContainerEvents`, `ListMetricDescriptors`, `ListPodSandboxMetrics` and
//! `RuntimeConfig`.
//! RPCs added by later Kubernetes versions are not in it, and a client calling them gets
//! `UNIMPLEMENTED` from tonic's router.
#![forbid(unsafe_code)]

/// The `k8s.io/cri-api` commit the generated code comes from.
pub const CRI_API_COMMIT: &str = "7d8ade91836419c9dd49d059bda1fe4a7dc283f5";

/// The CRI API version hull speaks, as reported in `VersionResponse.runtime_api_version`.
pub const RUNTIME_API_VERSION: &str = "v1";

pub use k8s_cri::v1::*;

/// Server traits and wrappers (`RuntimeServiceServer`, `ImageServiceServer`).
pub mod server {
    pub use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
    pub use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
}

/// Clients (`RuntimeServiceClient`, `ImageServiceClient`).
pub mod client {
    pub use k8s_cri::v1::image_service_client::ImageServiceClient;
    pub use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
}
