//! Times `PodNetwork::setup` phases (netns, CNI ADD, tap+tc) and teardown over N
//! sequential pods, with real CNI plugins, inside a throw-away "host" netns (so the
//! bridge, veths and iptables rules never touch the real host). Needs root.
//!
//! `cargo run --release -p hull-network --example netbench -- [N] [conflist]`
//! (default: 20 pods, packaging/cni/10-hull-bridge.conflist; its bridge/name/subnet are
//! replaced by throw-away ones).

use std::time::{Duration, Instant};

use hull_network::cni::{CniConfig, PodRef, error_chain};
use hull_network::netns::Netns;
use hull_network::{PodNetwork, PodNetworkConfig, PodSpec};

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v.get((v.len().saturating_sub(1)) * p / 100)
        .copied()
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let conflist = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/cni/10-hull-bridge.conflist"
        )
        .into()
    });
    let tag = format!("{:x}", std::process::id());
    let mut list: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conflist)?)?;
    list["name"] = format!("hullbench-{tag}").into();
    list["plugins"][0]["bridge"] = format!("hbb{tag}").into();
    list["plugins"][0]["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.250.0.0/16"}]]);
    let conf = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    std::fs::write(conf.path().join("10.conflist"), serde_json::to_vec(&list)?)?;
    let host = Netns::create_named(&format!("hullbench-host-{tag}"))?;
    let net = PodNetwork::new(PodNetworkConfig {
        cni: CniConfig {
            conf_dir: conf.path().into(),
            cache_dir: cache.path().into(),
            runtime_netns: Some(host.path().into()),
            ..CniConfig::default()
        },
        netns_prefix: format!("hullbench-{tag}-"),
        ..PodNetworkConfig::default()
    });
    let (mut netns, mut cni, mut taptc, mut total, mut down) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut failure = None;
    for i in 0..n {
        let spec = PodSpec {
            sandbox_id: format!("b{i}"),
            pod: PodRef {
                namespace: "bench".into(),
                name: format!("p{i}"),
                uid: format!("u{i}"),
            },
            ..PodSpec::default()
        };
        let t = Instant::now();
        match net.setup(&spec).await {
            Ok(st) => {
                total.push(t.elapsed());
                netns.push(st.timings.netns);
                cni.push(st.timings.cni);
                taptc.push(st.timings.tap_tc);
            }
            Err(e) => {
                failure = Some(error_chain(&e));
                break;
            }
        }
        let t = Instant::now();
        if let Err(e) = net.teardown(&spec.sandbox_id).await {
            failure = Some(error_chain(&e));
            break;
        }
        down.push(t.elapsed());
    }
    Netns::delete(host.path())?;
    let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/hullbench-{tag}"));
    if let Some(f) = failure {
        return Err(f.into());
    }
    println!("{n} sequential pods, {conflist}");
    println!("phase        p50        p90");
    for (name, v) in [
        ("netns", &mut netns),
        ("cni", &mut cni),
        ("tap+tc", &mut taptc),
        ("setup", &mut total),
        ("teardown", &mut down),
    ] {
        println!("{name:<9} {:>9.2?} {:>9.2?}", pct(v, 50), pct(v, 90));
    }
    Ok(())
}
