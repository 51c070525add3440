//! Mirrors with an API path prefix, and resuming broken blob downloads with HTTP range
//! requests, against a real docker-registry on 127.0.0.1.

mod support;

use hull_image::{ErrorKind, HostConfig, ImageError, MirrorConfig, RegistryConfig};
use support::images::{self, Comp};
use support::proxy::BreakingProxy;
use support::{Env, Pusher, TestRegistry, init_tracing};

/// `registry.k8s.io` mirrored at `endpoint`, nothing else.
fn mirror_config(endpoint: String) -> RegistryConfig {
    let mut cfg = RegistryConfig::default();
    cfg.hosts.insert(
        "registry.k8s.io".into(),
        HostConfig {
            mirrors: vec![MirrorConfig {
                endpoint,
                ..Default::default()
            }],
            upstream: Some(false),
            ..Default::default()
        },
    );
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_with_a_path_prefix() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = images::busybox("");
    // Only under the prefix: a client ignoring it finds nothing.
    p.push("mirrors/k8s/busybox", "1.36", &img).await;

    let env = Env::new(mirror_config(format!(
        "http://{}/v2/mirrors/k8s",
        reg.host()
    )));
    let rec = env
        .svc
        .pull("registry.k8s.io/busybox:1.36", None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.id());
    assert_eq!(rec.repo_tags, ["registry.k8s.io/busybox:1.36"]);
    assert_eq!(
        rec.repo_digests,
        [format!("registry.k8s.io/busybox@{}", img.digest())]
    );
    let log = std::fs::read_to_string(&reg.log).unwrap();
    assert!(
        log.contains("/v2/mirrors/k8s/busybox/manifests/1.36"),
        "manifest not fetched under the prefix"
    );

    // Without the prefix (or with another one) the image is not there.
    for endpoint in [
        format!("http://{}", reg.host()),
        format!("http://{}/v2/other", reg.host()),
    ] {
        let env = Env::new(mirror_config(endpoint.clone()));
        let err = env
            .svc
            .pull("registry.k8s.io/busybox:1.36", None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorKind::NotFound, "{endpoint}: {err:?}");
    }
    // A path that is not the API root is refused when the config is checked.
    let bad = mirror_config(format!("http://{}/mirrors/k8s", reg.host()));
    assert!(bad.validate().is_err());
}

/// An incompressible layer of 1 MiB, so the proxy's cuts fall mid-blob.
fn big_image() -> images::Image {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    images::single_file_image("data/random.bin", &data, Comp::Gzip)
}

fn via_proxy(proxy: &BreakingProxy) -> RegistryConfig {
    let mut cfg = RegistryConfig::default();
    cfg.hosts.insert(
        proxy.host(),
        HostConfig {
            plain_http: Some(true),
            ..Default::default()
        },
    );
    cfg
}

/// The offset asked for by a `Range: bytes=<n>-` header.
fn range_start(range: &Option<String>) -> Option<u64> {
    range
        .as_deref()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

fn stored_blob(env: &Env, digest: &str) -> Vec<u8> {
    let p = env
        .root()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::read(p).expect("stored blob")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_download_resumes_with_a_range_request() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = big_image();
    p.push("big", "v1", &img).await;
    let blob = images::sha(&img.layers[0].blob);
    let proxy = BreakingProxy::start(&reg.host(), &blob, 1, 200 << 10);

    let env = Env::new(via_proxy(&proxy));
    let rec = env
        .svc
        .pull(&format!("{}/big:v1", proxy.host()), None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.id());
    let reqs = proxy.blob_requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(range_start(&reqs[0].range).unwrap_or(0), 0, "{reqs:?}");
    let resumed_at = range_start(&reqs[1].range).expect("second request has a Range");
    assert!(
        resumed_at > 100 << 10 && resumed_at < 200 << 10,
        "resumed at {resumed_at}"
    );
    assert_eq!(env.svc.blobs_fetched(), 2, "config + layer");
    assert_eq!(stored_blob(&env, &blob), img.layers[0].blob);
    assert_eq!(
        std::fs::read_dir(env.root().join("tmp")).unwrap().count(),
        0,
        "partial file left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_broken_every_time_resumes_after_a_restart() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = big_image();
    p.push("big", "v1", &img).await;
    let blob = images::sha(&img.layers[0].blob);
    // More cuts than one pull's attempts: the pull fails, its partial file stays.
    let proxy = BreakingProxy::start(&reg.host(), &blob, 100, 100 << 10);
    let mut env = Env::new(via_proxy(&proxy));
    let image = format!("{}/big:v1", proxy.host());
    let err = env.svc.pull(&image, None).await.unwrap_err();
    assert!(matches!(err, ImageError::FetchBlob { .. }), "{err:?}");
    assert!(env.svc.list(None).unwrap().is_empty());
    assert_eq!(env.layer_dirs(), 0);
    let partial = env
        .root()
        .join("tmp")
        .join(format!("{}.partial", blob.trim_start_matches("sha256:")));
    let kept = std::fs::metadata(&partial)
        .expect("partial file kept")
        .len();
    let attempts = proxy.blob_requests().len() as u64;
    assert!(attempts > 1, "retried within the pull");
    assert!(kept > (attempts - 1) * (50 << 10), "{kept} bytes kept");

    env.reopen();
    proxy.set_cuts(0);
    let rec = env.svc.pull(&image, None).await.unwrap();
    assert_eq!(rec.id, img.id());
    let last = proxy.blob_requests().pop().expect("a request");
    assert_eq!(range_start(&last.range), Some(kept), "{last:?}");
    assert!(!partial.exists());
    assert_eq!(stored_blob(&env, &blob), img.layers[0].blob);
}
