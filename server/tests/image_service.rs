//! hulld's CRI ImageService against a real docker-registry on 127.0.0.1, with images made
//! by test/images/build.sh (umoci + skopeo), across a hulld restart.

mod common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;

use hull_cri_api as cri;
use tonic::Code;

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_fsinfo_remove_across_restart() {
    let reg = registry::TestRegistry::start();
    let h = reg.host();
    common::push_test_images(&h);
    let extra = format!(
        "[registry.hosts.\"registry.k8s.io\"]\nmirrors = [{{ endpoint = \"http://{h}\" }}]\nupstream = false\n[registry.hosts.\"{h}\"]\nplain_http = true\n"
    );
    let mut hulld = common::Hulld::configure(&extra);
    hulld.start();
    let mut images = hulld.images().await;

    let before = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let used = |r: &cri::ImageFsInfoResponse| {
        r.image_filesystems[0]
            .used_bytes
            .as_ref()
            .map_or(0, |u| u.value)
    };

    let pulled = images
        .pull_image(cri::PullImageRequest {
            image: spec("registry.k8s.io/busybox:latest"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
    let user = images
        .pull_image(cri::PullImageRequest {
            image: spec(&format!("{h}/busybox-user:latest")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    images
        .pull_image(cri::PullImageRequest {
            image: spec(&format!("{h}/busybox-zstd:latest")),
            ..Default::default()
        })
        .await
        .unwrap();

    let status = images
        .image_status(cri::ImageStatusRequest {
            image: spec("registry.k8s.io/busybox:latest"),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let img = status.image.expect("image present");
    assert_eq!(img.id, pulled.image_ref);
    assert_eq!(img.repo_tags, ["registry.k8s.io/busybox:latest"]);
    assert!(img.size > 500_000, "{img:?}");
    assert!(status.info["info"].contains("imageSpec"));
    let u = images
        .image_status(cri::ImageStatusRequest {
            image: spec(&user.image_ref),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("user image");
    assert_eq!(u.uid.map(|v| v.value), Some(1000));

    let missing = images
        .pull_image(cri::PullImageRequest {
            image: spec("registry.k8s.io/nothere:1"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let bad = images
        .pull_image(cri::PullImageRequest {
            image: spec("Bad Name"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let after_pulls = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        used(&after_pulls) > used(&before) + 1_000_000,
        "{after_pulls:?}"
    );

    // kill -9 and start again: everything is still there.
    hulld.stop_with(nix::sys::signal::Signal::SIGKILL);
    hulld.start();
    let mut images = hulld.images().await;
    let list = images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 3, "{list:?}");
    let filtered = images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("registry.k8s.io/busybox:latest"),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.images.len(), 1);

    images
        .remove_image(cri::RemoveImageRequest {
            image: spec("registry.k8s.io/busybox:latest"),
        })
        .await
        .unwrap();
    images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&user.image_ref),
        })
        .await
        .unwrap();
    // Idempotent.
    images
        .remove_image(cri::RemoveImageRequest {
            image: spec(&user.image_ref),
        })
        .await
        .unwrap();
    let gone = images
        .image_status(cri::ImageStatusRequest {
            image: spec("registry.k8s.io/busybox:latest"),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.image.is_none());
    let list = images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    let after_remove = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(used(&after_remove) < used(&after_pulls), "{after_remove:?}");
}
