//! `SetupSandbox`: hostname, DNS, interfaces, routes and sysctls of the pod (the guest's
//! root namespaces, which every container shares for the network). Everything is
//! validated before anything is changed.

use std::net::IpAddr;

use hull_agent_api::v1::SetupSandboxRequest;
use hull_agent_api::validate::{self, ValidateError};

use crate::netcfg::{self, NetError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error("Interface {0} not found in the guest")]
    NoInterface(String),
    #[error(transparent)]
    Net(#[from] NetError),
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

/// Validates the whole request, then applies it.
pub fn setup(req: &SetupSandboxRequest) -> Result<(), SandboxError> {
    if !req.hostname.is_empty() {
        validate::hostname(&req.hostname)?;
    }
    let ifaces = parse_ifaces(req)?;
    let routes = parse_routes(req)?;
    let resolv = resolv_conf(req)?;
    let sysctls = req
        .sysctls
        .iter()
        .map(|(k, v)| Ok((validate::sysctl_key(k)?, v.clone())))
        .collect::<Result<Vec<_>, ValidateError>>()?;

    netcfg::configure_link("lo", 0, None)?;
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
    for i in &ifaces {
        let name = match i.mac {
            Some(mac) => netcfg::find_by_mac(mac)
                .ok_or_else(|| SandboxError::NoInterface(format!("with MAC {mac:02x?}")))?,
            None => i.name.clone(),
        };
        netcfg::configure_link(&name, i.mtu, None)?;
        for (addr, prefix) in &i.addrs {
            netcfg::add_address(&name, *addr, *prefix)?;
        }
    }
    for r in &routes {
        netcfg::add_route(r.dest.0, r.dest.1, r.gateway, r.device.as_deref())?;
    }
    Ok(())
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
}
