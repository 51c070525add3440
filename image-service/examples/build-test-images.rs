//! Builds hull's test images from local files and pushes them to a registry:
//! busybox (busybox-static from /bin/busybox), busybox-user (USER 1000), busybox-named
//! (USER app:app), whiteout (a deleted file and an opaque dir), multiarch (an OCI index
//! with arm64 and amd64), zstd and plain layers, and optionally `big`, one layer per
//! `--big-dir`.
//!
//! `cargo run -p hull-image --example build-test-images -- --registry 127.0.0.1:5000`

#[path = "../tests/support/images.rs"]
#[allow(dead_code)]
mod images;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Registry `host:port` (plain http).
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,
    /// Basic-auth user, for an htpasswd-protected registry.
    #[arg(long)]
    user: Option<String>,
    /// Its password.
    #[arg(long, default_value = "")]
    password: String,
    /// Directories packed as the layers of `big:latest`.
    #[arg(long = "big-dir")]
    big_dirs: Vec<std::path::PathBuf>,
}

fn dir_tar(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let name = dir.strip_prefix("/").unwrap_or(dir);
    b.append_dir_all(name, dir)
        .with_context(|| format!("pack {}", dir.display()))?;
    Ok(b.into_inner()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = images::Pusher::new(
        &args.registry,
        args.user.as_deref().map(|u| (u, args.password.as_str())),
    );
    let index = images::push_standard(&p).await;
    println!(
        "pushed standard images to {} (multiarch index {index})",
        args.registry
    );
    if !args.big_dirs.is_empty() {
        let mut layers = vec![images::layer(
            &images::busybox_tar(),
            images::Comp::Gzip,
            false,
        )];
        for d in &args.big_dirs {
            layers.push(images::layer(&dir_tar(d)?, images::Comp::Gzip, false));
        }
        let img = images::Image::new(layers, "", "amd64", false);
        let size: usize = img.layers.iter().map(|l| l.blob.len()).sum();
        p.push("big", "latest", &img).await;
        println!(
            "pushed big:latest: {} layers, {size} compressed bytes",
            img.layers.len()
        );
    }
    Ok(())
}
