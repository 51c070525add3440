//! A pod network whose chained plugin fails ADD and then DEL too: the teardown goes on
//! past the failing plugin (portmap and bridge still DEL: no veth, host-local lease or
//! portmap chain left, and the netns is deleted), and the CNI attachment left behind with
//! no sandbox (its cache entry, for the retried DEL) is found and removed by hulld, at
//! start-up and by the periodic pass, once its DEL can succeed.
//!
//! The failing plugin is a script in the chain (ADD always fails, DEL fails while a flag
//! file exists) after the real bridge, host-local and portmap plugins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sandbox_common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_cri_api as cri;
use sandbox_common::PodEnv;

fn pod(name: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "sbleft".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            port_mappings: vec![cri::PortMapping {
                protocol: 0,
                container_port: 80,
                host_port: 18082,
                host_ip: String::new(),
            }],
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

/// A plugin whose ADD fails, and whose DEL fails while `flag` exists.
fn failing_plugin(env: &PodEnv, flag: &Path) {
    let plugin = env.extra_bin.path().join("hullfaildel");
    let fail = |what: &str| {
        format!(
            "echo '{{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"injected {what} failure\"}}'; exit 1"
        )
    };
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\ncat >/dev/null\ncase \"$CNI_COMMAND\" in\n\
             ADD) {};;\n\
             DEL) if [ -e {} ]; then {}; fi;;\n\
             VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}';;\nesac\nexit 0\n",
            fail("ADD"),
            flag.display(),
            fail("DEL"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Sets hulld's top-level `cleanup_interval_secs` (before any section).
fn set_cleanup_interval(hulld: &common::Hulld, secs: u64) {
    let config = std::fs::read_to_string(&hulld.config_path).unwrap();
    let rest: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("cleanup_interval_secs"))
        .collect();
    let text = format!("cleanup_interval_secs = {secs}\n{}\n", rest.join("\n"));
    std::fs::write(&hulld.config_path, text).unwrap();
}

/// The sandbox ids in hulld's CNI cache.
fn cached(hulld: &common::Hulld) -> Vec<String> {
    let dir: PathBuf = hulld.root().join("lib/cni");
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

/// RunPodSandbox fails in CNI ADD and its DEL fails too; returns the sandbox id, after
/// checking that the network and the record are gone and only the cache entry is left.
async fn failed_run(env: &PodEnv, hulld: &common::Hulld, name: &str) -> String {
    let mut rt = hulld.runtime().await;
    let err = rt.run_pod_sandbox(pod(name)).await.expect_err("ADD fails");
    let msg = err.message().to_owned();
    assert!(msg.contains("injected ADD failure"), "{msg}");
    assert!(
        msg.contains("injected DEL failure"),
        "the DEL failure is reported: {msg}"
    );
    let id = msg
        .strip_prefix("Pod sandbox ")
        .and_then(|m| m.get(..32))
        .unwrap_or_else(|| panic!("no sandbox id in {msg}"))
        .to_owned();
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(items.is_empty(), "sandbox still listed: {items:?}");
    // The plugins before the failing one removed their part, and the netns went.
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &id,
    ));
    assert!(left.is_empty(), "left behind by a failing DEL: {left:#?}");
    assert_eq!(
        cached(hulld),
        vec![id.clone()],
        "the attachment stays for a retried DEL"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_del_leaks_nothing_and_its_attachment_is_reaped() {
    let env = PodEnv::new();
    let flag = env.extra_bin.path().join("fail-del");
    std::fs::write(&flag, "").unwrap();
    failing_plugin(&env, &flag);
    let conflist = env.conflist(&[serde_json::json!({"type": "hullfaildel"})]);

    // No periodic pass: the attachment stays while DEL fails.
    let mut hulld = env.hulld(&conflist, &[]);
    set_cleanup_interval(&hulld, 0);
    hulld.start();
    let first = failed_run(&env, &hulld, "web").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cached(&hulld), vec![first.clone()]);

    // At start-up, hulld finds the attachment no sandbox owns and DELs it (now it can).
    hulld.stop_with(nix::sys::signal::Signal::SIGKILL);
    std::fs::remove_file(&flag).unwrap();
    set_cleanup_interval(&hulld, 1);
    hulld.start();
    // The socket is bound before recovery; a served call means the start-up pass ran.
    let mut rt = hulld.runtime().await;
    rt.version(cri::VersionRequest::default()).await.unwrap();
    assert!(
        cached(&hulld).is_empty(),
        "start-up pass left {:?}",
        cached(&hulld)
    );

    // The periodic pass: a new leftover is retried every second, and goes once DEL works.
    std::fs::write(&flag, "").unwrap();
    let second = failed_run(&env, &hulld, "web2").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(cached(&hulld), vec![second.clone()], "kept while DEL fails");
    std::fs::remove_file(&flag).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cached(&hulld).is_empty() {
        assert!(
            Instant::now() < deadline,
            "periodic pass left {:?}",
            cached(&hulld)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut left = env.network_leftovers();
    left.extend(sandbox_common::sandbox_leftovers(
        &hulld.root().join("run"),
        &second,
    ));
    assert!(left.is_empty(), "{left:#?}");
}
