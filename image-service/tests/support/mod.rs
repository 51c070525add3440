//! Shared test harness: a real registry, pushed images and an [`ImageService`] on a tempdir.
#![allow(dead_code)]

pub mod images;
pub mod proxy;
pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_image::{HostConfig, ImageService, MirrorConfig, RegistryConfig};

pub use images::Pusher;
pub use registry::TestRegistry;

/// The service under test, with its store dir and database.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub svc: ImageService,
    pub cfg: RegistryConfig,
}

/// Mirrors `registry.k8s.io` to the test registry (no upstream) and allows plain http
/// to the registry itself.
pub fn config_for(reg: &TestRegistry) -> RegistryConfig {
    let mut cfg = RegistryConfig::default();
    let mirror = HostConfig {
        mirrors: vec![MirrorConfig {
            endpoint: format!("http://{}", reg.host()),
            ..Default::default()
        }],
        upstream: Some(false),
        ..Default::default()
    };
    cfg.hosts.insert("registry.k8s.io".into(), mirror);
    cfg.hosts.insert(
        reg.host(),
        HostConfig {
            plain_http: Some(true),
            ..Default::default()
        },
    );
    cfg
}

impl Env {
    pub fn new(cfg: RegistryConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = open(dir.path(), cfg.clone());
        Self { dir, svc, cfg }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// Drops the service and database and opens them again from disk, like a restart.
    pub fn reopen(&mut self) {
        let dir = self.dir.path().to_path_buf();
        // Replace first so the old database handle is dropped before reopening.
        self.svc = open_fresh_placeholder(&dir);
        self.svc = open(&dir, self.cfg.clone());
    }
}

fn open(dir: &Path, cfg: RegistryConfig) -> ImageService {
    let db = redb::Database::create(dir.join("meta.redb")).expect("open redb");
    ImageService::open(&dir.join("images"), Arc::new(db), cfg).expect("open image service")
}

fn open_fresh_placeholder(dir: &Path) -> ImageService {
    let db = redb::Database::create(dir.join("placeholder.redb")).expect("open redb");
    ImageService::open(
        &dir.join("placeholder"),
        Arc::new(db),
        RegistryConfig::default(),
    )
    .expect("open placeholder")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("hull_image=debug")
        .with_test_writer()
        .try_init();
}

impl Env {
    /// Unpacked (or half-unpacked) layer dirs, ignoring the store's own dot files.
    pub fn layer_dirs(&self) -> usize {
        std::fs::read_dir(self.root().join("layers"))
            .expect("layers dir")
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    }
}
