//! What a snapshot directory holds, as far as the hull backend needs to know: the names of
//! the files hull-vmm writes there (their contents are hull-vmm's own business, read back
//! only by `hull-vmm --restore`).

/// The state file in a snapshot directory (JSON: vCPUs, irqchip, clock, device registers).
pub const STATE_FILE: &str = "vm.json";
/// The guest RAM file in a snapshot directory (sparse: untouched pages are holes).
pub const MEMORY_FILE: &str = "memory";
/// Every file of a complete snapshot.
pub const FILES: [&str; 2] = [STATE_FILE, MEMORY_FILE];
