use super::*;
use serde_json::json;

#[test]
fn parses_1_0_0_result() -> Result<(), ResultError> {
    let raw = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "hull0", "mac": "aa:bb:cc:00:00:01"},
            {"name": "veth1234", "mac": "aa:bb:cc:00:00:02"},
            {"name": "eth0", "mac": "aa:bb:cc:00:00:03", "sandbox": "/run/netns/hull-x"}
        ],
        "ips": [
            {"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
            {"interface": 2, "address": "fd00::5/64", "gateway": "fd00::1"}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc"]}
    });
    let r = CniResult::from_value(&raw)?;
    let idx = r.interface_index("eth0", "/run/netns/hull-x");
    assert_eq!(idx, Some(2));
    let ips = r.ips_of(idx);
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0].address.to_string(), "10.88.0.5/16");
    assert_eq!(ips[1].address.prefix_len, 64);
    assert_eq!(ips[0].gateway, "10.88.0.1".parse().ok());
    assert_eq!(r.routes[0].gw, "10.88.0.1".parse().ok());
    assert_eq!(r.routes[1].gw, None);
    assert_eq!(r.dns.nameservers, vec!["10.96.0.10".to_string()]);
    assert_eq!(r.ips_of(Some(0)).len(), 0);
    // A differently spelled netns path still finds eth0; no eth0 at all gives every IP.
    assert_eq!(r.interface_index("eth0", "/var/run/netns/hull-x"), Some(2));
    assert_eq!(r.interface_index("eth1", "/run/netns/hull-x"), None);
    assert_eq!(r.ips_of(None).len(), 2);
    Ok(())
}

#[test]
fn parses_0_4_0_and_0_3_1_results() -> Result<(), ResultError> {
    for v in ["0.4.0", "0.3.1"] {
        let raw = json!({
            "cniVersion": v,
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/netns/p"}],
            "ips": [{"version": "4", "interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
            "dns": {}
        });
        let r = CniResult::from_value(&raw)?;
        assert_eq!(r.cni_version, v);
        assert_eq!(
            r.ips_of(Some(0))[0].address.addr,
            "10.88.0.5"
                .parse::<IpAddr>()
                .map_err(|_| ResultError::Version(VersionError::Malformed("x".into())))?
        );
        assert!(r.routes.is_empty());
    }
    Ok(())
}

#[test]
fn rejects_bad_results() {
    let bad = [
        json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}),
        json!({"ips": []}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/33"}]}),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "nope/24"}]}),
    ];
    for v in bad {
        assert!(CniResult::from_value(&v).is_err(), "{v}");
    }
}

#[test]
fn ip_network_round_trip() {
    let n: Result<IpNetwork, _> = "fd00::1/128".parse();
    assert_eq!(n.map(|n| n.to_string()), Ok("fd00::1/128".to_string()));
}
