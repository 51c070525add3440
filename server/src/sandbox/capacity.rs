//! Node admission (issue 20): RunPodSandbox refuses a pod the node cannot hold, with
//! `ResourceExhausted`, before anything is taken, rather than letting the host swap or the
//! kernel OOM-kill VMs later.
//!
//! A pod is admitted when the node's `MemAvailable` (from `/proc/meminfo`), less what pods
//! still starting have been promised, less `node.memory_headroom_mib`, can hold the new
//! pod's whole VM: its guest RAM (the VM size: limits + overhead, or the default) plus
//! `node.pod_overhead_mib` for the VMM and its helpers on the host. The promise of a pod
//! that is starting is held until its RunPodSandbox returns (ready or unwound): until then
//! its memory is not yet in `MemAvailable`, and eight pods starting at once must not all be
//! admitted against the same free memory. Pods already running are charged what they use
//! (`MemAvailable` sees it), not their full guest RAM: a guest's untouched RAM is
//! overcommitted, as on any VM host; the headroom is what absorbs their growth (and free
//! page reporting gives freed guest pages back).

use std::sync::{Arc, Mutex};

use crate::config::NodeSection;

/// The node's memory, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemory {
    pub available_kib: u64,
}

/// Where the node's memory is read (the real `/proc/meminfo`, or a test's numbers).
pub type MemorySource = Arc<dyn Fn() -> std::io::Result<NodeMemory> + Send + Sync>;

/// Why a pod was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(
        "The node cannot hold this pod: it needs {need_mib} MiB (guest RAM {guest_mib} MiB + \
         node.pod_overhead_mib {overhead_mib} MiB); {available_mib} MiB are available, \
         {in_flight_mib} MiB are promised to pods still starting and \
         node.memory_headroom_mib keeps {headroom_mib} MiB free"
    )]
    NodeFull {
        need_mib: u64,
        guest_mib: u64,
        overhead_mib: u64,
        available_mib: u64,
        in_flight_mib: u64,
        headroom_mib: u64,
    },
    #[error("Cannot read the node's available memory from /proc/meminfo")]
    MemInfo(#[source] std::io::Error),
}

/// The node's admission state: its limits and the memory promised to starting pods.
pub struct NodeCapacity {
    section: NodeSection,
    in_flight_mib: Arc<Mutex<u64>>,
    source: MemorySource,
}

impl std::fmt::Debug for NodeCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCapacity")
            .field("section", &self.section)
            .field("in_flight_mib", &*super::lock(&self.in_flight_mib))
            .finish()
    }
}

/// Memory promised to one starting pod; dropping it gives the promise back.
#[derive(Debug)]
pub struct Admission {
    in_flight_mib: Arc<Mutex<u64>>,
    mib: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut held = super::lock(&self.in_flight_mib);
        *held = held.saturating_sub(self.mib);
    }
}

impl NodeCapacity {
    /// Admission by the node's real `/proc/meminfo`.
    pub fn new(section: &NodeSection) -> Self {
        Self::with_source(section, Arc::new(read_meminfo))
    }

    pub fn with_source(section: &NodeSection, source: MemorySource) -> Self {
        Self {
            section: section.clone(),
            in_flight_mib: Arc::new(Mutex::new(0)),
            source,
        }
    }

    /// MiB promised to pods still starting.
    pub fn in_flight_mib(&self) -> u64 {
        *super::lock(&self.in_flight_mib)
    }

    /// Admits a pod whose VM has `guest_mib` of RAM, or says why not. Checking and
    /// promising happen under one lock, so concurrent starts see each other's promises.
    pub fn admit(&self, guest_mib: u64) -> Result<Option<Admission>, CapacityError> {
        if !self.section.memory_admission {
            return Ok(None);
        }
        let need_mib = guest_mib.saturating_add(self.section.pod_overhead_mib);
        let mut held = super::lock(&self.in_flight_mib);
        let available_mib = (self.source)()
            .map_err(CapacityError::MemInfo)?
            .available_kib
            / 1024;
        let free = available_mib
            .saturating_sub(*held)
            .saturating_sub(self.section.memory_headroom_mib);
        if need_mib > free {
            return Err(CapacityError::NodeFull {
                need_mib,
                guest_mib,
                overhead_mib: self.section.pod_overhead_mib,
                available_mib,
                in_flight_mib: *held,
                headroom_mib: self.section.memory_headroom_mib,
            });
        }
        *held += need_mib;
        Ok(Some(Admission {
            in_flight_mib: Arc::clone(&self.in_flight_mib),
            mib: need_mib,
        }))
    }
}

/// `MemAvailable` from `/proc/meminfo`.
pub fn read_meminfo() -> std::io::Result<NodeMemory> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo")?)
}

fn parse_meminfo(text: &str) -> std::io::Result<NodeMemory> {
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MemAvailable line (Linux 3.14+ has one)",
            )
        })?;
    Ok(NodeMemory { available_kib: kib })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(available_mib: u64) -> NodeCapacity {
        let section = NodeSection {
            memory_admission: true,
            memory_headroom_mib: 100,
            pod_overhead_mib: 20,
        };
        NodeCapacity::with_source(
            &section,
            Arc::new(move || {
                Ok(NodeMemory {
                    available_kib: available_mib * 1024,
                })
            }),
        )
    }

    #[test]
    fn a_pod_fits_only_above_the_headroom() {
        // 100 headroom + 80 guest + 20 overhead = 200: fits exactly in 200, not in 199.
        assert!(node(200).admit(80).unwrap().is_some());
        let err = node(199).admit(80).unwrap_err();
        assert!(
            matches!(
                err,
                CapacityError::NodeFull {
                    need_mib: 100,
                    available_mib: 199,
                    in_flight_mib: 0,
                    headroom_mib: 100,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("needs 100 MiB") && msg.contains("node.memory_headroom_mib"),
            "{msg}"
        );
    }

    #[test]
    fn starting_pods_hold_their_promise_until_dropped() {
        let n = node(400);
        // 300 MiB above the headroom: three pods of 100 MiB, not four, while they start.
        let a = n.admit(80).unwrap();
        let b = n.admit(80).unwrap();
        let c = n.admit(80).unwrap();
        let err = n.admit(80).unwrap_err();
        assert!(
            matches!(
                err,
                CapacityError::NodeFull {
                    in_flight_mib: 300,
                    ..
                }
            ),
            "{err:?}"
        );
        drop(b);
        let d = n.admit(80).unwrap();
        drop((a, c, d));
        assert_eq!(n.in_flight_mib(), 0);
    }

    #[test]
    fn off_admits_everything_and_meminfo_errors_refuse() {
        let section = NodeSection {
            memory_admission: false,
            ..NodeSection::default()
        };
        let broken: MemorySource = Arc::new(|| Err(std::io::Error::other("no /proc")));
        assert!(
            NodeCapacity::with_source(&section, broken.clone())
                .admit(1 << 30)
                .unwrap()
                .is_none()
        );
        let on = NodeSection::default();
        let err = NodeCapacity::with_source(&on, broken)
            .admit(128)
            .unwrap_err();
        assert!(matches!(err, CapacityError::MemInfo(_)), "{err:?}");
    }

    #[test]
    fn meminfo_parses_mem_available() {
        let text = "MemTotal:       24684312 kB\nMemFree:         1536000 kB\nMemAvailable:   21940000 kB\n";
        assert_eq!(parse_meminfo(text).unwrap().available_kib, 21_940_000);
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_err());
        assert!(read_meminfo().unwrap().available_kib > 0);
    }
}
