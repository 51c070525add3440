use super::*;
use serde_json::json;

fn list(v: Value) -> Result<NetworkConfigList, ConfigError> {
    NetworkConfigList::from_list_value(v, Path::new("test.conflist"))
}

#[test]
fn parses_conflist() -> Result<(), ConfigError> {
    let l = list(json!({
        "cniVersion": "1.0.0", "name": "hull", "disableCheck": true,
        "plugins": [{"type": "bridge", "bridge": "hull0"}, {"type": "portmap", "capabilities": {"portMappings": true}}]
    }))?;
    assert_eq!(l.name, "hull");
    assert_eq!(l.cni_version, "1.0.0");
    assert!(l.disable_check);
    assert_eq!(l.plugin_types(), vec!["bridge", "portmap"]);
    // Round trip through the cache form.
    assert_eq!(list(l.to_value())?, l);
    Ok(())
}

#[test]
fn wraps_single_conf() -> Result<(), ConfigError> {
    let l = NetworkConfigList::from_conf_value(
        json!({"cniVersion": "0.4.0", "name": "n", "type": "ptp", "ipam": {"type": "host-local"}}),
        Path::new("x.conf"),
    )?;
    assert_eq!(l.plugin_types(), vec!["ptp"]);
    assert_eq!(l.cni_version, "0.4.0");
    Ok(())
}

#[test]
fn rejects_bad_lists() {
    let bad = [
        json!([]),
        json!({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}),
        json!({"name": "n", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}),
        json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../evil"}]}),
        json!({"cniVersion": "0.1.0", "name": "n", "plugins": [{"type": "bridge"}]}),
        json!({"cniVersion": "1.0.0", "name": "a/b", "plugins": [{"type": "bridge"}]}),
    ];
    for v in bad {
        assert!(list(v.clone()).is_err(), "{v}");
    }
}

#[test]
fn stdin_has_name_version_prev_result_and_only_declared_capabilities() -> Result<(), ConfigError> {
    let l = list(json!({
        "cniVersion": "1.0.0", "name": "hull",
        "plugins": [
            {"type": "bridge"},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    }))?;
    let rc = RuntimeConfig {
        port_mappings: vec![
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            },
            PortMapping {
                host_port: 0,
                container_port: 81,
                protocol: "tcp".into(),
                host_ip: String::new(),
            },
        ],
        dns: Some(DnsCapability {
            servers: vec!["10.0.0.10".into()],
            ..Default::default()
        }),
        bandwidth: Some(Bandwidth {
            ingress_rate: 1000,
            ingress_burst: 10,
            egress_rate: 2000,
            egress_burst: 20,
        }),
    };
    let caps = rc.capability_args();
    assert_eq!(caps.len(), 3);
    let prev = json!({"cniVersion": "1.0.0", "ips": []});
    let s0 = l
        .plugin_stdin(0, None, &caps)
        .ok_or_else(|| invalid(Path::new("t"), "no plugin 0"))?;
    assert_eq!(
        s0,
        json!({"type": "bridge", "name": "hull", "cniVersion": "1.0.0"})
    );
    let s1 = l
        .plugin_stdin(1, Some(&prev), &caps)
        .ok_or_else(|| invalid(Path::new("t"), "no plugin 1"))?;
    assert_eq!(s1["prevResult"], prev);
    assert_eq!(
        s1["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    let s2 = l
        .plugin_stdin(2, Some(&prev), &caps)
        .ok_or_else(|| invalid(Path::new("t"), "no plugin 2"))?;
    assert_eq!(
        s2["runtimeConfig"],
        json!({"bandwidth": {"ingressRate": 1000, "ingressBurst": 10, "egressRate": 2000, "egressBurst": 20}})
    );
    assert!(l.plugin_stdin(3, None, &caps).is_none());
    // Nothing to give: no runtimeConfig at all.
    let s1 = l
        .plugin_stdin(1, None, &BTreeMap::new())
        .ok_or_else(|| invalid(Path::new("t"), "no plugin 1"))?;
    assert!(s1.get("runtimeConfig").is_none());
    Ok(())
}

#[test]
fn dns_capability_shape() {
    let rc = RuntimeConfig {
        dns: Some(DnsCapability {
            servers: vec!["1.1.1.1".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        ..Default::default()
    };
    assert_eq!(
        rc.capability_args().get("dns"),
        Some(
            &json!({"servers": ["1.1.1.1"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]})
        )
    );
    assert!(RuntimeConfig::default().capability_args().is_empty());
}

#[test]
fn packaged_default_conflist_parses() -> Result<(), ConfigError> {
    let text = include_str!("../../../packaging/cni/10-hull-bridge.conflist");
    let path = Path::new("10-hull-bridge.conflist");
    let value = serde_json::from_str(text).map_err(|source| ConfigError::Json {
        path: path.into(),
        source,
    })?;
    let l = NetworkConfigList::from_list_value(value, path)?;
    assert_eq!((l.name.as_str(), l.cni_version.as_str()), ("hull", "1.0.0"));
    assert_eq!(l.plugin_types(), vec!["bridge", "portmap"]);
    let bridge = &l.plugins[0];
    assert_eq!(bridge["bridge"], "hull0");
    assert_eq!(
        (bridge["isGateway"].clone(), bridge["ipMasq"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(bridge["ipam"]["type"], "host-local");
    assert_eq!(l.plugins[1]["capabilities"], json!({"portMappings": true}));
    Ok(())
}
