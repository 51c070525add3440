//! Pulls from a real docker-registry on 127.0.0.1.

mod support;

use hull_image::{AuthConfig, ErrorKind, ImageError};
use support::images::{self, Comp};
use support::{Env, Pusher, TestRegistry, config_for, init_tracing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_via_mirror_and_by_digest() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = images::busybox("");
    p.push("busybox", "1.36", &img).await;
    let env = Env::new(config_for(&reg));

    let rec = env
        .svc
        .pull("registry.k8s.io/busybox:1.36", None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.id());
    assert_eq!(
        rec.repo_tags,
        ["registry.k8s.io/busybox:1.36"],
        "keeps its original name"
    );
    assert_eq!(
        rec.repo_digests,
        [format!("registry.k8s.io/busybox@{}", img.digest())]
    );
    assert_eq!(rec.uid, None);
    assert_eq!(
        rec.annotations.get("org.hull.test").map(String::as_str),
        Some("yes")
    );
    let expected_size = img.config.len() + img.layers.iter().map(|l| l.blob.len()).sum::<usize>();
    assert_eq!(rec.size, expected_size as u64);

    let by_digest = format!("{}/busybox@{}", reg.host(), img.digest());
    let rec2 = env.svc.pull(&by_digest, None).await.unwrap();
    assert_eq!(rec2.id, rec.id);
    assert!(
        rec2.repo_digests.contains(&by_digest),
        "{:?}",
        rec2.repo_digests
    );
    assert_eq!(
        rec2.repo_tags,
        ["registry.k8s.io/busybox:1.36"],
        "digest pull adds no tag"
    );

    for name in [
        rec.id.as_str(),
        &rec.id[7..],
        &rec.id[7..19],
        "registry.k8s.io/busybox:1.36",
        &by_digest,
    ] {
        assert_eq!(
            env.svc.find(name).unwrap().map(|r| r.id),
            Some(rec.id.clone()),
            "{name}"
        );
    }
    assert_eq!(env.svc.list(None).unwrap().len(), 1);
    assert_eq!(
        env.svc
            .list(Some("registry.k8s.io/busybox:1.36"))
            .unwrap()
            .len(),
        1
    );
    assert!(
        env.svc
            .list(Some("registry.k8s.io/other:1"))
            .unwrap()
            .is_empty()
    );
    let info = env.svc.verbose_info(&rec).unwrap();
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(
        v["imageSpec"]["rootfs"]["diff_ids"][0],
        img.layers[0].diff_id.as_str()
    );
    assert_eq!(
        env.svc.blobs_fetched(),
        2,
        "config + one layer, the digest pull fetched nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiarch_zstd_plain_and_user() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let index_digest = images::push_standard(&p).await;
    let env = Env::new(config_for(&reg));
    let h = reg.host();

    let rec = env
        .svc
        .pull(&format!("{h}/multiarch:latest"), None)
        .await
        .unwrap();
    assert_eq!(
        rec.id,
        images::arch_image("amd64").id(),
        "amd64 picked from the index"
    );
    assert_eq!(rec.repo_digests, [format!("{h}/multiarch@{index_digest}")]);
    assert_eq!(unpacked_file(&env, &rec, "arch"), b"amd64");

    let z = env.svc.pull(&format!("{h}/zstd"), None).await.unwrap();
    assert!(z.layers[0].media_type.ends_with("+zstd"));
    assert_eq!(unpacked_file(&env, &z, "data/zstd.txt"), b"zstd layer");
    let plain = env
        .svc
        .pull(&format!("{h}/plain:latest"), None)
        .await
        .unwrap();
    assert_eq!(
        unpacked_file(&env, &plain, "data/plain.txt"),
        b"plain layer"
    );

    let u = env
        .svc
        .pull(&format!("{h}/busybox-user:latest"), None)
        .await
        .unwrap();
    assert_eq!((u.uid, u.username.as_str()), (Some(1000), ""));
    let n = env
        .svc
        .pull(&format!("{h}/busybox-named:latest"), None)
        .await
        .unwrap();
    assert_eq!((n.uid, n.username.as_str()), (None, "app"));
}

fn unpacked_file(env: &Env, rec: &hull_image::ImageRecord, path: &str) -> Vec<u8> {
    let top = rec.layers.last().expect("image has layers");
    let hex = top.diff_id.trim_start_matches("sha256:");
    std::fs::read(env.root().join("layers").join(hex).join("fs").join(path))
        .expect("read unpacked file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_right_and_wrong_credentials() {
    init_tracing();
    let reg = TestRegistry::start_with_auth("hull", "s3cret");
    let p = Pusher::new(&reg.host(), Some(("hull", "s3cret")));
    p.push(
        "private",
        "v1",
        &images::single_file_image("data/p.txt", b"private", Comp::Gzip),
    )
    .await;
    let env = Env::new(config_for(&reg));
    let name = format!("{}/private:v1", reg.host());

    let anon = env.svc.pull(&name, None).await.unwrap_err();
    assert_eq!(anon.code(), ErrorKind::Unauthenticated, "{anon}");
    let wrong = AuthConfig {
        username: "hull".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = env.svc.pull(&name, Some(&wrong)).await.unwrap_err();
    assert_eq!(err.code(), ErrorKind::Unauthenticated, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("refused access") && msg.contains("credentials"),
        "{msg}"
    );
    assert!(!msg.contains("nope"), "no secrets in messages: {msg}");
    assert!(env.svc.list(None).unwrap().is_empty());

    let right = AuthConfig {
        username: "hull".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    env.svc.pull(&name, Some(&right)).await.unwrap();
    // The docker `auth` field (base64 of user:password) works too.
    let b64 = AuthConfig {
        auth: "aHVsbDpzM2NyZXQ=".into(),
        ..Default::default()
    };
    env.svc.pull(&name, Some(&b64)).await.unwrap();
    // Credentials from the registry config, when the request has none.
    let mut cfg = config_for(&reg);
    cfg.hosts.get_mut(&reg.host()).unwrap().auth = Some(right.clone());
    let env2 = Env::new(cfg);
    env2.svc.pull(&name, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_bad_references() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    p.push(
        "exists",
        "v1",
        &images::single_file_image("data/x", b"x", Comp::Gzip),
    )
    .await;
    let env = Env::new(config_for(&reg));
    let h = reg.host();
    for name in [
        format!("{h}/exists:v2"),
        format!("{h}/nothere:v1"),
        "registry.k8s.io/nothere:1".into(),
    ] {
        let err = env.svc.pull(&name, None).await.unwrap_err();
        assert_eq!(err.code(), ErrorKind::NotFound, "{name}: {err}");
    }
    let missing = format!("{h}/exists@{}", images::sha(b"nope"));
    assert_eq!(
        env.svc.pull(&missing, None).await.unwrap_err().code(),
        ErrorKind::NotFound
    );
    for bad in ["", "UPPER:x", "a@sha256:123", "x y"] {
        assert_eq!(
            env.svc.pull(bad, None).await.unwrap_err().code(),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
    assert!(env.svc.find("nothere").unwrap().is_none());
    assert_eq!(
        env.svc.get("nothere").unwrap_err().code(),
        ErrorKind::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_rejected_and_nothing_stored() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = images::single_file_image("data/c.txt", &vec![7u8; 100_000], Comp::Gzip);
    p.push("corrupt", "v1", &img).await;
    let layer_digest = images::sha(&img.layers[0].blob);
    let data = reg.blob_data_path(&layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let env = Env::new(config_for(&reg));
    let err = env
        .svc
        .pull(&format!("{}/corrupt:v1", reg.host()), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::DigestMismatch { .. } | ImageError::FetchBlob { .. }
        ),
        "{err:?}"
    );
    assert!(env.svc.list(None).unwrap().is_empty());
    let blobs = env.root().join("blobs/sha256");
    assert!(
        !blobs
            .join(layer_digest.trim_start_matches("sha256:"))
            .exists(),
        "corrupt blob stored"
    );
    assert_eq!(
        std::fs::read_dir(env.root().join("tmp")).unwrap().count(),
        0,
        "temp file left"
    );
    assert_eq!(env.layer_dirs(), 0, "layer unpacked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    init_tracing();
    let reg = TestRegistry::start();
    let p = Pusher::new(&reg.host(), None);
    let img = images::whiteout_image();
    p.push("shared", "v1", &img).await;
    p.push("shared", "v2", &img).await;
    let env = Env::new(config_for(&reg));
    let h = reg.host();
    let (v1, v2) = (format!("{h}/shared:v1"), format!("{h}/shared:v2"));
    let (a, b, c) = tokio::join!(
        env.svc.pull(&v1, None),
        env.svc.pull(&v1, None),
        env.svc.pull(&v2, None)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(a.id == b.id && b.id == c.id);
    assert_eq!(env.svc.blobs_fetched(), 3, "config + 2 layers, once each");
    for d in img
        .layers
        .iter()
        .map(|l| images::sha(&l.blob))
        .chain([img.id()])
    {
        assert_eq!(reg.blob_gets(&d), 1, "registry served {d} more than once");
    }
    let rec = env.svc.get(&a.id).unwrap();
    assert_eq!(rec.repo_tags.len(), 2, "{:?}", rec.repo_tags);
}
