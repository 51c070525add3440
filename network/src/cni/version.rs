//! CNI spec versions hull speaks.

use std::fmt;

/// Versions of the CNI spec whose configuration and result formats hull understands.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Errors of version handling.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("Malformed CNI version {0:?}")]
    Malformed(String),
    #[error("CNI version {0} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    Unsupported(String),
}

/// A parsed `cniVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CniVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl CniVersion {
    /// CHECK appeared in 0.4.0, as did `prevResult` for DEL.
    pub const V0_4_0: Self = Self {
        major: 0,
        minor: 4,
        patch: 0,
    };

    /// Parses `x.y.z` and checks that it is one of [`SUPPORTED_VERSIONS`].
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let mut parts = s.split('.').map(str::parse::<u32>);
        let (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VersionError::Malformed(s.to_owned()));
        };
        let v = Self {
            major,
            minor,
            patch,
        };
        if !SUPPORTED_VERSIONS.contains(&v.to_string().as_str()) {
            return Err(VersionError::Unsupported(s.to_owned()));
        }
        Ok(v)
    }

    /// Whether CHECK exists and DEL gets `prevResult`.
    pub fn supports_check(self) -> bool {
        self >= Self::V0_4_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_versions() {
        let v = |s| CniVersion::parse(s);
        assert!(v("1.0.0").is_ok_and(|v| v.supports_check()));
        assert!(v("0.4.0").is_ok_and(|v| v.supports_check()));
        assert!(v("0.3.1").is_ok_and(|v| !v.supports_check()));
        assert!(matches!(v("0.2.0"), Err(VersionError::Unsupported(_))));
        assert!(matches!(v("1.0"), Err(VersionError::Malformed(_))));
        assert!(matches!(v("1.0.0.0"), Err(VersionError::Malformed(_))));
        assert!(matches!(v("a.b.c"), Err(VersionError::Malformed(_))));
    }
}
