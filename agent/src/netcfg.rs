//! Guest interface configuration with the classic socket ioctls (no netlink dependency):
//! link up, MTU, MAC, IPv4/IPv6 addresses, IPv4/IPv6 routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Errors from one ioctl step.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Interface name {0:?} is invalid")]
    Name(String),
    #[error("Failed to {step} on {iface}")]
    Ioctl {
        step: &'static str,
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

fn sock(family: AddressFamily) -> Result<OwnedFd, NetError> {
    socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(|e| NetError::Ioctl {
        step: "open socket",
        iface: String::new(),
        source: e.into(),
    })
}

fn ifreq(name: &str) -> Result<libc::ifreq, NetError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(NetError::Name(name.to_owned()));
    }
    // SAFETY: ifreq is a plain C struct/union for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl<T>(
    fd: &OwnedFd,
    request: libc::c_ulong,
    arg: &mut T,
    step: &'static str,
    iface: &str,
) -> Result<(), NetError> {
    // SAFETY: `arg` is the struct type the given request expects (ifreq, in6_ifreq,
    // rtentry or in6_rtmsg, chosen by each caller) and valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        return Err(NetError::Ioctl {
            step,
            iface: iface.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); this reinterprets the
    // bytes as the generic type the ioctl structs use.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// `struct in6_rtmsg` from <linux/ipv6_route.h> (libc's has private fields).
#[repr(C)]
struct In6Rtmsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

fn get_flags(fd: &OwnedFd, name: &str) -> Result<libc::c_short, NetError> {
    let mut req = ifreq(name)?;
    ioctl(fd, libc::SIOCGIFFLAGS, &mut req, "get flags", name)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

fn set_flags(
    fd: &OwnedFd,
    name: &str,
    flags: libc::c_short,
    step: &'static str,
) -> Result<(), NetError> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags;
    ioctl(fd, libc::SIOCSIFFLAGS, &mut req, step, name)
}

/// Sets the link's MAC. The link is set down first when it is up: drivers without live
/// address change refuse a running device with EBUSY (virtio-net allows it, but only
/// guests whose virtio-net negotiated nothing else; down is always safe). The caller sets
/// it up again ([`configure_link`] does).
fn set_mac(fd: &OwnedFd, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
    let flags = get_flags(fd, name)?;
    let up = libc::IFF_UP as libc::c_short;
    if flags & up != 0 {
        set_flags(fd, name, flags & !up, "set link down")?;
    }
    let mut req = ifreq(name)?;
    let mut sa: libc::sockaddr = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    sa.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in sa.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = sa;
    ioctl(fd, libc::SIOCSIFHWADDR, &mut req, "set MAC", name)
}

/// Sets the link up (and its MTU/MAC first when given).
pub fn configure_link(name: &str, mtu: u32, mac: Option<[u8; 6]>) -> Result<(), NetError> {
    let fd = sock(AddressFamily::Inet)?;
    if let Some(mac) = mac {
        set_mac(&fd, name, mac)?;
    }
    if mtu > 0 {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| NetError::Name(name.to_owned()))?;
        ioctl(&fd, libc::SIOCSIFMTU, &mut req, "set MTU", name)?;
    }
    let flags = get_flags(&fd, name)?;
    let up = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    set_flags(&fd, name, flags | up, "set link up")
}

fn ifindex(name: &str) -> Result<u32, NetError> {
    nix::net::if_::if_nametoindex(name).map_err(|e| NetError::Ioctl {
        step: "find interface",
        iface: name.to_owned(),
        source: e.into(),
    })
}

fn v4_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// Adds an address with its prefix length.
pub fn add_address(name: &str, addr: IpAddr, prefix: u8) -> Result<(), NetError> {
    match addr {
        IpAddr::V4(a) => {
            let fd = sock(AddressFamily::Inet)?;
            let mut req = ifreq(name)?;
            req.ifr_ifru.ifru_addr = sockaddr_in(a);
            ioctl(&fd, libc::SIOCSIFADDR, &mut req, "set IPv4 address", name)?;
            let mut req = ifreq(name)?;
            req.ifr_ifru.ifru_netmask = sockaddr_in(v4_mask(prefix));
            ioctl(&fd, libc::SIOCSIFNETMASK, &mut req, "set netmask", name)
        }
        IpAddr::V6(a) => {
            let fd = sock(AddressFamily::Inet6)?;
            let mut req = libc::in6_ifreq {
                ifr6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ifr6_prefixlen: u32::from(prefix),
                ifr6_ifindex: ifindex(name)? as libc::c_int,
            };
            ioctl(&fd, libc::SIOCSIFADDR, &mut req, "add IPv6 address", name)
        }
    }
}

/// Adds a route; `gateway` None makes it on-link via `device`.
pub fn add_route(
    dest: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    device: Option<&str>,
) -> Result<(), NetError> {
    let label = device.unwrap_or("-");
    match dest {
        IpAddr::V4(d) => {
            let fd = sock(AddressFamily::Inet)?;
            // SAFETY: rtentry is a plain C struct for which all-zero bytes are valid.
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sockaddr_in(d);
            rt.rt_genmask = sockaddr_in(v4_mask(prefix));
            rt.rt_flags = libc::RTF_UP;
            if let Some(IpAddr::V4(gw)) = gateway {
                rt.rt_gateway = sockaddr_in(gw);
                rt.rt_flags |= libc::RTF_GATEWAY;
            }
            let mut dev_name = device
                .map(|d| std::ffi::CString::new(d).map_err(|_| NetError::Name(d.to_owned())))
                .transpose()?;
            if let Some(n) = dev_name.as_mut() {
                rt.rt_dev = n.as_ptr() as *mut libc::c_char;
            }
            ioctl(&fd, libc::SIOCADDRT, &mut rt, "add IPv4 route", label)
        }
        IpAddr::V6(d) => {
            let fd = sock(AddressFamily::Inet6)?;
            let mut rt = In6Rtmsg {
                rtmsg_dst: libc::in6_addr {
                    s6_addr: d.octets(),
                },
                rtmsg_src: libc::in6_addr {
                    s6_addr: Ipv6Addr::UNSPECIFIED.octets(),
                },
                rtmsg_gateway: libc::in6_addr {
                    s6_addr: Ipv6Addr::UNSPECIFIED.octets(),
                },
                rtmsg_type: 0,
                rtmsg_dst_len: u16::from(prefix),
                rtmsg_src_len: 0,
                rtmsg_metric: 1,
                rtmsg_info: 0,
                rtmsg_flags: libc::RTF_UP as u32,
                rtmsg_ifindex: device.map(ifindex).transpose()?.unwrap_or(0) as libc::c_int,
            };
            if let Some(IpAddr::V6(gw)) = gateway {
                rt.rtmsg_gateway = libc::in6_addr {
                    s6_addr: gw.octets(),
                };
                rt.rtmsg_flags |= libc::RTF_GATEWAY as u32;
            }
            ioctl(&fd, libc::SIOCADDRT, &mut rt, "add IPv6 route", label)
        }
    }
}

/// The link's MAC (SIOCGIFHWADDR: this thread's network namespace, unlike /sys, which is
/// the namespace sysfs was mounted in).
pub fn mac_of(name: &str) -> Result<[u8; 6], NetError> {
    let fd = sock(AddressFamily::Inet)?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFHWADDR, &mut req, "get MAC", name)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa.sa_data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// The names of all links.
pub fn links() -> Result<Vec<String>, NetError> {
    let list = nix::net::if_::if_nameindex().map_err(|e| NetError::Ioctl {
        step: "list interfaces",
        iface: String::new(),
        source: e.into(),
    })?;
    Ok(list
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect())
}

/// The interface whose MAC is `mac`.
pub fn find_by_mac(mac: [u8; 6]) -> Option<String> {
    links()
        .ok()?
        .into_iter()
        .find(|name| mac_of(name).is_ok_and(|m| m == mac))
}

/// Whether a link named `name` exists.
pub fn exists(name: &str) -> bool {
    ifreq(name).is_ok() && ifindex(name).is_ok()
}

/// Runs `f` on a thread in a new, empty network namespace (gone when the thread ends),
/// after `ip` ran there with each of `setup`'s argument lists. Needs root.
#[cfg(test)]
pub(crate) fn in_new_netns<T: Send + 'static>(
    setup: &'static [&'static [&'static str]],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): run the tests as root");
        for args in setup {
            let status = std::process::Command::new("ip")
                .args(*args)
                .status()
                .expect("run ip (iproute2)");
            assert!(status.success(), "ip {args:?}: {status}");
        }
        f()
    })
    .join()
    .expect("netns thread panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_names() {
        assert_eq!(v4_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(v4_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(v4_mask(32), Ipv4Addr::BROADCAST);
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-very-long-interface-name").is_err());
    }

    const VETH: &[&[&str]] = &[&[
        "link",
        "add",
        "hullt0",
        "address",
        "02:00:00:00:00:01",
        "type",
        "veth",
        "peer",
        "name",
        "hullt1",
    ]];

    #[test]
    fn finds_by_mac_and_sets_mac_down_or_up() {
        let (before, after, up_again) = in_new_netns(VETH, || {
            let old = [2, 0, 0, 0, 0, 1];
            let new = [2, 0, 0, 0, 0, 2];
            let before = (find_by_mac(old), exists("hullt0"), exists("nope0"));
            // Down (as a fresh NIC is): MAC, MTU, up.
            configure_link("hullt0", 1400, Some(new)).expect("configure down link");
            let after = (find_by_mac(old), find_by_mac(new), mac_of("hullt0").ok());
            // Up now: set down, MAC, up again.
            configure_link("hullt0", 0, Some(old)).expect("configure up link");
            let fd = sock(AddressFamily::Inet).expect("socket");
            let flags = get_flags(&fd, "hullt0").expect("flags");
            let up_again = (find_by_mac(old), flags & libc::IFF_UP as libc::c_short != 0);
            (before, after, up_again)
        });
        assert_eq!(before, (Some("hullt0".to_owned()), true, false));
        assert_eq!(
            after,
            (None, Some("hullt0".to_owned()), Some([2, 0, 0, 0, 0, 2]))
        );
        assert_eq!(up_again, (Some("hullt0".to_owned()), true));
    }
}
