//! The daemon: its shared state, the CRI socket, and serving until a signal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_cri_api::server::{ImageServiceServer, RuntimeServiceServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::authority::AnyAuthority;
use crate::config::Config;
use crate::cri::CriService;
use crate::sandbox::{Backends, SandboxManager};
use crate::state::{self, Store, StoreError};

/// kubelet sends and accepts CRI messages up to 16 MiB.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How long calls in flight may run on after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("Cannot create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Another hulld is already serving {0}")]
    SocketInUse(PathBuf),
    #[error("Cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
    #[error("Cannot open the image service")]
    Images(#[from] hull_image::ImageError),
    #[error("Cannot start the streaming server")]
    Streaming(#[from] crate::streaming::StreamingError),
    #[error("Cannot start the metrics endpoint")]
    Metrics(#[from] crate::metrics::MetricsServerError),
}

/// What every CRI call shares.
pub struct Daemon {
    pub config: Arc<Config>,
    pub store: Store,
    /// Containers, their log writers and the CRI event feed (issue 7).
    pub containers: Arc<crate::container::manager::ContainerManager>,
    /// Pod sandboxes (microVMs): see [`crate::sandbox`] for the API.
    pub sandboxes: Arc<SandboxManager>,
    /// Images: pull, store, rootfs (hull-image), in `<root_dir>/images`.
    pub images: hull_image::ImageService,
    /// Exec/attach/port-forward URLs and the HTTP server behind them.
    pub streaming: Arc<crate::streaming::StreamingServer>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Creates the state dirs (0700: image layers, container rootfs and pod shares are
    /// root's only) and opens the metadata store.
    pub fn open(config: Config) -> Result<Self, DaemonError> {
        for dir in [&config.root_dir, &config.state_dir] {
            create_dir(dir, Some(0o700))?;
        }
        let store = Store::open(&config.metadata_path(), &state::tables())?;
        tracing::info!(
            root = %config.root_dir.display(),
            state = %config.state_dir.display(),
            schema = state::store::SCHEMA_VERSION,
            "metadata store open"
        );
        let config = Arc::new(config);
        let backends = Backends::from_config(&config);
        tracing::info!(vmm = %backends.backend_name(), "pod VMM backend");
        let sandboxes = Arc::new(SandboxManager::new(
            Arc::clone(&config),
            store.clone(),
            backends,
        ));
        let image_root = config.root_dir.join("images");
        let images =
            hull_image::ImageService::open(&image_root, store.database(), config.registry.clone())?;
        tracing::info!(root = %image_root.display(), "image service open");
        let containers = Arc::new(crate::container::manager::ContainerManager::new(
            store.clone(),
            crate::events::Events::new(),
        ));
        containers.set_images(Arc::new(images.clone()));
        sandboxes.on_vm_death(crate::container::lost_with_vm(&containers));
        let streaming = Arc::new(crate::streaming::StreamingServer::bind(
            &config.streaming.address,
        )?);
        Ok(Self {
            streaming,
            config,
            containers,
            store,
            sandboxes,
            images,
        })
    }
}

fn create_dir(dir: &Path, mode: Option<u32>) -> Result<(), DaemonError> {
    let err = |source| DaemonError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

/// Binds the CRI socket: parent dir 0700, a stale socket file replaced, a live one refused.
pub async fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(parent) = path.parent() {
        create_dir(parent, Some(0o700))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse(path.to_owned()));
        }
        tracing::warn!(socket = %path.display(), "removing stale socket");
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| DaemonError::Listen {
        path: path.to_owned(),
        source,
    })
}

/// Serves both CRI services on `listener` until `shutdown` resolves, then removes the
/// socket file.
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let socket = daemon.config.socket.clone();
    // Before recovery, so that what it cleans is counted.
    let metrics = start_metrics(&daemon).await?;
    // Before the first call: reattach to running VMs, unwind half-created sandboxes.
    let report = daemon.sandboxes.recover().await;
    crate::metrics::leftovers_cleaned("sandbox_unwound", report.unwound.len());
    crate::container::recover::recover(&daemon.containers, &daemon.sandboxes).await;
    crate::container::orphans::remove_orphans(&daemon.containers, &daemon.sandboxes).await;
    // Blobs and layers of pulls a crash cut short (no image refers to them).
    match daemon.images.gc().await {
        Ok(stats) => tracing::info!(?stats, "unreferenced image content collected"),
        Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
    }
    // What no sandbox owns (a crash, a failed cleanup): now, then every interval.
    let leftovers = daemon.sandboxes.remove_leftovers().await;
    tracing::info!(
        removed = leftovers.removed.len(),
        failed = leftovers.failed.len(),
        "leftovers of unknown sandboxes checked"
    );
    daemon
        .sandboxes
        .clean_leftovers_every(std::time::Duration::from_secs(
            daemon.config.cleanup_interval_secs,
        ));
    // In the background: a pod that comes meanwhile waits for the template or makes it.
    let _warming = daemon.sandboxes.warm_vm_template();
    let streaming = tokio::spawn(Arc::clone(&daemon.streaming).serve());
    let service = CriService::new(Arc::clone(&daemon));
    let runtime = RuntimeServiceServer::new(service.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let image = ImageServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    tracing::info!(socket = %socket.display(), "serving CRI runtime.v1");
    // kubelet keeps its connection open forever, so a graceful shutdown that waits for
    // every connection to close would never end: in-flight calls get SHUTDOWN_GRACE.
    let signalled = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&signalled);
    let shutdown = async move {
        shutdown.await;
        notify.notify_one();
    };
    let server = tonic::transport::Server::builder()
        .layer(crate::cri::rpc_log::RpcLogLayer::with_pod_of(pod_of(
            &daemon,
        )))
        .add_service(runtime)
        .add_service(image)
        .serve_with_incoming_shutdown(incoming(listener), shutdown);
    let result = tokio::select! {
        r = server => r,
        _ = async { signalled.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("calls still running after the shutdown grace period; leaving them");
            Ok(())
        }
    };
    streaming.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "cannot remove socket");
    }
    tracing::info!("hulld stopped");
    result.map_err(DaemonError::from)
}

/// A container's pod, for the span of each container call.
fn pod_of(daemon: &Arc<Daemon>) -> crate::cri::rpc_span::PodOf {
    let containers = Arc::clone(&daemon.containers);
    Arc::new(move |id: &str| containers.get(id).ok().map(|r| r.sandbox_id))
}

/// Binds the metrics endpoint when `[metrics] address` is set, and serves it.
async fn start_metrics(
    daemon: &Arc<Daemon>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let address = &daemon.config.metrics.address;
    if address.is_empty() {
        return Ok(None);
    }
    let server = crate::metrics::MetricsServer::bind(address).await?;
    if let Some(addr) = server.local_addr() {
        tracing::info!(address = %addr, "serving metrics at http://{addr}/metrics");
    }
    Ok(Some(tokio::spawn(server.serve(Arc::clone(daemon)))))
}

/// The CRI socket's connections, each behind [`AnyAuthority`] so that clients sending
/// the socket path as `:authority` (grpcio, grpc-java, older crictl) are served.
fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AnyAuthority<tokio::net::UnixStream>>> {
    use tokio_stream::StreamExt;
    UnixListenerStream::new(listener).map(|conn| conn.map(AnyAuthority::new))
}

/// Installs SIGTERM/SIGINT handlers now (before the socket is bound, so a signal that
/// arrives early still shuts down cleanly) and returns a future that resolves on the first.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}
