//! Checks on identifiers and values that cross the host/guest boundary. The agent applies
//! them to every request; hulld can apply them before sending to fail early.

use std::net::IpAddr;

/// Errors from validating a request field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} {value:?} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

const MAX_ID: usize = 128;

/// A container or exec id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}` (safe as a path component).
pub fn id(field: &'static str, value: &str) -> Result<(), ValidateError> {
    let first = value.chars().next().ok_or(ValidateError::Empty { field })?;
    let invalid = |reason| ValidateError::Invalid {
        field,
        value: excerpt(value),
        reason,
    };
    if value.len() > MAX_ID {
        return Err(invalid("longer than 128 bytes"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or digit"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(invalid(
            "only letters, digits, '_', '.' and '-' are allowed",
        ));
    }
    Ok(())
}

/// An IPv4/IPv6 prefix in CIDR notation, returned as (address, prefix length).
pub fn cidr(field: &'static str, value: &str) -> Result<(IpAddr, u8), ValidateError> {
    let invalid = |reason| ValidateError::Invalid {
        field,
        value: excerpt(value),
        reason,
    };
    let (addr, len) = value
        .split_once('/')
        .ok_or(invalid("expected ADDRESS/PREFIX"))?;
    let addr: IpAddr = addr.parse().map_err(|_| invalid("bad address"))?;
    let len: u8 = len.parse().map_err(|_| invalid("bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(invalid("prefix length too long"));
    }
    Ok((addr, len))
}

/// A MAC address `aa:bb:cc:dd:ee:ff`.
pub fn mac(field: &'static str, value: &str) -> Result<[u8; 6], ValidateError> {
    let invalid = || ValidateError::Invalid {
        field,
        value: excerpt(value),
        reason: "expected six hex bytes separated by ':'",
    };
    let mut out = [0u8; 6];
    let mut parts = value.split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(out)
}

/// At most this many bytes of a refused value are quoted in an error.
pub const QUOTE_MAX: usize = 96;

/// `value` for an error message: at most [`QUOTE_MAX`] bytes of it, and its length when
/// cut (a 1 MiB input must not come back as a 1 MiB message).
pub fn excerpt(value: &str) -> String {
    if value.len() <= QUOTE_MAX {
        return value.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &value[..end], value.len())
}

/// The kernel's hostname limit (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;

/// A hostname: RFC 1123 labels (letters, digits, `-` inside, at most 63 bytes each),
/// dotted (kubelet sends the FQDN with `setHostnameAsFQDN`), at most 64 bytes in all.
pub fn hostname(value: &str) -> Result<(), ValidateError> {
    let field = "hostname";
    let invalid = |reason| ValidateError::Invalid {
        field,
        value: excerpt(value),
        reason,
    };
    if value.is_empty() {
        return Err(ValidateError::Empty { field });
    }
    if value.len() > HOSTNAME_MAX {
        return Err(invalid("longer than 64 bytes"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !value.split('.').all(ok_label) {
        return Err(invalid(
            "not a valid RFC 1123 name (labels of letters, digits and '-', at most 63 bytes each)",
        ));
    }
    Ok(())
}

/// A sysctl key the sandbox may set, in dot form (`net.ipv4.ip_forward`) or slash form
/// (`net/ipv4/conf/eth0.100/forwarding`, where a dot belongs to a name), in a namespaced
/// or VM-wide family. Returns its path under /proc/sys.
pub fn sysctl_key(key: &str) -> Result<String, ValidateError> {
    let invalid = |reason| ValidateError::Invalid {
        field: "sysctl",
        value: excerpt(key),
        reason,
    };
    if key.is_empty() {
        return Err(ValidateError::Empty { field: "sysctl" });
    }
    if key.len() > 256 {
        return Err(invalid("longer than 256 bytes"));
    }
    // The path components: split on '/' in slash form, on '.' in dot form (where a '/'
    // stands for a dot inside a name, as runc and kubelet convert).
    let slash_form = key
        .find(['.', '/'])
        .is_some_and(|i| key.as_bytes()[i] == b'/');
    let parts: Vec<String> = if slash_form {
        key.split('/').map(str::to_owned).collect()
    } else {
        key.split('.').map(|p| p.replace('/', ".")).collect()
    };
    let allowed = ["net", "kernel", "vm", "fs", "user"];
    if !allowed.contains(&parts[0].as_str()) {
        return Err(invalid(
            "only net.*, kernel.*, vm.*, fs.* and user.* are allowed",
        ));
    }
    let ok = parts.iter().all(|part| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    });
    if !ok || parts.len() < 2 {
        return Err(invalid(
            "bad key (components of letters, digits, '_', '-', '.'; no empty, '.' or '..' ones)",
        ));
    }
    Ok(format!("/proc/sys/{}", parts.join("/")))
}

/// A DNS search domain for resolv.conf: a domain name (letters, digits, `-`, `_`, dotted,
/// a trailing dot allowed), at most 253 bytes, so nothing else can be injected.
pub fn dns_search(value: &str) -> Result<(), ValidateError> {
    let field = "dns.searches";
    let invalid = |reason| ValidateError::Invalid {
        field,
        value: excerpt(value),
        reason,
    };
    if value.is_empty() {
        return Err(ValidateError::Empty { field });
    }
    if value.len() > 253 {
        return Err(invalid("longer than 253 bytes"));
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    let ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    });
    if !ok {
        return Err(invalid("not a domain name"));
    }
    Ok(())
}

/// A resolv.conf option (`ndots:5`, `edns0`): printable ASCII without spaces, at most
/// 255 bytes.
pub fn dns_option(value: &str) -> Result<(), ValidateError> {
    let field = "dns.options";
    if value.is_empty() {
        return Err(ValidateError::Empty { field });
    }
    if value.len() > 255 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidateError::Invalid {
            field,
            value: excerpt(value),
            reason: "must be printable ASCII without whitespace, at most 255 bytes",
        });
    }
    Ok(())
}

/// A cgroup v2 interface file name (`memory.high`): `controller.file`, letters, digits,
/// `.` and `_`, never a path.
pub fn cgroup_file(value: &str) -> Result<(), ValidateError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with('.')
        && value.contains('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidateError::Invalid {
            field: "unified",
            value: excerpt(value),
            reason: "not a cgroup v2 file name (controller.file)",
        })
    }
}

/// A hugepage size as kubelet writes it: digits and a unit (`2MB`, `1GB`, `64KB`).
pub fn hugepage_size(value: &str) -> Result<(), ValidateError> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[digits.len()..];
    let ok = !digits.is_empty()
        && digits.len() <= 5
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB");
    if ok {
        Ok(())
    } else {
        Err(ValidateError::Invalid {
            field: "hugepage_limits.page_size",
            value: excerpt(value),
            reason: "expected a size like 2MB or 1GB",
        })
    }
}

/// The largest CPU or memory node number a cpuset may name.
pub const CPUSET_MAX: u32 = 8191;

/// A cpuset list (`0-3,5`): numbers or ascending ranges, comma-separated.
pub fn cpuset(field: &'static str, value: &str) -> Result<(), ValidateError> {
    let invalid = || ValidateError::Invalid {
        field,
        value: excerpt(value),
        reason: "expected a list like 0-3,5 (numbers up to 8191, ranges ascending)",
    };
    if value.len() > 1024 {
        return Err(invalid());
    }
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n <= CPUSET_MAX)
    };
    for item in value.split(',') {
        let ok = match item.split_once('-') {
            Some((a, b)) => matches!((number(a), number(b)), (Some(a), Some(b)) if a <= b),
            None => number(item).is_some(),
        };
        if !ok {
            return Err(invalid());
        }
    }
    Ok(())
}

/// Host entropy bytes for the guest's RNG: none, or 32..=256 bytes.
pub const ENTROPY_LEN: std::ops::RangeInclusive<usize> = 32..=256;

/// `SetupSandboxRequest.entropy`: empty (skip) or [`ENTROPY_LEN`] bytes.
pub fn entropy(value: &[u8]) -> Result<(), ValidateError> {
    if value.is_empty() || ENTROPY_LEN.contains(&value.len()) {
        return Ok(());
    }
    Err(ValidateError::Invalid {
        field: "entropy",
        value: format!("{} bytes", value.len()),
        reason: "must be empty or 32..=256 bytes",
    })
}

/// `SetupSandboxRequest.host_time_unix_nanos`: 0 (skip, `None`) or a time after the epoch.
pub fn host_time(nanos: i64) -> Result<Option<std::time::Duration>, ValidateError> {
    match u64::try_from(nanos) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(std::time::Duration::from_nanos(n))),
        Err(_) => Err(ValidateError::Invalid {
            field: "host_time_unix_nanos",
            value: nanos.to_string(),
            reason: "must not be negative",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("id", "abc-1.2_3").is_ok());
        assert_eq!(id("id", ""), Err(ValidateError::Empty { field: "id" }));
        for bad in ["../x", "-a", "a/b", ".a", "a b"] {
            assert!(id("id", bad).is_err(), "{bad}");
        }
        assert!(id("id", &"a".repeat(129)).is_err());
    }

    #[test]
    fn cidrs_and_macs() {
        assert_eq!(
            cidr("a", "10.0.0.2/24"),
            Ok(("10.0.0.2".parse().expect("ip"), 24))
        );
        assert!(cidr("a", "fd00::1/64").is_ok());
        assert!(cidr("a", "10.0.0.2/33").is_err());
        assert!(cidr("a", "10.0.0.2").is_err());
        assert_eq!(mac("m", "02:00:0a:00:00:01"), Ok([2, 0, 10, 0, 0, 1]));
        assert!(mac("m", "02:00:0a:00:00").is_err());
        assert!(mac("m", "02:00:0a:00:00:01:02").is_err());
        assert!(mac("m", "zz:00:0a:00:00:01").is_err());
    }

    #[test]
    fn hostnames_and_sysctls() {
        assert!(hostname("pod-1.example").is_ok());
        assert!(hostname("-bad").is_err());
        assert!(hostname("").is_err());
        assert_eq!(
            sysctl_key("net.ipv4.ip_forward"),
            Ok("/proc/sys/net/ipv4/ip_forward".to_owned())
        );
        assert!(sysctl_key("dev.foo").is_err());
        assert!(sysctl_key("net..x").is_err());
        assert!(sysctl_key("").is_err());
        assert!(sysctl_key("net").is_err());
        // Slash form, and a dotted interface name in either form.
        assert_eq!(
            sysctl_key("net/ipv4/conf/eth0.100/forwarding"),
            Ok("/proc/sys/net/ipv4/conf/eth0.100/forwarding".to_owned())
        );
        assert_eq!(
            sysctl_key("net.ipv4.conf.eth0/100.forwarding"),
            Ok("/proc/sys/net/ipv4/conf/eth0.100/forwarding".to_owned())
        );
        for bad in [
            "net/../../etc",
            "net/ipv4/../x",
            "net.ipv4./..",
            "net/./x",
            "net//x",
        ] {
            assert!(sysctl_key(bad).is_err(), "{bad}");
        }
        assert!(hostname(&"a".repeat(63)).is_ok());
        assert!(hostname(&format!("{}.b", "a".repeat(61))).is_ok());
        assert!(
            hostname(&"a".repeat(64)).is_err(),
            "a label is at most 63 bytes"
        );
        assert!(
            hostname(&format!("{}.bc", "a".repeat(62))).is_err(),
            "65 bytes"
        );
        assert!(hostname(&"a.".repeat(32)).is_err());
    }

    #[test]
    fn dns_cgroup_and_cpuset_values() {
        assert!(dns_search("svc.cluster.local").is_ok());
        assert!(dns_search("example.com.").is_ok());
        for bad in ["", "a b", "a\nnameserver 1.2.3.4", "a..b", ".", "x;y"] {
            assert!(dns_search(bad).is_err(), "{bad:?}");
        }
        assert!(dns_option("ndots:5").is_ok());
        for bad in ["", "ndots:5\nnameserver 1.1.1.1", "a b", "\0"] {
            assert!(dns_option(bad).is_err(), "{bad:?}");
        }
        assert!(cgroup_file("memory.high").is_ok());
        for bad in ["../cgroup.procs", "memory/high", "memory", ".x", ""] {
            assert!(cgroup_file(bad).is_err(), "{bad:?}");
        }
        for good in ["2MB", "1GB", "64KB"] {
            assert!(hugepage_size(good).is_ok(), "{good}");
        }
        for bad in ["", "MB", "2", "2mb", "2MB/../x", "-1GB"] {
            assert!(hugepage_size(bad).is_err(), "{bad:?}");
        }
        for good in ["0", "0-3", "0-3,5,7-8"] {
            assert!(cpuset("cpuset_cpus", good).is_ok(), "{good}");
        }
        for bad in ["", "3-1", "a", "0,,1", "-1", "99999", "0-"] {
            assert!(cpuset("cpuset_cpus", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_quote_at_most_an_excerpt() {
        let long = "x".repeat(1 << 20);
        let msg = id("container_id", &long).unwrap_err().to_string();
        assert!(msg.len() < 300, "{} bytes", msg.len());
        assert!(msg.contains("1048576 bytes"), "{msg}");
        assert!(hostname(&long).unwrap_err().to_string().len() < 300);
        assert!(sysctl_key(&long).unwrap_err().to_string().len() < 300);
        assert_eq!(excerpt("short"), "short");
        let multibyte = "é".repeat(100);
        assert!(excerpt(&multibyte).starts_with('é'));
    }

    #[test]
    fn entropy_and_host_time() {
        assert!(entropy(&[]).is_ok());
        assert!(entropy(&[7; 32]).is_ok());
        assert!(entropy(&[7; 256]).is_ok());
        assert!(entropy(&[7; 31]).is_err());
        assert!(entropy(&[7; 257]).is_err());
        assert_eq!(host_time(0), Ok(None));
        assert_eq!(
            host_time(1_700_000_000_123_456_789),
            Ok(Some(std::time::Duration::new(1_700_000_000, 123_456_789)))
        );
        assert!(host_time(-1).is_err());
    }
}
