//! Translating the pod's config and the CNI result into what hull-network and the agent
//! take: the [`PodSpec`] for CNI, and the guest's `SetupSandbox` (hostname, DNS, eth0 with
//! the pod's MAC/MTU/IPs, routes, sysctls, plus fresh host entropy and the host's wall
//! clock, which a VM restored from a template snapshot would otherwise share with the
//! template).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hull_agent_api::v1 as pb;
use hull_cri_api::{PodSandboxConfig, Protocol};
use hull_network::cni::{DnsCapability, PodRef, PortMapping};
use hull_network::{PodNetworkStatus, PodSpec};

use super::SandboxError;

/// The CNI side of a pod: identity, port mappings (only those with a host port reach
/// portmap), DNS.
pub fn pod_spec(id: &str, config: &PodSandboxConfig) -> Result<PodSpec, SandboxError> {
    let meta = config.metadata.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for p in &config.port_mappings {
        let port = |what: &str, v: i32| {
            u16::try_from(v).map_err(|_| {
                SandboxError::InvalidRequest(format!("port mapping {what} {v} is out of range"))
            })
        };
        let container_port = port("container_port", p.container_port)?;
        let host_port = port("host_port", p.host_port)?;
        if host_port == 0 {
            continue;
        }
        let protocol = match Protocol::try_from(p.protocol) {
            Ok(Protocol::Tcp) => "tcp",
            Ok(Protocol::Udp) => "udp",
            Ok(Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(SandboxError::InvalidRequest(format!(
                    "port mapping protocol {} is unknown",
                    p.protocol
                )));
            }
        };
        ports.push(PortMapping {
            host_port,
            container_port,
            protocol: protocol.into(),
            host_ip: p.host_ip.clone(),
        });
    }
    let dns = config.dns_config.as_ref().map(|d| DnsCapability {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    Ok(PodSpec {
        sandbox_id: id.to_owned(),
        pod: PodRef {
            namespace: meta.namespace,
            name: meta.name,
            uid: meta.uid,
        },
        port_mappings: ports,
        dns,
        bandwidth: None,
        nic: hull_network::PodNic::VmTap,
    })
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// A hostname from a pod name when kubelet gives none: one RFC 1123 label of at most 63
/// bytes (kubelet truncates the same way), any other character made a `-`, without a
/// leading or trailing `-`, so any pod name still boots.
fn pod_hostname(name: &str) -> String {
    let label: String = name
        .chars()
        .take(63)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    label.trim_matches('-').to_owned()
}

/// How many bytes of host entropy each pod VM gets (the agent accepts 32..=256).
pub const ENTROPY_BYTES: usize = 64;

/// [`ENTROPY_BYTES`] from the OS RNG; empty (the agent then skips it) if the RNG fails,
/// which only a broken host does.
fn host_entropy(id: &str) -> Vec<u8> {
    let mut bytes = vec![0u8; ENTROPY_BYTES];
    match getrandom::fill(&mut bytes) {
        Ok(()) => bytes,
        Err(e) => {
            tracing::error!(sandbox_id = %id, error = %e, "OS RNG failed; the guest gets no host entropy");
            Vec::new()
        }
    }
}

/// Now, in ns since the Unix epoch (0, "not sent", for a clock before 1970 or after 2262).
fn host_time_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// The guest's setup: eth0 found by the pod MAC (or by name, if the guest NIC still has
/// a template's MAC), the CNI IPs, the CNI routes (a route without a gateway gets the
/// gateway of its family, as the CNI bridge plugin means it), host entropy and time.
pub fn setup_request(
    id: &str,
    config: &PodSandboxConfig,
    net: &PodNetworkStatus,
) -> pb::SetupSandboxRequest {
    let hostname = if config.hostname.is_empty() {
        let name = config.metadata.as_ref().map(|m| m.name.as_str());
        pod_hostname(name.unwrap_or_default())
    } else {
        config.hostname.clone()
    };
    let dns = config.dns_config.as_ref().map(|d| pb::DnsConfig {
        nameservers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    let gateways: Vec<IpAddr> = net.ips.iter().filter_map(|ip| ip.gateway).collect();
    let routes = net
        .routes
        .iter()
        .map(|r| {
            let gw = r.gw.or_else(|| {
                gateways
                    .iter()
                    .find(|g| same_family(g, &r.dst.addr))
                    .copied()
            });
            pb::Route {
                destination: r.dst.to_string(),
                gateway: gw.map(|g| g.to_string()).unwrap_or_default(),
                device: String::new(),
            }
        })
        .collect();
    let sysctls = config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone().into_iter().collect())
        .unwrap_or_default();
    pb::SetupSandboxRequest {
        sandbox_id: id.to_owned(),
        hostname,
        dns,
        interfaces: vec![pb::Interface {
            name: "eth0".into(),
            mac: net.mac.clone(),
            mtu: net.mtu,
            addresses: net
                .ips
                .iter()
                .map(|ip| pb::IpAddress {
                    cidr: ip.address.to_string(),
                })
                .collect(),
        }],
        routes,
        sysctls,
        entropy: host_entropy(id),
        host_time_unix_nanos: host_time_unix_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_cri_api::{DnsConfig, PodSandboxMetadata, PortMapping as CriPort};
    use hull_network::cni::{IpConfig, IpNetwork, Route};

    fn config() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            dns_config: Some(DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc".into()],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: vec![
                CriPort {
                    protocol: 0,
                    container_port: 80,
                    host_port: 8080,
                    host_ip: String::new(),
                },
                CriPort {
                    protocol: 1,
                    container_port: 53,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn pod_spec_keeps_host_ports_only() {
        let spec = pod_spec("abc", &config()).unwrap();
        assert_eq!(spec.pod.name, "web");
        assert_eq!(spec.pod.uid, "u1");
        assert_eq!(spec.port_mappings.len(), 1);
        assert_eq!(spec.port_mappings[0].protocol, "tcp");
        assert_eq!(spec.port_mappings[0].host_port, 8080);
        assert_eq!(spec.dns.unwrap().servers, vec!["10.96.0.10"]);
        let mut bad = config();
        bad.port_mappings[0].host_port = 70000;
        assert!(matches!(
            pod_spec("abc", &bad),
            Err(SandboxError::InvalidRequest(_))
        ));
        bad.port_mappings[0].host_port = 1;
        bad.port_mappings[0].protocol = 9;
        assert!(matches!(
            pod_spec("abc", &bad),
            Err(SandboxError::InvalidRequest(_))
        ));
    }

    fn net() -> PodNetworkStatus {
        PodNetworkStatus {
            netns: "/run/netns/hull-abc".into(),
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1450,
            ips: vec![IpConfig {
                address: "10.88.0.5/16".parse::<IpNetwork>().unwrap(),
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Default::default(),
            cni_result: serde_json::Value::Null,
            timings: Default::default(),
        }
    }

    #[test]
    fn setup_request_fills_default_route_gateway() {
        let net = net();
        let req = setup_request("abc", &config(), &net);
        assert_eq!(req.hostname, "web");
        assert_eq!(req.interfaces[0].mac, "02:00:00:00:00:01");
        assert_eq!(req.interfaces[0].mtu, 1450);
        assert_eq!(req.interfaces[0].addresses[0].cidr, "10.88.0.5/16");
        assert_eq!(req.routes[0].destination, "0.0.0.0/0");
        assert_eq!(req.routes[0].gateway, "10.88.0.1");
        assert_eq!(req.dns.unwrap().options, vec!["ndots:5"]);
        assert_eq!(req.interfaces[0].name, "eth0");
    }

    #[test]
    fn setup_request_carries_fresh_entropy_and_host_time() {
        let before = host_time_unix_nanos();
        let a = setup_request("abc", &config(), &net());
        let b = setup_request("abc", &config(), &net());
        let after = host_time_unix_nanos();
        assert_eq!(a.entropy.len(), ENTROPY_BYTES);
        hull_agent_api::validate::entropy(&a.entropy).expect("agent accepts it");
        assert_ne!(a.entropy, b.entropy, "each VM gets its own bytes");
        assert_ne!(a.entropy, vec![0; ENTROPY_BYTES]);
        assert!(before > 1_600_000_000_000_000_000, "{before}");
        assert!((before..=after).contains(&a.host_time_unix_nanos));
        assert!(
            hull_agent_api::validate::host_time(a.host_time_unix_nanos)
                .expect("agent accepts it")
                .is_some()
        );
    }

    #[test]
    fn long_pod_names_make_valid_hostnames() {
        let long = format!("create-PodSandbox-for-container-{}", "a1b2c3d4-".repeat(6));
        let h = pod_hostname(&long);
        assert!(h.len() <= 63, "{h}");
        assert!(!h.ends_with('-'), "{h}");
        assert!(long.starts_with(&h));
        assert_eq!(pod_hostname("web"), "web");
        assert_eq!(pod_hostname(""), "");
        for name in ["a_b.c", "-x-", "é-pod", "web.1", &"ü".repeat(80)] {
            let h = pod_hostname(name);
            assert!(
                h.is_empty() || hull_agent_api::validate::hostname(&h).is_ok(),
                "{name:?} -> {h:?}"
            );
        }
    }
}
