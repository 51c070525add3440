//! `SetupSandbox`: the first call hulld makes once the agent is reachable. It sets up what
//! is per pod VM, so that a VM restored from a template snapshot (a guest that booted to
//! agent-ready once) becomes this pod's: fresh host entropy and the host's wall clock
//! ([`crate::vmstate`]), the virtio-fs share ([`crate::share`]), then hostname, DNS,
//! interfaces, routes and sysctls of the pod (the guest's root namespaces, which every
//! container shares for the network). Everything is validated before anything is changed.

use std::net::IpAddr;

use hull_agent_api::v1::SetupSandboxRequest;
use hull_agent_api::validate::{self, ValidateError};

use crate::netcfg::{self, NetError};
use crate::share::{self, ShareError};
use crate::vmstate::{self, VmStateError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error("Interface {0} not found in the guest")]
    NoInterface(String),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("Failed to {step}")]
    Apply {
        step: String,
        #[source]
        source: std::io::Error,
    },
}

struct Iface {
    name: String,
    mac: Option<[u8; 6]>,
    mtu: u32,
    addrs: Vec<(IpAddr, u8)>,
}

impl Iface {
    fn mac_text(&self) -> String {
        let bytes = self.mac.unwrap_or_default().map(|b| format!("{b:02x}"));
        bytes.join(":")
    }
}

struct RouteSpec {
    dest: (IpAddr, u8),
    gateway: Option<IpAddr>,
    device: Option<String>,
}

fn parse_ifaces(req: &SetupSandboxRequest) -> Result<Vec<Iface>, ValidateError> {
    req.interfaces
        .iter()
        .map(|i| {
            let mac = (!i.mac.is_empty())
                .then(|| validate::mac("interfaces[].mac", &i.mac))
                .transpose()?;
            if i.mtu != 0 && !(68..=65535).contains(&i.mtu) {
                return Err(ValidateError::Invalid {
                    field: "interfaces[].mtu",
                    value: i.mtu.to_string(),
                    reason: "must be 68..65535",
                });
            }
            if mac.is_none() && i.name.is_empty() {
                return Err(ValidateError::Empty {
                    field: "interfaces[].name or mac",
                });
            }
            let addrs = i
                .addresses
                .iter()
                .map(|a| validate::cidr("interfaces[].addresses", &a.cidr))
                .collect::<Result<_, _>>()?;
            Ok(Iface {
                name: i.name.clone(),
                mac,
                mtu: i.mtu,
                addrs,
            })
        })
        .collect()
}

fn parse_routes(req: &SetupSandboxRequest) -> Result<Vec<RouteSpec>, ValidateError> {
    req.routes
        .iter()
        .map(|r| {
            let dest = validate::cidr("routes[].destination", &r.destination)?;
            let gateway = (!r.gateway.is_empty())
                .then(|| {
                    r.gateway
                        .parse::<IpAddr>()
                        .map_err(|_| ValidateError::Invalid {
                            field: "routes[].gateway",
                            value: r.gateway.clone(),
                            reason: "bad address",
                        })
                })
                .transpose()?;
            if gateway.is_some_and(|g| g.is_ipv4() != dest.0.is_ipv4()) {
                return Err(ValidateError::Invalid {
                    field: "routes[].gateway",
                    value: r.gateway.clone(),
                    reason: "address family differs from the destination's",
                });
            }
            Ok(RouteSpec {
                dest,
                gateway,
                device: (!r.device.is_empty()).then(|| r.device.clone()),
            })
        })
        .collect()
}

fn resolv_conf(req: &SetupSandboxRequest) -> Result<Option<String>, ValidateError> {
    let Some(dns) = &req.dns else { return Ok(None) };
    let mut out = String::new();
    for ns in &dns.nameservers {
        let ip: IpAddr = ns.parse().map_err(|_| ValidateError::Invalid {
            field: "dns.nameservers",
            value: ns.clone(),
            reason: "bad address",
        })?;
        out.push_str(&format!("nameserver {ip}\n"));
    }
    let clean = |field: &'static str, v: &String| {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidateError::Invalid {
                field,
                value: v.clone(),
                reason: "empty or contains whitespace",
            });
        }
        Ok(v.clone())
    };
    let searches = dns
        .searches
        .iter()
        .map(|s| clean("dns.searches", s))
        .collect::<Result<Vec<_>, _>>()?;
    let options = dns
        .options
        .iter()
        .map(|s| clean("dns.options", s))
        .collect::<Result<Vec<_>, _>>()?;
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Ok(Some(out))
}

fn io_step(step: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Apply {
        step: step.to_owned(),
        source,
    }
}

/// The link to configure for `iface` and the MAC to give it: the link with its MAC; else,
/// when a name is given and that link exists, that link, which gets the MAC (a VM restored
/// from a template still has the template's MAC); else the link named (no MAC given).
fn pick_link(
    iface: &Iface,
    find_by_mac: impl Fn([u8; 6]) -> Option<String>,
    exists: impl Fn(&str) -> bool,
) -> Result<(String, Option<[u8; 6]>), SandboxError> {
    let Some(mac) = iface.mac else {
        return Ok((iface.name.clone(), None));
    };
    if let Some(name) = find_by_mac(mac) {
        return Ok((name, None));
    }
    if !iface.name.is_empty() && exists(&iface.name) {
        return Ok((iface.name.clone(), Some(mac)));
    }
    Err(SandboxError::NoInterface(format!(
        "with MAC {mac:02x?} or name {:?}",
        iface.name
    )))
}

/// The wall clock first (the host's time is already as old as the request's transit),
/// then host entropy, before anything that could use either.
fn refresh_vm_state(req: &SetupSandboxRequest) -> Result<(), SandboxError> {
    if let Some(host) = validate::host_time(req.host_time_unix_nanos)? {
        vmstate::sync_clock(host)?;
    }
    if req.entropy.is_empty() {
        tracing::debug!("no host entropy sent (older hulld)");
    } else {
        vmstate::add_entropy(&req.entropy)?;
        tracing::info!(
            bytes = req.entropy.len(),
            "host entropy added, CRNG reseeded"
        );
    }
    Ok(())
}

fn apply_names(
    req: &SetupSandboxRequest,
    resolv: Option<String>,
    sysctls: Vec<(String, String)>,
) -> Result<(), SandboxError> {
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname).map_err(|e| io_step("set hostname")(e.into()))?;
        std::fs::write("/etc/hostname", format!("{}\n", req.hostname))
            .map_err(io_step("write /etc/hostname"))?;
        let hosts = format!(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 {}\n",
            req.hostname
        );
        std::fs::write("/etc/hosts", hosts).map_err(io_step("write /etc/hosts"))?;
    }
    if let Some(resolv) = resolv {
        std::fs::write("/etc/resolv.conf", resolv).map_err(io_step("write /etc/resolv.conf"))?;
    }
    for (path, value) in sysctls {
        std::fs::write(&path, value).map_err(io_step(&path))?;
    }
    Ok(())
}

fn apply_network(ifaces: &[Iface], routes: &[RouteSpec]) -> Result<(), SandboxError> {
    netcfg::configure_link("lo", 0, None)?;
    for i in ifaces {
        let (name, set_mac) = pick_link(i, netcfg::find_by_mac, netcfg::exists)?;
        if set_mac.is_some() {
            tracing::info!(link = %name, mac = %i.mac_text(), "no link has the pod MAC; setting it on the named link");
        }
        netcfg::configure_link(&name, i.mtu, set_mac)?;
        for (addr, prefix) in &i.addrs {
            netcfg::add_address(&name, *addr, *prefix)?;
        }
    }
    for r in routes {
        netcfg::add_route(r.dest.0, r.dest.1, r.gateway, r.device.as_deref())?;
    }
    Ok(())
}

/// Every sysctl must exist in this kernel: an unknown one is the client's mistake
/// (INVALID_ARGUMENT), found before anything is applied.
fn known_sysctls(
    sysctls: &[(String, String)],
    exists: impl Fn(&std::path::Path) -> bool,
) -> Result<(), ValidateError> {
    match sysctls
        .iter()
        .find(|(p, _)| !exists(std::path::Path::new(p)))
    {
        Some((path, _)) => Err(ValidateError::Invalid {
            field: "sysctls",
            value: validate::excerpt(path.trim_start_matches("/proc/sys/")),
            reason: "the guest kernel has no such sysctl",
        }),
        None => Ok(()),
    }
}

/// Validates the whole request, then applies it.
pub fn setup(req: &SetupSandboxRequest) -> Result<(), SandboxError> {
    if !req.hostname.is_empty() {
        validate::hostname(&req.hostname)?;
    }
    validate::entropy(&req.entropy)?;
    validate::host_time(req.host_time_unix_nanos)?;
    let ifaces = parse_ifaces(req)?;
    let routes = parse_routes(req)?;
    let resolv = resolv_conf(req)?;
    let sysctls = req
        .sysctls
        .iter()
        .map(|(k, v)| Ok((validate::sysctl_key(k)?, v.clone())))
        .collect::<Result<Vec<_>, ValidateError>>()?;
    known_sysctls(&sysctls, std::path::Path::exists)?;

    refresh_vm_state(req)?;
    share::ensure_mounted()?;
    apply_names(req, resolv, sysctls)?;
    apply_network(&ifaces, &routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_agent_api::v1::{DnsConfig, Interface, IpAddress, Route};

    #[test]
    fn validates_before_applying() {
        let mut req = SetupSandboxRequest {
            hostname: "pod1".into(),
            dns: Some(DnsConfig {
                nameservers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: String::new(),
                mtu: 1450,
                addresses: vec![IpAddress {
                    cidr: "10.88.0.2/16".into(),
                }],
            }],
            routes: vec![Route {
                destination: "0.0.0.0/0".into(),
                gateway: "10.88.0.1".into(),
                device: "eth0".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&req).expect("ok").as_deref(),
            Some("nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n")
        );
        assert_eq!(parse_ifaces(&req).expect("ok")[0].addrs.len(), 1);
        assert_eq!(parse_routes(&req).expect("ok").len(), 1);
        req.routes[0].gateway = "fd00::1".into();
        assert!(parse_routes(&req).is_err());
        req.interfaces[0].mtu = 10;
        assert!(parse_ifaces(&req).is_err());
        req.dns = Some(DnsConfig {
            nameservers: vec!["not-an-ip".into()],
            ..Default::default()
        });
        assert!(resolv_conf(&req).is_err());
        req.hostname = "bad host".into();
        assert!(matches!(setup(&req), Err(SandboxError::Validate(_))));
    }

    #[test]
    fn unknown_sysctls_are_invalid_arguments() {
        let sysctls = vec![
            ("/proc/sys/net/ipv4/ip_forward".to_owned(), "1".to_owned()),
            ("/proc/sys/net/ipv4/nope".to_owned(), "1".to_owned()),
        ];
        let exists = |p: &std::path::Path| p.ends_with("ip_forward");
        let err = known_sysctls(&sysctls, exists).expect_err("unknown");
        assert!(err.to_string().contains("net/ipv4/nope"), "{err}");
        assert!(known_sysctls(&sysctls[..1], exists).is_ok());
    }

    fn iface(name: &str, mac: Option<[u8; 6]>) -> Iface {
        Iface {
            name: name.into(),
            mac,
            mtu: 0,
            addrs: vec![],
        }
    }

    #[test]
    fn picks_link_by_mac_then_by_name() {
        const POD: [u8; 6] = [2, 0, 0, 0, 0, 7];
        let by_mac = |m: [u8; 6]| (m == POD).then(|| "eth1".to_owned());
        let none = |_: [u8; 6]| None;
        let eth0 = |n: &str| n == "eth0";
        let pick = |i: &Iface, f: &dyn Fn([u8; 6]) -> Option<String>| pick_link(i, f, eth0);
        // The MAC wins over the name.
        assert_eq!(
            pick(&iface("eth0", Some(POD)), &by_mac).expect("by MAC"),
            ("eth1".to_owned(), None)
        );
        // Restored from a template: nothing has the MAC, the named link gets it.
        assert_eq!(
            pick(&iface("eth0", Some(POD)), &none).expect("by name"),
            ("eth0".to_owned(), Some(POD))
        );
        assert!(matches!(
            pick(&iface("eth9", Some(POD)), &none),
            Err(SandboxError::NoInterface(_))
        ));
        assert!(matches!(
            pick(&iface("", Some(POD)), &none),
            Err(SandboxError::NoInterface(_))
        ));
        assert_eq!(
            pick(&iface("eth0", None), &none).expect("name only"),
            ("eth0".to_owned(), None)
        );
    }

    #[test]
    fn bad_entropy_or_time_changes_nothing() {
        let short = SetupSandboxRequest {
            entropy: vec![1; 8],
            ..Default::default()
        };
        assert!(matches!(setup(&short), Err(SandboxError::Validate(_))));
        let negative = SetupSandboxRequest {
            host_time_unix_nanos: -5,
            ..Default::default()
        };
        assert!(matches!(setup(&negative), Err(SandboxError::Validate(_))));
    }

    #[test]
    fn template_nic_gets_the_pod_mac() {
        const SETUP: &[&[&str]] = &[&[
            "link",
            "add",
            "eth0",
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "peer0",
        ]];
        let pod = [2, 0, 0, 0, 0, 9];
        let (mac, by_mac) = netcfg::in_new_netns(SETUP, move || {
            let ifaces = [Iface {
                addrs: vec![("10.77.0.2".parse().expect("ip"), 24)],
                ..iface("eth0", Some(pod))
            }];
            apply_network(&ifaces, &[]).expect("apply network");
            // Again, as a retried SetupSandbox would: found by MAC now (the address exists).
            let again = apply_network(&ifaces, &[]);
            (
                netcfg::mac_of("eth0").ok(),
                (netcfg::find_by_mac(pod), again.is_ok()),
            )
        });
        assert_eq!(mac, Some(pod));
        assert_eq!(by_mac, (Some("eth0".to_owned()), true));
    }
}
