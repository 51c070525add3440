//! CreateContainer: image → rootfs in the sandbox share → volumes → OCI spec → agent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_cri_api as cri;
use tracing::Instrument;

use super::super::CriService;
use super::super::status::CriError;
use crate::config::Isolation;
use crate::container::images::{ContainerImages, ImagesError};
use crate::container::{etc, host_volumes, inroot, spec, volumes};
use crate::sandbox::{Sandbox, share};
use crate::state::{ContainerRecord, ContainerState};

/// A fresh 64-hex-digit container id.
fn new_id() -> Result<String, CriError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| CriError::internal("Reading /dev/urandom", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn images_error(e: ImagesError) -> CriError {
    match e {
        ImagesError::NotFound(_) => CriError::NotFound(e.to_string()),
        ImagesError::Service(_) => CriError::internal("Image service", e),
    }
}

/// What a failed create must undo.
struct Undo<'a> {
    images: &'a Arc<dyn ContainerImages>,
    run_dir: PathBuf,
    id: String,
    rootfs: Option<PathBuf>,
}

impl Undo<'_> {
    async fn run(self) -> Result<(), ImagesError> {
        remove_container_dir(self.images.as_ref(), &self.run_dir, &self.id, self.rootfs).await
    }
}

/// Unmounts and deletes what hulld made for container `id` in the share of the pod whose
/// run dir is `run_dir`: volume binds, the rootfs overlay (when `rootfs` is set) and the
/// container's dir. Errors are logged; the dir is deleted only once nothing is mounted in
/// it, and RemovePodSandbox sweeps what is left.
pub(super) async fn remove_container_dir(
    images: &dyn ContainerImages,
    run_dir: &Path,
    id: &str,
    rootfs: Option<PathBuf>,
) -> Result<(), ImagesError> {
    volumes::release(run_dir, id);
    if let Some(r) = &rootfs {
        images.remove_rootfs(id, r).await?;
    }
    let dir = share::staging_dir(run_dir).join(id);
    if let Err(e) = crate::mounts::remove_unmounted_tree(&dir) {
        tracing::warn!(container = id, error = %crate::sandbox::error_chain(&e),
            "cannot remove the container's dir");
    }
    Ok(())
}

/// Creates every mount point in the rootfs on the host, so that a read-only rootfs can
/// still take its mounts in the guest. `source_is_dir` says which mounts are dirs. Paths
/// resolve inside the rootfs as the container sees them (an image's `/data -> /etc` is the
/// rootfs's `/etc`), never on the host, even with a guest replacing dirs by symlinks
/// meanwhile (`inroot`). Best effort: the agent reports what fails.
fn make_mount_points(
    rootfs: &Path,
    mounts: &[spec::GuestMount],
    source_is_dir: impl Fn(usize, &spec::GuestMount) -> bool,
) {
    let root = match inroot::RootDir::open(rootfs) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot open the rootfs");
            return;
        }
    };
    for (i, m) in mounts.iter().enumerate() {
        let rel = m.container_path.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            continue;
        }
        let target = Path::new(rel);
        if root.exists(target) {
            continue;
        }
        let made = if source_is_dir(i, m) {
            root.mkdir_all(target)
        } else {
            root.create_file(target)
        };
        if let Err(e) = made {
            tracing::debug!(path = rel, error = %e, "cannot create a mount point");
        }
    }
}

/// A hostNetwork pod has the node's hostname (as with containerd): its sandbox config with
/// that hostname, for `/etc/hostname`; `None` for other pods.
fn host_network_hostname(
    pod: &cri::PodSandboxConfig,
) -> Result<Option<cri::PodSandboxConfig>, CriError> {
    if !crate::sandbox::handlers::NodeNamespacesOf::of(pod).network || !pod.hostname.is_empty() {
        return Ok(None);
    }
    let name = nix::unistd::gethostname()
        .map_err(|e| CriError::internal("Reading the node's hostname", e))?;
    let mut with_name = pod.clone();
    with_name.hostname = name.to_string_lossy().into_owned();
    Ok(Some(with_name))
}

impl CriService {
    pub(crate) async fn do_create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, CriError> {
        // Before anything is taken: no rootfs, no share entry, no agent call.
        super::super::validate::create_container(&req)?;
        let config = req
            .config
            .ok_or_else(|| CriError::InvalidArgument("config is required".into()))?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or("");
        if name.is_empty() {
            return Err(CriError::InvalidArgument(
                "config.metadata.name is required".into(),
            ));
        }
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image.is_empty() {
            return Err(CriError::InvalidArgument(
                "config.image.image is required".into(),
            ));
        }
        let sandbox = self
            .daemon
            .sandboxes
            .get(&req.pod_sandbox_id)
            .ok_or_else(|| {
                CriError::NotFound(format!(
                    "pod sandbox {} not found",
                    super::super::status::quote(&req.pod_sandbox_id)
                ))
            })?;
        let images = self.daemon.containers.images().ok_or_else(|| {
            CriError::FailedPrecondition(
                "the image service is not wired into the container manager yet".into(),
            )
        })?;
        let resolved = images.resolve(&image).await.map_err(images_error)?;
        let id = new_id()?;
        let span =
            tracing::info_span!("create_container", container = %id, sandbox = %sandbox.id());
        let sandbox_config = req.sandbox_config.unwrap_or_default();
        let mut undo = Undo {
            images: &images,
            run_dir: sandbox.run_dir().to_owned(),
            id: id.clone(),
            rootfs: None,
        };
        let created = self
            .create_in_sandbox(
                &sandbox,
                &images,
                &id,
                config,
                &sandbox_config,
                (&image, resolved),
                &mut undo,
            )
            .instrument(span)
            .await;
        match created {
            Ok(()) => Ok(cri::CreateContainerResponse { container_id: id }),
            Err(e) => {
                if let Err(u) = undo.run().await {
                    tracing::warn!(container = %id, error = %u, "undo: cannot remove the rootfs");
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in_sandbox(
        &self,
        sandbox: &Arc<Sandbox>,
        images: &Arc<dyn ContainerImages>,
        id: &str,
        config: cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
        (image_ref, resolved): (&str, crate::container::images::ResolvedImage),
        undo: &mut Undo<'_>,
    ) -> Result<(), CriError> {
        let run_dir = sandbox.run_dir().to_owned();
        let rootfs = sandbox.staging_dir().join(id).join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| CriError::internal("Creating the rootfs dir", e))?;
        images
            .prepare_rootfs(&resolved.id, id, &rootfs)
            .await
            .map_err(images_error)?;
        undo.rootfs = Some(rootfs.clone());
        hull_image::faults::pause_at("create_container.rootfs").await;
        let host = sandbox.isolation() == Isolation::Host;
        let agent_shared = sandbox.agent_shared_dir();
        let guest_shared = agent_shared.as_str();
        let files = images.files_dir(id).ok_or_else(|| {
            CriError::internal(
                "The container's files dir",
                format!("bad container id {id}"),
            )
        })?;
        let node_hostname = host_network_hostname(sandbox_config)?;
        let etc_files = etc::prepare(
            &files,
            (node_hostname.as_ref().unwrap_or(sandbox_config), &config),
            Path::new("/etc/resolv.conf"),
        )
        .map_err(|e| CriError::internal("Writing /etc/hostname and /etc/resolv.conf", e))?;
        let all: Vec<cri::Mount> = config.mounts.iter().cloned().chain(etc_files).collect();
        let invalid =
            |e: &dyn std::error::Error| CriError::InvalidArgument(crate::sandbox::error_chain(e));
        // A host pod's agent binds the node's paths itself (nothing in hulld's namespace).
        let mounts = if host {
            host_volumes::prepare(&all).map_err(|e| invalid(&e))?
        } else {
            volumes::prepare(&run_dir, guest_shared, id, &all).map_err(|e| invalid(&e))?
        };
        let vm_mounts = volumes::mounts_dir(&run_dir, id);
        make_mount_points(&rootfs, &mounts, |i, m| {
            if host {
                Path::new(&m.source).is_dir()
            } else {
                vm_mounts.join(i.to_string()).is_dir()
            }
        });
        let sysctls: BTreeMap<String, String> = sandbox_config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let guest_rootfs = format!("{guest_shared}/{id}/rootfs");
        let oci = spec::build(&spec::SpecInput {
            config: &config,
            image: &resolved.defaults,
            host_rootfs: &rootfs,
            guest_rootfs: &guest_rootfs,
            mounts: &mounts,
            hostname: &node_hostname.as_ref().unwrap_or(sandbox_config).hostname,
            pod_sysctls: &sysctls,
        })
        .map_err(|e| CriError::InvalidArgument(e.to_string()))?;
        let json =
            serde_json::to_vec(&oci).map_err(|e| CriError::internal("Encoding the OCI spec", e))?;
        let mut agent = sandbox
            .agent()
            .await
            .map_err(|e| CriError::FailedPrecondition(crate::sandbox::error_chain(&e)))?;
        agent
            .create_container(hull_agent_api::v1::CreateContainerRequest {
                container_id: id.to_owned(),
                oci_spec_json: json,
                rootfs: guest_rootfs,
            })
            .await
            .map_err(|e| CriError::internal("Agent CreateContainer", e))?;
        hull_image::faults::pause_at("create_container.agent").await;
        let log_path = if sandbox_config.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            // Normalised (validated at the top): `a/../b.log` is `b.log`.
            let relative = super::super::validate::log_path("config.log_path", &config.log_path)?;
            Path::new(&sandbox_config.log_directory)
                .join(relative)
                .display()
                .to_string()
        };
        let record = ContainerRecord {
            id: id.to_owned(),
            sandbox_id: sandbox.id().to_owned(),
            state: ContainerState::Created,
            config,
            image_ref: image_ref.to_owned(),
            image_id: resolved.id,
            created_at: crate::state::now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path,
            runtime_spec: serde_json::to_value(&oci).ok(),
        };
        self.daemon
            .containers
            .add(&record)
            .map_err(super::manager_error)?;
        tracing::info!(image = image_ref, "container created");
        Ok(())
    }
}
