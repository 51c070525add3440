//! Builds the test images from local files and pushes them to a registry.
//! Used by the tests, the benchmark and `test/images/build-test-images.sh`.

use std::io::Write as _;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One tar entry, including hostile ones the `tar` crate's safe API refuses to write.
pub enum Entry {
    Dir(&'static str),
    File(&'static str, Vec<u8>, u32),
    OwnedFile(&'static str, Vec<u8>, u32, u64, u64),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Fifo(&'static str),
}

fn header(
    kind: tar::EntryType,
    path: &str,
    size: u64,
    mode: u32,
    link: Option<&str>,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let gnu = h.as_gnu_mut().expect("gnu header");
    gnu.name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    h
}

/// The uncompressed tar of `entries`, written raw (paths are not sanitized).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match e {
            Entry::Dir(p) => (header(tar::EntryType::Directory, p, 0, 0o755, None), &[]),
            Entry::File(p, d, m) => (
                header(tar::EntryType::Regular, p, d.len() as u64, *m, None),
                d,
            ),
            Entry::OwnedFile(p, d, m, uid, gid) => {
                let mut h = header(tar::EntryType::Regular, p, d.len() as u64, *m, None);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_cksum();
                (h, d)
            }
            Entry::Symlink(p, t) => (header(tar::EntryType::Symlink, p, 0, 0o777, Some(t)), &[]),
            Entry::Hardlink(p, t) => (header(tar::EntryType::Link, p, 0, 0o644, Some(t)), &[]),
            Entry::Fifo(p) => (header(tar::EntryType::Fifo, p, 0, 0o600, None), &[]),
        };
        b.append(&h, data).expect("append tar entry");
    }
    b.into_inner().expect("finish tar")
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A built layer: compressed blob, its media type, and the diff id.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub diff_id: String,
}

pub fn layer(tar: &[u8], comp: Comp, docker: bool) -> Layer {
    let (blob, media_type) = match (comp, docker) {
        (Comp::None, false) => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        (Comp::None, true) => (tar.to_vec(), "application/vnd.docker.image.rootfs.diff.tar"),
        (Comp::Gzip, d) => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(tar).expect("gzip");
            let mt = if d {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            };
            (enc.finish().expect("gzip"), mt)
        }
        (Comp::Zstd, _) => (
            zstd::encode_all(tar, 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    };
    Layer {
        blob,
        media_type: media_type.into(),
        diff_id: sha(tar),
    }
}

/// A built image: config and manifest JSON.
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_type: &'static str,
}

impl Image {
    pub fn new(layers: Vec<Layer>, user: &str, arch: &str, docker: bool) -> Self {
        let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"User": user, "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config json");
        let (mt, ct) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let descs: Vec<_> = layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": sha(&l.blob), "size": l.blob.len()}))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": ct, "digest": sha(&config), "size": config.len()},
            "layers": descs,
            "annotations": {"org.hull.test": "yes"},
        }))
        .expect("manifest json");
        Self {
            layers,
            config,
            manifest,
            manifest_type: mt,
        }
    }

    pub fn id(&self) -> String {
        sha(&self.config)
    }

    pub fn digest(&self) -> String {
        sha(&self.manifest)
    }
}

/// Pushes images to `host` over plain http.
pub struct Pusher {
    client: Client,
    host: String,
    auth: RegistryAuth,
}

impl Pusher {
    pub fn new(host: &str, auth: Option<(&str, &str)>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let auth = auth.map_or(RegistryAuth::Anonymous, |(u, p)| {
            RegistryAuth::Basic(u.into(), p.into())
        });
        Self {
            client,
            host: host.into(),
            auth,
        }
    }

    fn reference(&self, repo: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repo.into(), tag.into())
    }

    async fn blob(&self, r: &Reference, data: &[u8]) {
        self.client
            .push_blob(r, data.to_vec(), &sha(data))
            .await
            .expect("push blob");
    }

    async fn manifest(&self, r: &Reference, body: &[u8], mt: &str) {
        let ct = http::HeaderValue::from_str(mt).expect("content type");
        self.client
            .push_manifest_raw(r, body.to_vec(), ct)
            .await
            .expect("push manifest");
    }

    pub async fn push(&self, repo: &str, tag: &str, img: &Image) {
        let r = self.reference(repo, tag);
        self.client
            .auth(&r, &self.auth, RegistryOperation::Push)
            .await
            .expect("registry auth");
        for l in &img.layers {
            self.blob(&r, &l.blob).await;
        }
        self.blob(&r, &img.config).await;
        self.manifest(&r, &img.manifest, img.manifest_type).await;
    }

    /// Pushes `images` (arch, image) and an OCI index over them under `repo:tag`;
    /// returns the index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, images: &[(&str, &Image)]) -> String {
        let mut entries = Vec::new();
        for (arch, img) in images {
            self.push(repo, &format!("{tag}-{arch}"), img).await;
            entries.push(serde_json::json!({
                "mediaType": img.manifest_type, "digest": img.digest(), "size": img.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
        }))
        .expect("index json");
        self.manifest(&self.reference(repo, tag), &index, OCI_INDEX)
            .await;
        sha(&index)
    }
}

/// busybox-static from the host plus a few applet links and an /etc/passwd.
pub fn busybox_tar() -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: apt-get install busybox-static");
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("etc/"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".to_vec(),
            0o644,
        ),
        Entry::Dir("tmp/"),
    ];
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "true", "false", "env", "id", "touch", "rm", "mkdir",
    ] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    tar(&entries)
}

pub fn busybox(user: &str) -> Image {
    Image::new(
        vec![layer(&busybox_tar(), Comp::Gzip, true)],
        user,
        "amd64",
        true,
    )
}

/// Two layers: the upper one deletes `a/deleted.txt` and makes `opq/` opaque.
pub fn whiteout_image() -> Image {
    let base = tar(&[
        Entry::Dir("a/"),
        Entry::File("a/deleted.txt", b"gone".to_vec(), 0o644),
        Entry::File("a/kept.txt", b"kept".to_vec(), 0o644),
        Entry::Dir("opq/"),
        Entry::File("opq/old.txt", b"old".to_vec(), 0o644),
        Entry::Dir("opq/sub/"),
        Entry::File("opq/sub/deep.txt", b"deep".to_vec(), 0o644),
    ]);
    let top = tar(&[
        Entry::Dir("a/"),
        Entry::File("a/.wh.deleted.txt", vec![], 0o644),
        Entry::Dir("opq/"),
        Entry::File("opq/.wh..wh..opq", vec![], 0o644),
        Entry::File("opq/new.txt", b"new".to_vec(), 0o644),
    ]);
    Image::new(
        vec![
            layer(&base, Comp::Gzip, false),
            layer(&top, Comp::Gzip, false),
        ],
        "",
        "amd64",
        false,
    )
}

pub fn arch_image(arch: &'static str) -> Image {
    let t = tar(&[Entry::File("arch", arch.as_bytes().to_vec(), 0o644)]);
    Image::new(vec![layer(&t, Comp::Gzip, false)], "", arch, false)
}

pub fn single_file_image(name: &'static str, content: &[u8], comp: Comp) -> Image {
    let t = tar(&[
        Entry::Dir("data/"),
        Entry::File(name, content.to_vec(), 0o640),
    ]);
    Image::new(vec![layer(&t, comp, false)], "", "amd64", false)
}

/// Builds the standard set and pushes it: busybox, busybox-user, whiteout, multiarch,
/// zstd, plain. Returns the multi-arch index digest.
pub async fn push_standard(p: &Pusher) -> String {
    p.push("busybox", "latest", &busybox("")).await;
    p.push("busybox-user", "latest", &busybox("1000")).await;
    p.push("busybox-named", "latest", &busybox("app:app")).await;
    p.push("whiteout", "latest", &whiteout_image()).await;
    p.push(
        "zstd",
        "latest",
        &single_file_image("data/zstd.txt", b"zstd layer", Comp::Zstd),
    )
    .await;
    p.push(
        "plain",
        "latest",
        &single_file_image("data/plain.txt", b"plain layer", Comp::None),
    )
    .await;
    p.push_index(
        "multiarch",
        "latest",
        &[
            ("arm64", &arch_image("arm64")),
            ("amd64", &arch_image("amd64")),
        ],
    )
    .await
}
