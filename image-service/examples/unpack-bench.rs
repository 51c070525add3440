//! Times hull's layer extraction of one local gzip layer against `tar -xzf` of the same
//! file: `unpack-bench <layer.tar.gz> <scratch dir> [runs]`.

use std::time::Instant;

use anyhow::Context as _;
use hull_image::content::Digest;
use hull_image::unpack::{Compression, Limits, extract};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let blob = std::path::PathBuf::from(args.next().context("layer.tar.gz")?);
    let scratch = std::path::PathBuf::from(args.next().context("scratch dir")?);
    let runs: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(&blob)?),
        &mut tar,
    )?;
    let diff_id = Digest::of(&tar);
    drop(tar);
    let limits = Limits {
        max_bytes: u64::MAX,
        max_entries: u64::MAX,
    };
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(scratch.join("hull"))?;
        std::fs::create_dir_all(scratch.join("tar"))?;
        let t = Instant::now();
        extract(
            &blob,
            Compression::Gzip,
            &scratch.join("hull"),
            &diff_id,
            limits,
        )?;
        let hull = t.elapsed().as_millis();
        let t = Instant::now();
        let st = std::process::Command::new("tar")
            .args(["--same-owner", "-xpzf"])
            .arg(&blob)
            .arg("-C")
            .arg(scratch.join("tar"))
            .status()?;
        anyhow::ensure!(st.success(), "tar failed");
        println!("hull {hull} ms, tar -xzf {} ms", t.elapsed().as_millis());
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
