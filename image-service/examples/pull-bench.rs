//! Pulls images with hull-image N times, each time into an empty store, and prints the
//! wall time of each run in milliseconds (one number per line), for
//! `benches/pull-vs-containerd.sh`.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use hull_image::{HostConfig, ImageService, RegistryConfig};

#[derive(Parser)]
struct Args {
    /// Registry `host:port`, reached over plain http.
    #[arg(long)]
    registry: String,
    /// Images (`repo:tag`) pulled in each run, one after the other.
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// Runs.
    #[arg(short, long, default_value_t = 5)]
    n: usize,
    /// Layers fetched and unpacked at once (the registry config's `max_concurrent_layers`).
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Scratch dir for the stores (emptied between runs).
    #[arg(long)]
    root: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();
    let mut cfg = RegistryConfig {
        max_concurrent_layers: args.layers,
        ..Default::default()
    };
    cfg.hosts.insert(
        args.registry.clone(),
        HostConfig {
            plain_http: Some(true),
            ..Default::default()
        },
    );
    for _ in 0..args.n {
        if args.root.exists() {
            std::fs::remove_dir_all(&args.root)?;
        }
        std::fs::create_dir_all(&args.root)?;
        let db = redb::Database::create(args.root.join("meta.redb"))?;
        let svc = ImageService::open(&args.root.join("images"), Arc::new(db), cfg.clone())?;
        let started = Instant::now();
        for image in &args.images {
            svc.pull(&format!("{}/{image}", args.registry), None)
                .await?;
        }
        println!("{}", started.elapsed().as_millis());
        // Let the background flush of this run finish before the next one starts.
        svc.sync().await?;
    }
    std::fs::remove_dir_all(&args.root)?;
    Ok(())
}
