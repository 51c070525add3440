//! The CNI runtime against recording fake plugins (shell scripts): plugin order, the
//! `CNI_*` environment, `prevResult` chaining, `runtimeConfig`, DEL in reverse with the
//! cached result, CHECK, timeouts. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hull_network::cni::{
    Attachment, Cni, CniConfig, CniError, ExecError, PortMapping, RuntimeConfig,
};
use serde_json::{Value, json};

/// A plugin that logs `<name> <CNI_COMMAND> <CNI_IFNAME> <CNI_CONTAINERID> <CNI_NETNS> <CNI_ARGS> <CNI_PATH>`
/// and its stdin (one line), and prints `result` on ADD.
fn recording_plugin(bin: &Path, log: &Path, name: &str, result: &Value) {
    let script = format!(
        "#!/bin/sh\nin=$(cat)\n\
         echo \"{name} $CNI_COMMAND $CNI_IFNAME $CNI_CONTAINERID $CNI_NETNS $CNI_ARGS $CNI_PATH\" >> {log}\n\
         echo \"$in\" >> {log}\n\
         [ \"$CNI_COMMAND\" = ADD ] && echo '{result}'\nexit 0\n",
        log = log.display(),
    );
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Fixture {
    conf: tempfile::TempDir,
    bin: tempfile::TempDir,
    cache: tempfile::TempDir,
    log: std::path::PathBuf,
}

impl Fixture {
    fn new(timeout: Duration) -> (Self, Cni) {
        let (conf, bin, cache) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let log = cache.path().join("calls.log");
        let cni = Cni::new(CniConfig {
            conf_dir: conf.path().into(),
            bin_dirs: vec![bin.path().into(), "/nonexistent".into()],
            cache_dir: cache.path().join("cni"),
            plugin_timeout: timeout,
            runtime_netns: None,
        });
        (
            Self {
                conf,
                bin,
                cache,
                log,
            },
            cni,
        )
    }

    fn calls(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|c| (c[0].to_string(), serde_json::from_str(c[1]).unwrap()))
            .collect()
    }
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "sb1".into(),
        netns: "/run/netns/hull-sb1".into(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u".into(),
    }
}

#[tokio::test]
async fn add_chains_prev_result_and_del_runs_in_reverse_from_cache() {
    let (fx, cni) = Fixture::new(Duration::from_secs(10));
    let ra = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/hull-sb1"}],
                    "ips": [{"interface": 0, "address": "10.9.0.2/24", "gateway": "10.9.0.1"}]});
    let rb = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/hull-sb1"}],
                    "ips": [{"interface": 0, "address": "10.9.0.2/24", "gateway": "10.9.0.1"}], "dns": {"nameservers": ["10.9.0.53"]}});
    recording_plugin(fx.bin.path(), &fx.log, "rec-a", &ra);
    recording_plugin(fx.bin.path(), &fx.log, "rec-b", &rb);
    std::fs::write(
        fx.conf.path().join("10-rec.conflist"),
        json!({"cniVersion": "1.0.0", "name": "recnet", "plugins": [
            {"type": "rec-a", "foo": 1},
            {"type": "rec-b", "capabilities": {"portMappings": true, "dns": true}}
        ]})
        .to_string(),
    )
    .unwrap();
    let rc = RuntimeConfig {
        port_mappings: vec![PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: "".into(),
        }],
        ..RuntimeConfig::default()
    };
    let (result, raw) = cni.add(&attachment(), &rc).await.unwrap();
    assert_eq!(raw, rb);
    assert_eq!(result.dns.nameservers, vec!["10.9.0.53".to_string()]);
    let calls = fx.calls();
    assert_eq!(calls.len(), 2);
    let cni_path = format!("{}:/nonexistent", fx.bin.path().display());
    assert_eq!(
        calls[0].0,
        format!(
            "rec-a ADD eth0 sb1 /run/netns/hull-sb1 {} {cni_path}",
            attachment().args
        )
    );
    assert_eq!(
        calls[0].1,
        json!({"type": "rec-a", "foo": 1, "name": "recnet", "cniVersion": "1.0.0"})
    );
    assert!(calls[1].0.starts_with("rec-b ADD "));
    assert_eq!(calls[1].1["prevResult"], ra);
    assert_eq!(
        calls[1].1["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );

    // CHECK: forward order, each with the cached final result.
    cni.check(&attachment()).await.unwrap();
    let calls = fx.calls();
    assert!(calls[2].0.starts_with("rec-a CHECK ") && calls[3].0.starts_with("rec-b CHECK "));
    assert_eq!(calls[2].1["prevResult"], rb);

    // The config changes; DEL still uses the cached list, in reverse, with the result.
    std::fs::write(
        fx.conf.path().join("00-new.conflist"),
        json!({"cniVersion": "1.0.0", "name": "new", "plugins": [{"type": "rec-a"}]}).to_string(),
    )
    .unwrap();
    let bare = Attachment {
        args: String::new(),
        ..attachment()
    };
    cni.del(&bare).await.unwrap();
    let calls = fx.calls();
    assert_eq!(calls.len(), 6);
    assert!(
        calls[4].0.starts_with("rec-b DEL eth0 sb1 ") && calls[4].0.contains("K8S_POD_NAME=p"),
        "{}",
        calls[4].0
    );
    assert!(calls[5].0.starts_with("rec-a DEL "));
    assert_eq!(calls[4].1["prevResult"], rb);
    assert_eq!(calls[4].1["name"], "recnet");
    assert_eq!(
        calls[4].1["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert!(cni.cache().load("sb1").unwrap().is_none());

    // Without a cache entry, DEL uses the current network, without prevResult.
    cni.del(&bare).await.unwrap();
    let calls = fx.calls();
    assert_eq!(calls.len(), 7);
    assert!(calls[6].0.starts_with("rec-a DEL ") && calls[6].1.get("prevResult").is_none());
    assert_eq!(calls[6].1["name"], "new");
    drop(fx.cache);
}

#[tokio::test]
async fn v0_3_1_has_no_check_and_no_prev_result_on_del() {
    let (fx, cni) = Fixture::new(Duration::from_secs(10));
    let r = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.9.0.3/24"}]});
    recording_plugin(fx.bin.path(), &fx.log, "rec-a", &r);
    std::fs::write(
        fx.conf.path().join("a.conf"),
        r#"{"cniVersion":"0.3.1","name":"old","type":"rec-a"}"#,
    )
    .unwrap();
    let (res, _) = cni
        .add(&attachment(), &RuntimeConfig::default())
        .await
        .unwrap();
    assert_eq!(res.ips[0].address.to_string(), "10.9.0.3/24");
    assert!(matches!(
        cni.check(&attachment()).await,
        Err(CniError::CheckUnsupported { .. })
    ));
    cni.del(&attachment()).await.unwrap();
    let calls = fx.calls();
    assert!(calls[1].0.starts_with("rec-a DEL ") && calls[1].1.get("prevResult").is_none());
}

#[tokio::test]
async fn slow_plugin_times_out_and_missing_plugin_is_named() {
    let (fx, cni) = Fixture::new(Duration::from_millis(300));
    let path = fx.bin.path().join("slow");
    std::fs::write(&path, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        fx.conf.path().join("10.conflist"),
        r#"{"cniVersion":"1.0.0","name":"slow","plugins":[{"type":"slow"}]}"#,
    )
    .unwrap();
    let start = Instant::now();
    let err = cni
        .add(&attachment(), &RuntimeConfig::default())
        .await
        .expect_err("must time out");
    assert!(
        matches!(
            err,
            CniError::Add {
                source: ExecError::Timeout { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // The typed Timeout above is the outcome; the bound only checks that the plugin (which
    // sleeps far longer, see above) was not waited for, with room for a loaded machine.
    assert!(start.elapsed() < Duration::from_secs(20));
    std::fs::write(
        fx.conf.path().join("05.conflist"),
        r#"{"cniVersion":"1.0.0","name":"gone","plugins":[{"type":"not-installed"}]}"#,
    )
    .unwrap();
    let err = cni
        .add(&attachment(), &RuntimeConfig::default())
        .await
        .expect_err("must fail");
    assert!(
        matches!(
            err,
            CniError::Add {
                source: ExecError::FindPlugin { .. },
                ..
            }
        ),
        "{err:?}"
    );
}
