//! The tonic `ImageService`: CRI requests mapped onto `hull-image`.
//!
//! The [`hull_image::ImageService`] lives under `<root_dir>/images`, with its tables in
//! hulld's metadata store; `Daemon::open` opens it and hands it to the container manager
//! too (CreateContainer prepares rootfs from it).

use hull_cri_api as cri;
use hull_cri_api::server::ImageService;
use hull_image::{ErrorKind, ImageError, ImageRecord};
use tonic::{Code, Request, Response, Status};

use super::CriService;
use crate::state::ContainerRecord;

type CallResult<T> = Result<Response<T>, Status>;

/// An image-service error as a gRPC status, with its whole source chain.
fn status(err: ImageError) -> Status {
    let code = match err.code() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Internal => Code::Internal,
    };
    Status::new(code, super::status::full_message(&err))
}

fn image_name(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument(
            "image spec with a non-empty image is required",
        )),
    }
}

fn to_cri(rec: ImageRecord) -> cri::Image {
    let spec_name = rec
        .repo_tags
        .first()
        .or(rec.repo_digests.first())
        .cloned()
        .unwrap_or_default();
    cri::Image {
        id: rec.id,
        repo_tags: rec.repo_tags,
        repo_digests: rec.repo_digests,
        size: rec.size,
        uid: rec.uid.map(|value| cri::Int64Value { value }),
        username: rec.username,
        spec: Some(cri::ImageSpec {
            image: spec_name,
            annotations: rec.annotations.into_iter().collect(),
            ..Default::default()
        }),
        pinned: rec.pinned,
    }
}

fn usage(u: hull_image::FsUsage, timestamp: i64) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.mountpoint.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

fn auth(a: Option<cri::AuthConfig>) -> Option<hull_image::AuthConfig> {
    a.map(|a| hull_image::AuthConfig {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    })
}

impl CriService {
    /// The daemon's image service.
    fn images(&self) -> Result<hull_image::ImageService, Status> {
        Ok(self.daemon.images.clone())
    }

    /// Ids of the images some container record still uses.
    fn images_in_use(&self) -> Result<Vec<String>, Status> {
        let containers: Vec<ContainerRecord> = self
            .daemon
            .store
            .list()
            .map_err(|e| Status::internal(format!("Metadata store: {e}")))?;
        Ok(containers.into_iter().map(|c| c.image_id).collect())
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> CallResult<cri::ListImagesResponse> {
        let req = req.into_inner();
        let filter = req
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.as_str());
        let images = self.images()?.list(filter).map_err(status)?;
        tracing::trace!(n = images.len(), "ListImages");
        Ok(Response::new(cri::ListImagesResponse {
            images: images.into_iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> CallResult<cri::ImageStatusResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?;
        let svc = self.images()?;
        let Some(rec) = svc.find(name).map_err(status)? else {
            tracing::debug!(image = name, "ImageStatus: not present");
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let info = if req.verbose {
            svc.verbose_info(&rec).map_err(status)?
        } else {
            Default::default()
        };
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(rec)),
            info: info.into_iter().collect(),
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> CallResult<cri::PullImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?.to_string();
        tracing::info!(image = %name, "PullImage");
        let rec = self
            .images()?
            .pull(&name, auth(req.auth).as_ref())
            .await
            .map_err(|e| {
                tracing::warn!(image = %name, error = %e, "PullImage failed");
                status(e)
            })?;
        tracing::info!(image = %name, id = %rec.id, "PullImage done");
        Ok(Response::new(cri::PullImageResponse { image_ref: rec.id }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> CallResult<cri::RemoveImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?.to_string();
        tracing::info!(image = %name, "RemoveImage");
        let in_use = self.images_in_use()?;
        let used = |id: &str| in_use.iter().any(|u| u == id);
        self.images()?.remove(&name, &used).await.map_err(status)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> CallResult<cri::ImageFsInfoResponse> {
        let info = self.images()?.fs_info().await.map_err(status)?;
        let ts = info.timestamp_nanos;
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(info.images, ts)],
            container_filesystems: vec![usage(info.containers, ts)],
        }))
    }
}
