//! OCI `process.capabilities`: the bounding set is dropped before the uid change (with
//! keep-caps on, so a non-root user keeps what it is granted), then the effective,
//! permitted and inheritable sets are set with `capset(2)`, then ambient ones are raised
//! (runc's order). Unknown names that look like capabilities are ignored, as runc does, so
//! a newer kubelet's list still works on this kernel.

use serde::{Deserialize, Serialize};

/// Capability names by number (Linux 6.1: 0..=40), shared with hulld's spec builder.
use hull_agent_api::CAPABILITIES as NAMES;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// A set of capability names as a bit mask; `Err` names a malformed entry.
pub fn mask(names: &[String]) -> Result<u64, String> {
    let mut bits = 0u64;
    for name in names {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        if full.len() > 64
            || !full
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!("capability {name:?} is malformed"));
        }
        if let Some(n) = NAMES.iter().position(|c| *c == full) {
            bits |= 1 << n;
        }
    }
    Ok(bits)
}

impl Capabilities {
    pub fn validate(&self) -> Result<(), String> {
        for set in [
            &self.bounding,
            &self.effective,
            &self.inheritable,
            &self.permitted,
            &self.ambient,
        ] {
            mask(set)?;
        }
        Ok(())
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
}

fn prctl(
    option: libc::c_int,
    arg2: libc::c_ulong,
    arg3: libc::c_ulong,
    what: &str,
) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Step 1, before the uid change: drop the bounding set and keep permitted caps across setuid.
pub fn before_setuid(caps: &Capabilities) -> Result<(), String> {
    let bounding = mask(&caps.bounding)?;
    for cap in 0..=last_cap().min(63) {
        if bounding & (1 << cap) == 0 {
            prctl(
                libc::PR_CAPBSET_DROP,
                cap.into(),
                0,
                "drop bounding capability",
            )?;
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 1, 0, "keep capabilities")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Step 2, after the uid change: the three sets, then the ambient set.
pub fn after_setuid(caps: &Capabilities) -> Result<(), String> {
    let (eff, perm, inh) = (
        mask(&caps.effective)?,
        mask(&caps.permitted)?,
        mask(&caps.inheritable)?,
    );
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [0, 32].map(|shift| CapData {
        effective: (eff >> shift) as u32,
        permitted: (perm >> shift) as u32,
        inheritable: (inh >> shift) as u32,
    });
    // SAFETY: capset reads a v3 header and two data structs, both valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc < 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    let ambient = mask(&caps.ambient)?;
    for cap in 0..64u64 {
        if ambient & (1 << cap) != 0 {
            prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap,
                "raise ambient capability",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_from_names() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(mask(&names(&["CAP_CHOWN", "CAP_KILL"])), Ok(0x21));
        assert_eq!(mask(&names(&["net_raw"])), Ok(1 << 13));
        assert_eq!(
            mask(&names(&["CAP_FUTURE_THING"])),
            Ok(0),
            "unknown names are ignored"
        );
        assert!(mask(&names(&["CAP_BAD NAME"])).is_err());
        assert_eq!(NAMES[40], "CAP_CHECKPOINT_RESTORE");
    }
}
