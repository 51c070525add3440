//! [`PodNetwork`]: what hulld calls. `setup` = netns → CNI ADD → lo up, tap, tc mirroring;
//! `teardown` = tc → tap → CNI DEL (cached config and result) → netns. Teardown is
//! idempotent and works on any partial state, so it is also setup's undo.
//!
//! Loopback: containerd runs the `loopback` CNI plugin on `lo` as a separate network.
//! hull brings `lo` up itself over the netlink socket it already has in the netns (that is
//! all the plugin does) and saves a fork+exec; there is nothing to DEL. A conflist may
//! still list `loopback` in its chain if an operator wants it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tracing::{Instrument, info, info_span, warn};

use crate::cni::{
    self, Attachment, Bandwidth, Cni, CniConfig, CniError, CniResult, DnsCapability, IpConfig,
    NotReady, PodRef, PortMapping, Route, RuntimeConfig, result::Dns,
};
use crate::netlink::{NetlinkError, NetnsLink};
use crate::netns::{Netns, NetnsError};
use crate::tap::{self, TapError};
use crate::tc::{self, TcError};

/// Interface name CNI creates in the pod netns.
pub const POD_IFNAME: &str = "eth0";

/// Errors of pod network setup and teardown.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    #[error("Invalid sandbox id")]
    SandboxId(#[source] NetnsError),
    #[error("Failed to create the pod netns")]
    CreateNetns(#[source] NetnsError),
    #[error("Failed to open the pod netns")]
    OpenNetns(#[source] NetnsError),
    #[error("Failed to build CNI_ARGS")]
    CniArgs(#[source] CniError),
    #[error("CNI ADD failed")]
    CniAdd(#[source] CniError),
    #[error("CNI CHECK failed")]
    CniCheck(#[source] CniError),
    #[error("CNI DEL failed")]
    CniDel(#[source] CniError),
    #[error("Failed to open netlink in the pod netns")]
    Netlink(#[source] NetlinkError),
    #[error("Failed to bring up lo in the pod netns")]
    Loopback(#[source] NetlinkError),
    #[error("Failed to read {POD_IFNAME} in the pod netns")]
    ReadPodInterface(#[source] NetlinkError),
    #[error("Failed to create the tap")]
    CreateTap(#[source] TapError),
    #[error("Failed to delete the tap")]
    DeleteTap(#[source] TapError),
    #[error("Failed to set up tc mirroring")]
    AddMirroring(#[source] TcError),
    #[error("Failed to remove tc mirroring")]
    RemoveMirroring(#[source] TcError),
    #[error("tc mirroring between {POD_IFNAME} and the tap is missing")]
    MirroringMissing,
    #[error("Failed to delete the pod netns")]
    DeleteNetns(#[source] NetnsError),
    #[error("Pod network teardown failed in {failed} steps ({others}); every step ran")]
    Teardown {
        failed: usize,
        /// The failures after the first, joined.
        others: String,
        /// The first failure.
        #[source]
        source: Box<PodNetworkError>,
    },
    #[error("Pod network setup failed, and so did its cleanup ({cleanup})")]
    SetupCleanup {
        #[source]
        source: Box<PodNetworkError>,
        cleanup: String,
    },
}

/// Settings of [`PodNetwork`].
#[derive(Debug, Clone)]
pub struct PodNetworkConfig {
    pub cni: CniConfig,
    /// Directory of the named netns files (`/run/netns`).
    pub netns_dir: PathBuf,
    /// Prefix of the netns file names (`hull-`).
    pub netns_prefix: String,
    /// Name of the tap inside the netns.
    pub tap_name: String,
}

impl Default for PodNetworkConfig {
    fn default() -> Self {
        Self {
            cni: CniConfig::default(),
            netns_dir: crate::netns::NETNS_RUN_DIR.into(),
            netns_prefix: crate::netns::NETNS_PREFIX.into(),
            tap_name: tap::TAP_NAME.into(),
        }
    }
}

/// What setup needs to know about the pod.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub sandbox_id: String,
    pub pod: PodRef,
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsCapability>,
    pub bandwidth: Option<Bandwidth>,
    /// Who uses the pod's eth0.
    pub nic: PodNic,
}

/// Who uses a pod's eth0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodNic {
    /// A VM: a tap mirrored both ways with eth0 by tc (the default).
    #[default]
    VmTap,
    /// The pod's processes themselves (hull's host-isolation pods): CNI and `lo` only.
    Direct,
}

/// How long each setup phase took (for hulld's RunPodSandbox benchmark).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SetupTimings {
    pub netns: Duration,
    pub cni: Duration,
    pub tap_tc: Duration,
}

/// The pod network as the VMM and the guest need it.
#[derive(Debug, Clone, Serialize)]
pub struct PodNetworkStatus {
    /// `/run/netns/hull-<id>`: start the VMM in it.
    pub netns: PathBuf,
    /// The tap the VMM opens by name inside the netns.
    pub tap: String,
    /// eth0's MAC: give it to the guest NIC.
    pub mac: String,
    /// eth0's MTU: give it to the guest NIC.
    pub mtu: u32,
    /// eth0's addresses (with prefix and gateway) from the CNI result.
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The raw CNI result.
    pub cni_result: Value,
    pub timings: SetupTimings,
}

/// Pod networking for hulld.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    config: PodNetworkConfig,
    cni: Cni,
}

impl PodNetwork {
    pub fn new(config: PodNetworkConfig) -> Self {
        let cni = Cni::new(config.cni.clone());
        Self { config, cni }
    }

    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    /// Whether a usable CNI network exists (CRI `NetworkReady`).
    pub fn ready(&self) -> Result<(), NotReady> {
        self.cni.validate().map(|_| ())
    }

    /// The netns path of a sandbox.
    pub fn netns_path(&self, sandbox_id: &str) -> Result<PathBuf, PodNetworkError> {
        crate::netns::validate_name(sandbox_id).map_err(PodNetworkError::SandboxId)?;
        Ok(self
            .config
            .netns_dir
            .join(format!("{}{sandbox_id}", self.config.netns_prefix)))
    }

    fn attachment(&self, sandbox_id: &str, netns: PathBuf, args: String) -> Attachment {
        Attachment {
            container_id: sandbox_id.to_owned(),
            netns,
            ifname: POD_IFNAME.into(),
            args,
        }
    }

    /// Creates the pod network. On error everything done so far is undone.
    pub async fn setup(&self, spec: &PodSpec) -> Result<PodNetworkStatus, PodNetworkError> {
        let span = info_span!("pod_network_setup", sandbox_id = %spec.sandbox_id);
        async {
            let path = self.netns_path(&spec.sandbox_id)?;
            let args =
                cni::cni_args(&spec.pod, &spec.sandbox_id).map_err(PodNetworkError::CniArgs)?;
            let t0 = Instant::now();
            let netns = Netns::create(&path).map_err(PodNetworkError::CreateNetns)?;
            info!(netns = %path.display(), "netns created");
            let mut timings = SetupTimings {
                netns: t0.elapsed(),
                ..SetupTimings::default()
            };
            match self.setup_in(spec, &netns, args, &mut timings).await {
                Ok(status) => Ok(status),
                Err(err) => {
                    warn!(error = %cni::error_chain(&err), "pod network setup failed, undoing");
                    match self.teardown(&spec.sandbox_id).await {
                        Ok(()) => Err(err),
                        Err(cleanup) => Err(PodNetworkError::SetupCleanup {
                            source: Box::new(err),
                            cleanup: cni::error_chain(&cleanup),
                        }),
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn setup_in(
        &self,
        spec: &PodSpec,
        netns: &Netns,
        args: String,
        timings: &mut SetupTimings,
    ) -> Result<PodNetworkStatus, PodNetworkError> {
        let t = Instant::now();
        let att = self.attachment(&spec.sandbox_id, netns.path().to_path_buf(), args);
        let rc = RuntimeConfig {
            port_mappings: spec.port_mappings.clone(),
            dns: spec.dns.clone(),
            bandwidth: spec.bandwidth.clone(),
        };
        let (result, raw) = self
            .cni
            .add(&att, &rc)
            .await
            .map_err(PodNetworkError::CniAdd)?;
        timings.cni = t.elapsed();
        let t = Instant::now();
        let link = NetnsLink::connect(netns)
            .await
            .map_err(PodNetworkError::Netlink)?;
        link.set_up("lo", None)
            .await
            .map_err(PodNetworkError::Loopback)?;
        let eth0 = link
            .link(POD_IFNAME)
            .await
            .map_err(PodNetworkError::ReadPodInterface)?;
        if spec.nic == PodNic::Direct {
            info!(?timings, "pod network ready (no VM NIC)");
            let mut status = self.status(netns, &result, raw, eth0.mac, eth0.mtu, timings.clone());
            status.tap.clear();
            return Ok(status);
        }
        let tap_name = &self.config.tap_name;
        let tap = tap::create(netns, &link, tap_name, eth0.mtu)
            .await
            .map_err(PodNetworkError::CreateTap)?;
        info!(tap = %tap_name, mtu = eth0.mtu, mac = %eth0.mac, "tap created");
        tc::add_mirroring(&link, eth0.index, tap.index)
            .await
            .map_err(PodNetworkError::AddMirroring)?;
        timings.tap_tc = t.elapsed();
        info!(?timings, "tc mirroring installed, pod network ready");
        Ok(self.status(netns, &result, raw, eth0.mac, eth0.mtu, timings.clone()))
    }

    fn status(
        &self,
        netns: &Netns,
        result: &CniResult,
        raw: Value,
        mac: String,
        mtu: u32,
        timings: SetupTimings,
    ) -> PodNetworkStatus {
        let ns = netns.path().display().to_string();
        let index = result.interface_index(POD_IFNAME, &ns);
        PodNetworkStatus {
            netns: netns.path().to_path_buf(),
            tap: self.config.tap_name.clone(),
            mac,
            mtu,
            ips: result.ips_of(index),
            routes: result.routes.clone(),
            dns: result.dns.clone(),
            cni_result: raw,
            timings,
        }
    }

    /// Verifies the pod network: CNI CHECK, and the tc redirects both ways.
    pub async fn check(&self, sandbox_id: &str) -> Result<(), PodNetworkError> {
        let path = self.netns_path(sandbox_id)?;
        let netns = Netns::open(&path).map_err(PodNetworkError::OpenNetns)?;
        let att = self.attachment(sandbox_id, path, String::new());
        self.cni
            .check(&att)
            .await
            .map_err(PodNetworkError::CniCheck)?;
        let link = NetnsLink::connect(&netns)
            .await
            .map_err(PodNetworkError::Netlink)?;
        let eth0 = link
            .link(POD_IFNAME)
            .await
            .map_err(PodNetworkError::ReadPodInterface)?;
        let tap = link
            .link(&self.config.tap_name)
            .await
            .map_err(PodNetworkError::ReadPodInterface)?;
        let fwd = tc::redirect_targets(&link, eth0.index)
            .await
            .map_err(PodNetworkError::AddMirroring)?;
        let back = tc::redirect_targets(&link, tap.index)
            .await
            .map_err(PodNetworkError::AddMirroring)?;
        if !fwd.contains(&tap.index) || !back.contains(&eth0.index) {
            return Err(PodNetworkError::MirroringMissing);
        }
        Ok(())
    }

    /// Removes the pod network: tc, tap, CNI DEL (from the cache), netns. Succeeds when
    /// nothing is left, including when nothing was there. A failing step does not stop
    /// the later ones (a plugin whose DEL fails still leaves the netns to be deleted, and
    /// the other plugins' DEL run); the error then names every failure, and the CNI cache
    /// entry stays so DEL can be retried ([`PodNetwork::attachments`]).
    pub async fn teardown(&self, sandbox_id: &str) -> Result<(), PodNetworkError> {
        let span = info_span!("pod_network_teardown", sandbox_id = %sandbox_id);
        async {
            let path = self.netns_path(sandbox_id)?;
            let mut failures = Vec::new();
            if let Ok(ns) = Netns::open(&path)
                && let Err(e) = self.remove_tap(&ns).await
            {
                failures.push(e);
            }
            let att = self.attachment(
                sandbox_id,
                path.clone(),
                format!("IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={sandbox_id}"),
            );
            if let Err(e) = self.cni.del(&att).await {
                failures.push(PodNetworkError::CniDel(e));
            }
            if let Err(e) = Netns::delete(&path) {
                failures.push(PodNetworkError::DeleteNetns(e));
            }
            let failed = failures.len();
            let mut failures = failures.into_iter();
            let Some(first) = failures.next() else {
                info!("pod network removed");
                return Ok(());
            };
            let others: Vec<String> = failures.map(|e| cni::error_chain(&e)).collect();
            warn!(error = %cni::error_chain(&first), others = ?others, "pod network teardown left something behind");
            if others.is_empty() {
                return Err(first);
            }
            Err(PodNetworkError::Teardown {
                failed,
                others: others.join("; "),
                source: Box::new(first),
            })
        }
        .instrument(span)
        .await
    }

    /// The sandbox ids with a CNI cache entry: an attachment whose ADD started and whose
    /// DEL has not succeeded yet. [`PodNetwork::teardown`] of an id no sandbox owns
    /// removes its leftovers (IPAM leases and plugin state through DEL with the cached
    /// config, netns).
    pub fn attachments(&self) -> Vec<String> {
        match self.cni.cache().ids() {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %cni::error_chain(&e), "cannot list the CNI cache");
                Vec::new()
            }
        }
    }

    async fn remove_tap(&self, netns: &Netns) -> Result<(), PodNetworkError> {
        let link = NetnsLink::connect(netns)
            .await
            .map_err(PodNetworkError::Netlink)?;
        let mut indices = Vec::new();
        for name in [POD_IFNAME, self.config.tap_name.as_str()] {
            if let Some(l) = link
                .find_link(name)
                .await
                .map_err(PodNetworkError::ReadPodInterface)?
            {
                indices.push(l.index);
            }
        }
        tc::remove_mirroring(&link, &indices)
            .await
            .map_err(PodNetworkError::RemoveMirroring)?;
        tap::delete(&link, &self.config.tap_name)
            .await
            .map_err(PodNetworkError::DeleteTap)
    }
}
