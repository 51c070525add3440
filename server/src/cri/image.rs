//! The tonic `ImageService`. Pulling and storing images is `hull-image`'s job; this file
//! maps CRI requests onto it.

use hull_cri_api as cri;
use hull_cri_api::server::ImageService;
use tonic::{Request, Response, Status};

use super::CriService;
use super::status::CriError;

type CallResult<T> = Result<Response<T>, Status>;

const WHY: &str = "issue 5: the native image service";

fn not_yet<T>(rpc: &'static str) -> CallResult<T> {
    tracing::debug!(rpc, "unimplemented CRI call");
    Err(CriError::Unimplemented { rpc, why: WHY }.into())
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        _req: Request<cri::ListImagesRequest>,
    ) -> CallResult<cri::ListImagesResponse> {
        not_yet("ListImages")
    }

    async fn image_status(
        &self,
        _req: Request<cri::ImageStatusRequest>,
    ) -> CallResult<cri::ImageStatusResponse> {
        not_yet("ImageStatus")
    }

    async fn pull_image(
        &self,
        _req: Request<cri::PullImageRequest>,
    ) -> CallResult<cri::PullImageResponse> {
        not_yet("PullImage")
    }

    async fn remove_image(
        &self,
        _req: Request<cri::RemoveImageRequest>,
    ) -> CallResult<cri::RemoveImageResponse> {
        not_yet("RemoveImage")
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> CallResult<cri::ImageFsInfoResponse> {
        not_yet("ImageFsInfo")
    }
}
