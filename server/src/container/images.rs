//! What containers need from the image service: resolve an image to its id and config
//! defaults, mount and remove a container's rootfs, and find its writable layer.

use std::path::{Path, PathBuf};

use super::spec::ImageDefaults;

/// An image resolved for a new container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub id: String,
    pub defaults: ImageDefaults,
}

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("Image {} not found (pull it first)", crate::cri::status::quote(.0))]
    NotFound(String),
    #[error("Image service: {0}")]
    Service(String),
}

#[async_trait::async_trait]
pub trait ContainerImages: Send + Sync {
    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ImagesError>;
    async fn prepare_rootfs(
        &self,
        image_id: &str,
        container_id: &str,
        target: &Path,
    ) -> Result<(), ImagesError>;
    async fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<(), ImagesError>;
    /// The dir holding the container's changes (its writable layer).
    fn writable_dir(&self, container_id: &str) -> Option<PathBuf>;
    /// A dir for files hulld makes for the container (its /etc/hostname and resolv.conf):
    /// host-private, on the writable layer's file system, deleted by `remove_rootfs`.
    fn files_dir(&self, container_id: &str) -> Option<PathBuf>;
    /// The ids of every container with a writable layer.
    fn container_ids(&self) -> Vec<String>;
}

fn service(e: hull_image::ImageError) -> ImagesError {
    ImagesError::Service(crate::sandbox::error_chain(&e))
}

#[async_trait::async_trait]
impl ContainerImages for hull_image::ImageService {
    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ImagesError> {
        let rec = self
            .find(image)
            .map_err(service)?
            .ok_or_else(|| ImagesError::NotFound(image.to_owned()))?;
        let info = self.verbose_info(&rec).map_err(service)?;
        let json: serde_json::Value = info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        Ok(ResolvedImage {
            id: rec.id,
            defaults: ImageDefaults::from_image_config(&json["imageSpec"]),
        })
    }

    async fn prepare_rootfs(
        &self,
        image_id: &str,
        container_id: &str,
        target: &Path,
    ) -> Result<(), ImagesError> {
        hull_image::ImageService::prepare_rootfs(self, image_id, container_id, target)
            .await
            .map_err(service)
    }

    async fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<(), ImagesError> {
        hull_image::ImageService::remove_rootfs(self, container_id, target)
            .await
            .map_err(service)
    }

    fn writable_dir(&self, container_id: &str) -> Option<PathBuf> {
        self.container_dir(container_id)
            .ok()
            .map(|d| d.join("upper"))
    }

    fn files_dir(&self, container_id: &str) -> Option<PathBuf> {
        self.container_dir(container_id)
            .ok()
            .map(|d| d.join("files"))
    }

    fn container_ids(&self) -> Vec<String> {
        hull_image::ImageService::container_ids(self).unwrap_or_else(|e| {
            tracing::warn!(error = %crate::sandbox::error_chain(&e), "cannot list the containers' writable layers");
            Vec::new()
        })
    }
}
