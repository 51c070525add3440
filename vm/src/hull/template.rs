//! VM templates (pure parts): which template a pod VM can be restored from, where it lives,
//! and the hull-vmm configurations of a template boot and of a restore.
//!
//! A template is one guest booted to agent-ready and snapshotted by hull-vmm
//! (`{"op":"snapshot"}` on its API: `vm.json` + `memory`); pod VMs then start with
//! `hull-vmm --config <pod config> --restore <template dir>` instead of booting the kernel.
//! A snapshot only fits VMs with the same vCPUs, memory and device set, booted from the same
//! kernel, initramfs and command line by the same hull-vmm: all of that goes into the
//! [`template_key`]. The template's NIC has no backend (no pod tap exists yet) and its
//! virtio-fs device is served by a virtiofsd on an empty dir; the restored VM gets the
//! pod's tap and virtiofsd from its own config, the pod's MAC from the agent (SetupSandbox).

use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::files::{RunFiles, vmm_config};
use crate::hypervisor::VmConfig;
use hull_vmm_api::config::VmmConfig;

/// The templates dir's name, next to the sandboxes' run dirs.
pub const TEMPLATES_DIR: &str = ".templates";
/// Written into a template dir last: a dir without it is not a template.
pub const COMPLETE_MARKER: &str = "complete";
/// The files hull-vmm's snapshot writes.
pub use hull_vmm_api::snapshot::FILES as SNAPSHOT_FILES;
/// The MAC of every template's NIC (locally administered); pods get theirs from the agent.
pub const TEMPLATE_MAC: &str = "02:68:75:6c:6c:fe";
/// Bumped when what a template holds changes in a way the key does not capture.
const FORMAT: u32 = 1;

/// FNV-1a, 64 bit: stable across builds and Rust versions (std's hasher is not).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, data: &[u8]) {
        // Length first, so ("ab","c") and ("a","bc") differ.
        for b in (data.len() as u64).to_le_bytes().iter().chain(data) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Path, size and modification time of a file a template is made from: a rebuilt
/// binary, kernel or initramfs makes a new key (and the old template garbage).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub len: u64,
    pub mtime_s: u64,
    pub mtime_ns: u32,
}

impl FileId {
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let mtime = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Self {
            path: path.to_owned(),
            len: meta.len(),
            mtime_s: mtime.as_secs(),
            mtime_ns: mtime.subsec_nanos(),
        })
    }

    /// Whether the file is still the one described.
    pub fn is_current(&self) -> bool {
        Self::of(&self.path).is_ok_and(|now| &now == self)
    }
}

/// hull-vmm, kernel and initramfs of `config`, as they are now.
pub fn inputs(config: &VmConfig, vmm: &Path) -> io::Result<Vec<FileId>> {
    [vmm, &config.kernel, &config.initramfs]
        .into_iter()
        .map(FileId::of)
        .collect()
}

/// What [`COMPLETE_MARKER`] holds: the key and the files the template was made from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub key: String,
    pub inputs: Vec<FileId>,
}

impl Marker {
    /// A template one of whose files changed can never be used again.
    pub fn is_outdated(&self) -> bool {
        !self.inputs.iter().all(FileId::is_current)
    }
}

/// The template a VM for `config` can be restored from: 16 hex digits over hull-vmm,
/// kernel and initramfs (path, size, mtime), vCPUs, memory, the full kernel command line
/// and which optional devices exist. Fails if one of the files cannot be read.
pub fn template_key(config: &VmConfig, vmm: &Path) -> io::Result<String> {
    let mut h = Fnv::new();
    h.u64(u64::from(FORMAT));
    for f in inputs(config, vmm)? {
        h.bytes(f.path.as_os_str().as_encoded_bytes());
        h.u64(f.len);
        h.u64(f.mtime_s);
        h.u64(u64::from(f.mtime_ns));
    }
    h.u64(u64::from(config.vcpus));
    h.u64(config.memory_mib);
    let vmm_cfg = vmm_config(config, &RunFiles::new(&config.run_dir));
    h.bytes(vmm_cfg.cmdline.as_bytes());
    h.u64(u64::from(config.net.is_some()));
    h.u64(u64::from(config.shared_dir.is_some()));
    Ok(format!("{:016x}", h.0))
}

/// The templates dir for VMs whose run dir is `run_dir`: `<run_dir>/../.templates`.
pub fn templates_dir(run_dir: &Path) -> PathBuf {
    run_dir.parent().unwrap_or(run_dir).join(TEMPLATES_DIR)
}

/// Where one template lives and is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatePaths {
    pub key: String,
    /// The finished template: the snapshot plus [`COMPLETE_MARKER`].
    pub dir: PathBuf,
    /// Scratch dir of one template boot (this process's): run files of the template VM.
    pub build: PathBuf,
    /// Where hull-vmm writes the snapshot; renamed to `dir` once complete.
    pub snapshot: PathBuf,
    /// The empty dir the template's virtiofsd serves.
    pub share: PathBuf,
}

impl TemplatePaths {
    pub fn new(run_dir: &Path, key: &str) -> Self {
        let root = templates_dir(run_dir);
        let build = root.join(format!(".build-{key}-{}", std::process::id()));
        Self {
            key: key.to_owned(),
            dir: root.join(key),
            snapshot: build.join("snapshot"),
            share: build.join("share"),
            build,
        }
    }

    /// The template VM's sockets, logs and config, in the build dir.
    pub fn run_files(&self) -> RunFiles {
        RunFiles::new(&self.build)
    }

    /// Whether a finished template is there.
    pub fn is_complete(&self) -> bool {
        self.dir.join(COMPLETE_MARKER).is_file()
            && SNAPSHOT_FILES.iter().all(|f| self.dir.join(f).is_file())
    }
}

/// The hull-vmm config of the template boot for `config`: the pod's vCPUs, memory, kernel,
/// command line and device set, with every backend in the build dir, the NIC without a tap
/// (and [`TEMPLATE_MAC`]), virtio-fs to the template's own virtiofsd.
pub fn template_vmm_config(config: &VmConfig, paths: &TemplatePaths) -> VmmConfig {
    let mut template = config.clone();
    template.id = format!("template-{}", paths.key);
    template.run_dir = paths.build.clone();
    template.netns = None;
    template.shared_dir = config.shared_dir.as_ref().map(|_| paths.share.clone());
    let mut v = vmm_config(&template, &paths.run_files());
    if let Some(net) = v.net.as_mut() {
        untap(net);
        net.mac = Some(TEMPLATE_MAC.to_owned());
    }
    v
}

/// A NIC without a backend (hull-vmm drops its frames).
fn untap(net: &mut hull_vmm_api::config::NetConfig) {
    net.tap = None;
}

/// The arguments of a hull-vmm that restores `template` with the config file `config`.
pub fn restore_args(config: &Path, template: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--config".into(),
        config.as_os_str().to_owned(),
        "--restore".into(),
        template.as_os_str().to_owned(),
    ]
}

#[cfg(test)]
mod tests;
