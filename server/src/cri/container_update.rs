//! UpdateContainerResources: the CRI's resources as the agent's cgroup update, and the
//! record's resources merged with an update.

use hull_agent_api::v1 as pb;
use hull_cri_api as cri;

/// The agent's view of the CRI resources (negative shares/period mean unset).
pub(super) fn to_agent(r: &cri::LinuxContainerResources) -> pb::LinuxResources {
    pb::LinuxResources {
        cpu_shares: u64::try_from(r.cpu_shares).unwrap_or(0),
        cpu_quota: r.cpu_quota,
        cpu_period: u64::try_from(r.cpu_period).unwrap_or(0),
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        memory_limit_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_bytes: r.memory_swap_limit_in_bytes,
        pids_limit: 0,
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| pb::HugepageLimit {
                page_size: h.page_size.clone(),
                limit_bytes: h.limit,
            })
            .collect(),
        unified: r.unified.clone(),
    }
}

/// `old` with every set field of `new` (containerd's `WithResources`: zero or empty keeps
/// the old value; hugepage limits and unified entries are merged by key).
pub(super) fn merge(
    old: Option<&cri::LinuxContainerResources>,
    new: &cri::LinuxContainerResources,
) -> cri::LinuxContainerResources {
    let mut out = old.cloned().unwrap_or_default();
    let set = |dst: &mut i64, v: i64| {
        if v != 0 {
            *dst = v;
        }
    };
    set(&mut out.cpu_period, new.cpu_period);
    set(&mut out.cpu_quota, new.cpu_quota);
    set(&mut out.cpu_shares, new.cpu_shares);
    set(&mut out.memory_limit_in_bytes, new.memory_limit_in_bytes);
    set(
        &mut out.memory_swap_limit_in_bytes,
        new.memory_swap_limit_in_bytes,
    );
    set(&mut out.oom_score_adj, new.oom_score_adj);
    if !new.cpuset_cpus.is_empty() {
        out.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        out.cpuset_mems = new.cpuset_mems.clone();
    }
    for h in &new.hugepage_limits {
        match out
            .hugepage_limits
            .iter_mut()
            .find(|o| o.page_size == h.page_size)
        {
            Some(o) => o.limit = h.limit,
            None => out.hugepage_limits.push(h.clone()),
        }
    }
    out.unified
        .extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_unset_fields_and_converts() {
        let old = cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 100_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let new = cri::LinuxContainerResources {
            cpu_quota: 50_000,
            memory_limit_in_bytes: 32 << 20,
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            ..Default::default()
        };
        let m = merge(Some(&old), &new);
        assert_eq!(
            (m.cpu_shares, m.cpu_quota, m.cpu_period),
            (512, 50_000, 100_000)
        );
        assert_eq!(m.memory_limit_in_bytes, 32 << 20);
        assert_eq!(m.cpuset_cpus, "0");
        assert_eq!(m.hugepage_limits.len(), 1);
        let a = to_agent(&new);
        assert_eq!((a.cpu_quota, a.cpu_period, a.cpu_shares), (50_000, 0, 0));
        assert_eq!(a.memory_limit_bytes, 32 << 20);
        assert_eq!(a.hugepage_limits[0].page_size, "2MB");
        let neg = cri::LinuxContainerResources {
            cpu_shares: -1,
            ..Default::default()
        };
        assert_eq!(to_agent(&neg).cpu_shares, 0);
    }
}
