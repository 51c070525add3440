//! The hull-vmm jail as the backend asks for it (`--jail-*`, see `hull_vmm::jail` (vm/vmm)):
//! an empty root in the VM's run dir, and a uid/gid of the VM's own, so that one hull-vmm
//! cannot signal, ptrace or write the files of another pod's.
//!
//! The ids come from the sandbox id: [`ID_BASE`] plus a hash of the id in [`ID_SPAN`],
//! far above the ids of users and of the usual `/etc/subuid` ranges. Two VMs whose ids hash
//! alike share an id (each still in its own mount namespace); with 110 pods on a node that
//! happens with a probability under 0.1%.

use std::ffi::OsString;
use std::path::Path;

/// The first uid/gid of VM jails.
pub const ID_BASE: u32 = 0x6800_0000;
/// How many ids jails use (2^24).
pub const ID_SPAN: u32 = 1 << 24;

/// The uid (and gid, the same number) of the VM `id`'s hull-vmm.
pub fn id_for(id: &str) -> u32 {
    // FNV-1a: stable across builds and hulld restarts, unlike std's hasher.
    let hash = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    ID_BASE + hash % ID_SPAN
}

/// hull-vmm's jail arguments for VM `id` running in `run_dir`; `extra` are more paths it
/// needs (the dir a template's snapshot is written into).
pub fn args(id: &str, run_dir: &Path, extra: &[&Path]) -> Vec<OsString> {
    let ugid = id_for(id).to_string();
    let mut args: Vec<OsString> = vec![
        "--jail-root".into(),
        run_dir.join("jail").into_os_string(),
        "--jail-uid".into(),
        ugid.clone().into(),
        "--jail-gid".into(),
        ugid.into(),
    ];
    for p in extra {
        args.push("--jail-path".into());
        args.push(p.as_os_str().to_owned());
    }
    args
}

/// Makes `dir` (a snapshot's) writable by VM `id`'s jailed hull-vmm.
pub fn give_dir(id: &str, dir: &Path) -> std::io::Result<()> {
    let ugid = id_for(id);
    std::os::unix::fs::chown(dir, Some(ugid), Some(ugid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_unprivileged_and_spread() {
        let a = id_for("0123456789abcdef0123456789abcdef");
        assert_eq!(a, id_for("0123456789abcdef0123456789abcdef"));
        let ids: std::collections::HashSet<u32> =
            (0..1000).map(|i| id_for(&format!("{i:032x}"))).collect();
        assert!(ids.len() > 990, "{} distinct ids of 1000", ids.len());
        assert!(
            ids.iter()
                .all(|&i| (ID_BASE..ID_BASE + ID_SPAN).contains(&i))
        );
        assert!(ID_BASE + ID_SPAN < i32::MAX as u32);
        let line: Vec<String> = args("x", Path::new("/run/x"), &[Path::new("/t")])
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(line[..2], ["--jail-root", "/run/x/jail"]);
        assert_eq!(line[6..], ["--jail-path", "/t"]);
    }
}
