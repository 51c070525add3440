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
        value: value.chars().take(MAX_ID + 8).collect(),
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
        value: value.to_owned(),
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
        value: value.to_owned(),
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

/// A hostname (RFC 1123 labels, at most 64 bytes as the kernel allows).
pub fn hostname(value: &str) -> Result<(), ValidateError> {
    let field = "hostname";
    let invalid = |reason| ValidateError::Invalid {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(ValidateError::Empty { field });
    }
    if value.len() > 64 {
        return Err(invalid("longer than 64 bytes"));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !value.split('.').all(ok_label) {
        return Err(invalid("not a valid RFC 1123 name"));
    }
    Ok(())
}

/// A sysctl key the sandbox may set: dotted, in a namespaced or VM-wide family.
/// Returns its path under /proc/sys.
pub fn sysctl_key(key: &str) -> Result<String, ValidateError> {
    let invalid = |reason| ValidateError::Invalid {
        field: "sysctl",
        value: key.to_owned(),
        reason,
    };
    let allowed = ["net.", "kernel.", "vm.", "fs.", "user."];
    if !allowed.iter().any(|p| key.starts_with(p)) {
        return Err(invalid(
            "only net.*, kernel.*, vm.*, fs.* and user.* are allowed",
        ));
    }
    let ok = key.split('.').all(|part| {
        !part.is_empty()
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    });
    if !ok {
        return Err(invalid("bad key"));
    }
    Ok(format!("/proc/sys/{}", key.replace('.', "/")))
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
        assert!(sysctl_key("net.a/b").is_err());
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
