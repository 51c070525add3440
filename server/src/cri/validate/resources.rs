//! Linux resources and security contexts.

use hull_agent_api::validate as shared_checks;
use hull_cri_api as cri;

use super::{Result, absolute_path, defs, invalid, no_nul, quote, shared, text};

/// The most memory one pod or container may ask for: 1 PiB is past any machine, so a
/// value above it is a mistake (VM sizing clamps real ones to the node's memory).
pub const MAX_MEMORY: i64 = 1 << 50;
/// The largest uid/gid (`(uid_t)-1` means "unchanged" to the kernel).
const MAX_ID: i64 = u32::MAX as i64 - 1;

fn range(field: String, v: i64, ok: bool, expect: &str) -> Result {
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{v} is out of range ({expect})")))
    }
}

/// `LinuxContainerResources` as the kernel's cgroup files take them (0 means unset).
pub fn linux_resources(at: &str, r: &cri::LinuxContainerResources) -> Result {
    let f = |name: &str| format!("{at}.{name}");
    range(
        f("cpu_period"),
        r.cpu_period,
        r.cpu_period == 0 || (1_000..=1_000_000).contains(&r.cpu_period),
        "0, or 1000-1000000 microseconds",
    )?;
    range(
        f("cpu_quota"),
        r.cpu_quota,
        matches!(r.cpu_quota, -1 | 0) || r.cpu_quota >= 1_000,
        "-1 or 0 for none, or at least 1000 microseconds",
    )?;
    range(
        f("cpu_shares"),
        r.cpu_shares,
        r.cpu_shares == 0 || (2..=262_144).contains(&r.cpu_shares),
        "0, or 2-262144",
    )?;
    range(
        f("memory_limit_in_bytes"),
        r.memory_limit_in_bytes,
        (0..=MAX_MEMORY).contains(&r.memory_limit_in_bytes),
        "0 for none, or up to 1 PiB",
    )?;
    range(
        f("memory_swap_limit_in_bytes"),
        r.memory_swap_limit_in_bytes,
        r.memory_swap_limit_in_bytes == -1
            || (0..=MAX_MEMORY).contains(&r.memory_swap_limit_in_bytes),
        "-1 for unlimited, 0 for none, or up to 1 PiB",
    )?;
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(invalid(
            f("memory_swap_limit_in_bytes"),
            format!(
                "{} is below memory_limit_in_bytes {} (it is memory + swap)",
                r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
            ),
        ));
    }
    range(
        f("oom_score_adj"),
        r.oom_score_adj,
        (-1000..=1000).contains(&r.oom_score_adj),
        "-1000 to 1000",
    )?;
    if !r.cpuset_cpus.is_empty() {
        shared_checks::cpuset("cpuset_cpus", &r.cpuset_cpus)
            .map_err(|e| shared(&f("cpuset_cpus"), e))?;
    }
    if !r.cpuset_mems.is_empty() {
        shared_checks::cpuset("cpuset_mems", &r.cpuset_mems)
            .map_err(|e| shared(&f("cpuset_mems"), e))?;
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        shared_checks::hugepage_size(&h.page_size)
            .map_err(|e| shared(&format!("{at}.hugepage_limits[{i}].page_size"), e))?;
    }
    if r.unified.len() > 64 {
        return Err(invalid(f("unified"), "has more than 64 entries"));
    }
    let mut files: Vec<&String> = r.unified.keys().collect();
    files.sort();
    for file in files {
        let field = format!("{at}.unified[{}]", quote(file));
        shared_checks::cgroup_file(file).map_err(|e| shared(&field, e))?;
        text(&field, &r.unified[file], 4096)?;
    }
    Ok(())
}

fn id_value(field: String, v: Option<&cri::Int64Value>) -> Result {
    match v {
        Some(v) if !(0..=MAX_ID).contains(&v.value) => Err(invalid(
            field,
            format!("{} is not a uid/gid (0-{MAX_ID})", v.value),
        )),
        _ => Ok(()),
    }
}

fn groups(field: String, groups: &[i64]) -> Result {
    if groups.len() > 65_536 {
        return Err(invalid(field, "has more than 65536 groups"));
    }
    match groups.iter().find(|g| !(0..=MAX_ID).contains(*g)) {
        Some(g) => Err(invalid(field, format!("{g} is not a gid (0-{MAX_ID})"))),
        None => Ok(()),
    }
}

fn seccomp(at: &str, p: Option<&cri::SecurityProfile>, path: &str) -> Result {
    no_nul(&format!("{at}.seccomp_profile_path"), path, defs::MAX_PATH)?;
    if let Some(p) = p {
        if cri::security_profile::ProfileType::try_from(p.profile_type).is_err() {
            return Err(invalid(
                format!("{at}.seccomp.profile_type"),
                format!("{} is unknown", p.profile_type),
            ));
        }
        if !p.localhost_ref.is_empty() {
            absolute_path(&format!("{at}.seccomp.localhost_ref"), &p.localhost_ref)?;
        }
    }
    Ok(())
}

/// The pod's security context.
pub fn pod_security(at: &str, sc: &cri::LinuxSandboxSecurityContext) -> Result {
    id_value(format!("{at}.run_as_user"), sc.run_as_user.as_ref())?;
    id_value(format!("{at}.run_as_group"), sc.run_as_group.as_ref())?;
    groups(format!("{at}.supplemental_groups"), &sc.supplemental_groups)?;
    #[allow(deprecated)] // kubelet before 1.19 sent the profile here; hull still reads it
    let path = &sc.seccomp_profile_path;
    seccomp(at, sc.seccomp.as_ref(), path)
}

fn capability(field: String, name: &str) -> Result {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if name.eq_ignore_ascii_case("ALL") || hull_agent_api::CAPABILITIES.contains(&full.as_str()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} is not a Linux capability", quote(name)),
        ))
    }
}

/// A container's security context.
pub fn container_security(at: &str, sc: &cri::LinuxContainerSecurityContext) -> Result {
    id_value(format!("{at}.run_as_user"), sc.run_as_user.as_ref())?;
    id_value(format!("{at}.run_as_group"), sc.run_as_group.as_ref())?;
    groups(format!("{at}.supplemental_groups"), &sc.supplemental_groups)?;
    if sc.run_as_username.contains([':', '\0', '\n']) || sc.run_as_username.len() > 256 {
        return Err(invalid(
            format!("{at}.run_as_username"),
            format!("{} is not a user name", quote(&sc.run_as_username)),
        ));
    }
    if let Some(caps) = &sc.capabilities {
        for (what, list) in [
            ("add_capabilities", &caps.add_capabilities),
            ("drop_capabilities", &caps.drop_capabilities),
            ("add_ambient_capabilities", &caps.add_ambient_capabilities),
        ] {
            for (i, c) in list.iter().enumerate() {
                capability(format!("{at}.capabilities.{what}[{i}]"), c)?;
            }
        }
    }
    for (what, list) in [
        ("masked_paths", &sc.masked_paths),
        ("readonly_paths", &sc.readonly_paths),
    ] {
        for (i, p) in list.iter().enumerate() {
            absolute_path(&format!("{at}.{what}[{i}]"), p)?;
        }
    }
    #[allow(deprecated)] // kubelet before 1.19 sent the profile here; hull still reads it
    let path = &sc.seccomp_profile_path;
    seccomp(at, sc.seccomp.as_ref(), path)
}
