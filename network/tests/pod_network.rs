//! Root integration tests of hull-network with Debian's real CNI plugins
//! (containernetworking-plugins in /usr/lib/cni), in namespaces the tests create.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Responder, TestEnv, frames};
use hull_network::cni::{PodRef, PortMapping, error_chain};
use hull_network::netlink::NetnsLink;
use hull_network::netns::Netns;
use hull_network::{PodNetworkStatus, PodSpec, tap, tc};

fn spec(id: &str, ports: Vec<PortMapping>) -> PodSpec {
    PodSpec {
        sandbox_id: id.to_string(),
        pod: PodRef {
            namespace: "default".into(),
            name: format!("pod-{id}"),
            uid: format!("uid-{id}"),
        },
        port_mappings: ports,
        ..PodSpec::default()
    }
}

fn ipv4(status: &PodNetworkStatus) -> Ipv4Addr {
    match status.ips.first().map(|i| i.address.addr) {
        Some(IpAddr::V4(ip)) => ip,
        other => panic!("no IPv4 in {other:?}"),
    }
}

/// Asserts tap0 exists and eth0 <-> tap0 redirects are installed, via netlink and `tc`.
async fn assert_mirroring(status: &PodNetworkStatus) {
    let netns = Netns::open(&status.netns).unwrap();
    let link = NetnsLink::connect(&netns).await.unwrap();
    let eth0 = link.link("eth0").await.unwrap();
    let tap = link.link(&status.tap).await.unwrap();
    assert!(tap.up, "tap is not up");
    assert_eq!(tap.mtu, eth0.mtu);
    assert_eq!(status.mac, eth0.mac);
    assert_eq!(status.mtu, eth0.mtu);
    assert_eq!(
        tc::redirect_targets(&link, eth0.index).await.unwrap(),
        vec![tap.index]
    );
    assert_eq!(
        tc::redirect_targets(&link, tap.index).await.unwrap(),
        vec![eth0.index]
    );
    let ns_name = status
        .netns
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = std::process::Command::new("tc")
        .args(["-n", &ns_name, "filter", "show", "dev", "eth0", "ingress"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("u32") && text.contains("mirred (Egress Redirect to device tap0)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_get_ips_tap_mirroring_traffic_and_clean_teardown() {
    let env = TestEnv::new(&[TestEnv::portmap()]);
    let net = env.network();
    assert!(net.ready().is_ok(), "{:?}", net.ready());
    let port = PortMapping {
        host_port: 18080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    };
    let a = net
        .setup(&spec("poda", vec![port]))
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    let b = net
        .setup(&spec("podb", vec![]))
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    let (ip_a, ip_b) = (ipv4(&a), ipv4(&b));
    assert_ne!(ip_a, ip_b);
    assert_eq!(a.ips[0].address.prefix_len, 24);
    let gw = a.ips[0].gateway.expect("gateway in CNI result");
    assert!(a.netns.exists() && b.netns.exists());
    assert_eq!(env.reserved_ips().len(), 2, "{:?}", env.reserved_ips());
    println!("setup timings: a {:?} b {:?}", a.timings, b.timings);
    assert_mirroring(&a).await;
    assert_mirroring(&b).await;
    // portmap's CHECK wants an ip6tables chain even for IPv4-only pods, so CHECK a pod
    // without port mappings (it still runs portmap's CHECK, with nothing to check).
    net.check("podb")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert!(
        env.host_cmd(&["iptables-save", "-t", "nat"])
            .contains("CNI-DN-"),
        "portmap chain missing"
    );

    // Play the VMM on each tap: host -> eth0 -> tap, and tap -> eth0 -> host.
    for st in [&a, &b] {
        let netns = Netns::open(&st.netns).unwrap();
        let fd = tap::open_queue(&netns, &st.tap, false).unwrap();
        let responder = Responder::start(fd, ipv4(st), frames::parse_mac(&st.mac));
        let host = env.host.clone();
        let ip = ipv4(st);
        let ok = tokio::task::spawn_blocking(move || common::udp_roundtrip(&host, ip))
            .await
            .unwrap();
        assert!(ok, "no UDP round trip through the tap of {ip}");
        assert!(responder.seen.arp_requests.load(Ordering::SeqCst) > 0);
        assert!(responder.seen.udp_echoed.load(Ordering::SeqCst) > 0);
        if st.ips == a.ips {
            // hostPort 18080 on the gateway address reaches port 80 on the pod's tap.
            let host = env.host.clone();
            tokio::task::spawn_blocking(move || {
                host.run(move || {
                    let addr = std::net::SocketAddr::new(gw, 18080);
                    let _ =
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(1500));
                })
            })
            .await
            .unwrap()
            .unwrap();
            assert!(
                responder.seen.tcp_syns.load(Ordering::SeqCst) > 0,
                "hostPort DNAT did not reach the tap"
            );
        }
    }

    // Pod to pod across the bridge: a frame written into A's tap reaches B's tap, and
    // B's reply comes back out of A's tap.
    {
        let b_tap = tap::open_queue(&Netns::open(&b.netns).unwrap(), &b.tap, false).unwrap();
        let _b = Responder::start(b_tap, ip_b, frames::parse_mac(&b.mac));
        let a_tap = tap::open_queue(&Netns::open(&a.netns).unwrap(), &a.tap, false).unwrap();
        let (mac_a, mac_b) = (frames::parse_mac(&a.mac), frames::parse_mac(&b.mac));
        let got = tokio::task::spawn_blocking(move || {
            common::pod_to_pod(&a_tap, (ip_a, mac_a), (ip_b, mac_b))
        })
        .await
        .unwrap();
        assert!(got, "no reply from pod B through the bridge");
    }

    net.teardown("poda")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    net.teardown("podb")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    // Idempotent, also for ids never seen.
    net.teardown("poda")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    net.teardown("never-created")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();

    assert!(
        env.netns_files().is_empty(),
        "netns left: {:?}",
        env.netns_files()
    );
    assert!(!a.netns.exists() && !b.netns.exists());
    assert!(
        env.reserved_ips().is_empty(),
        "IP reservations left: {:?}",
        env.reserved_ips()
    );
    let links = env.host_links();
    assert!(
        !links.iter().any(|l| l.starts_with("veth")),
        "veth left: {links:?}"
    );
    let nat = env.host_cmd(&["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("CNI-DN-"), "portmap chain left:\n{nat}");
    assert!(
        std::fs::read_dir(env.cache_dir.path())
            .unwrap()
            .next()
            .is_none(),
        "cache left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugin_message_comes_back_and_setup_is_undone() {
    let env = TestEnv::new(&[serde_json::json!({"type": "hull-test-fail"})]);
    let script = env.extra_bin.path().join("hull-test-fail");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"injected failure\",\"details\":\"by the test\"}'\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let net = env.network();
    let err = net
        .setup(&spec("failpod", vec![]))
        .await
        .expect_err("setup must fail");
    let msg = error_chain(&err);
    assert!(
        msg.contains("injected failure: by the test (code 11)"),
        "{msg}"
    );
    // The bridge plugin had succeeded: its veth and IP must have been released.
    assert!(
        env.netns_files().is_empty(),
        "netns left: {:?}",
        env.netns_files()
    );
    assert!(
        env.reserved_ips().is_empty(),
        "IP reservations left: {:?}",
        env.reserved_ips()
    );
    assert!(
        !env.host_links().iter().any(|l| l.starts_with("veth")),
        "{:?}",
        env.host_links()
    );
    assert!(
        std::fs::read_dir(env.cache_dir.path())
            .unwrap()
            .next()
            .is_none(),
        "cache left"
    );

    // A real plugin's own message: host-local runs out of addresses in a /30 (one usable
    // address besides the gateway). The second pod's undo must not disturb the first.
    let small = format!(
        "10.{}.{}.0/30",
        100 + std::process::id() % 50,
        std::process::id() % 250
    );
    std::fs::write(
        env.conf_dir.path().join("00-small.conflist"),
        serde_json::to_vec(&serde_json::json!({"cniVersion": "1.0.0", "name": env.net_name, "plugins": [
            {"type": "bridge", "bridge": format!("{}s", env.bridge), "isGateway": true, "ipam": {"type": "host-local", "subnet": small}}
        ]}))
        .unwrap(),
    )
    .unwrap();
    let first = net
        .setup(&spec("fullpod1", vec![]))
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    let msg = error_chain(
        &net.setup(&spec("fullpod2", vec![]))
            .await
            .expect_err("no address left"),
    );
    assert!(
        msg.contains("Plugin bridge ADD failed") && msg.contains("no IP addresses available"),
        "{msg}"
    );
    assert_eq!(env.netns_files().len(), 1, "{:?}", env.netns_files());
    assert_eq!(env.reserved_ips(), vec![ipv4(&first).to_string()]);
    net.teardown("fullpod1")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert!(env.netns_files().is_empty() && env.reserved_ips().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_after_restart_and_conf_change_uses_the_cache() {
    let env = TestEnv::new(&[]);
    let st = env
        .network()
        .setup(&spec("cachepod", vec![]))
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert_eq!(env.reserved_ips(), vec![ipv4(&st).to_string()]);
    // The operator replaces the network config; hulld restarts (a new PodNetwork).
    for e in std::fs::read_dir(env.conf_dir.path()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    std::fs::write(
        env.conf_dir.path().join("10-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"hull-no-such-plugin"}]}"#,
    )
    .unwrap();
    let restarted = env.network();
    assert!(
        restarted.ready().is_err(),
        "a missing plugin must make the network not ready"
    );
    restarted
        .teardown("cachepod")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert!(env.reserved_ips().is_empty(), "{:?}", env.reserved_ips());
    assert!(
        !env.host_links().iter().any(|l| l.starts_with("veth")),
        "{:?}",
        env.host_links()
    );
    assert!(!Path::new(&st.netns).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_detects_missing_mirroring() {
    let env = TestEnv::new(&[]);
    let net = env.network();
    let st = net
        .setup(&spec("checkpod", vec![]))
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    net.check("checkpod")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    let netns = Netns::open(&st.netns).unwrap();
    let link = NetnsLink::connect(&netns).await.unwrap();
    let eth0 = link.link("eth0").await.unwrap();
    tc::remove_mirroring(&link, &[eth0.index]).await.unwrap();
    let err = net.check("checkpod").await.expect_err("check must notice");
    assert!(
        matches!(err, hull_network::PodNetworkError::MirroringMissing),
        "{err:?}"
    );
    net.teardown("checkpod")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert!(env.reserved_ips().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packaged_default_conflist_works_with_real_plugins() {
    let env = TestEnv::new(&[]);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/cni/10-hull-bridge.conflist"
    ))
    .unwrap();
    let mut list: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Same config, with this test's unique network name, bridge and subnet.
    list["name"] = env.net_name.clone().into();
    list["plugins"][0]["bridge"] = env.bridge.clone().into();
    list["plugins"][0]["ipam"]["ranges"] = serde_json::json!([[{"subnet": env.subnet}]]);
    std::fs::write(
        env.conf_dir.path().join("00-packaged.conflist"),
        serde_json::to_vec(&list).unwrap(),
    )
    .unwrap();
    let net = env.network();
    let port = PortMapping {
        host_port: 18081,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    };
    let st = net
        .setup(&spec("pkgpod", vec![port]))
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert_eq!(env.reserved_ips(), vec![ipv4(&st).to_string()]);
    assert!(
        env.host_links().contains(&env.bridge),
        "{:?}",
        env.host_links()
    );
    assert!(
        env.host_cmd(&["iptables-save", "-t", "nat"])
            .contains("CNI-DN-")
    );
    assert_mirroring(&st).await;
    net.teardown("pkgpod")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert!(env.reserved_ips().is_empty() && env.netns_files().is_empty());
    assert!(
        !env.host_cmd(&["iptables-save", "-t", "nat"])
            .contains("CNI-DN-")
    );
    assert!(!env.host_links().iter().any(|l| l.starts_with("veth")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_cleans_up_after_a_crash_between_cni_add_and_tap() {
    let env = TestEnv::new(&[]);
    let net = env.network();
    // What a hulld killed right after CNI ADD leaves behind: netns + CNI state, no tap.
    let path = net.netns_path("crashpod").unwrap();
    Netns::create(&path).unwrap();
    let att = hull_network::cni::Attachment {
        container_id: "crashpod".into(),
        netns: path.clone(),
        ifname: "eth0".into(),
        args: "IgnoreUnknown=1".into(),
    };
    let rc = hull_network::cni::RuntimeConfig::default();
    net.cni()
        .add(&att, &rc)
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert_eq!(env.reserved_ips().len(), 1);
    // A new hulld tears it down.
    env.network()
        .teardown("crashpod")
        .await
        .map_err(|e| error_chain(&e))
        .unwrap();
    assert!(env.reserved_ips().is_empty() && env.netns_files().is_empty());
    assert!(!env.host_links().iter().any(|l| l.starts_with("veth")));
}
