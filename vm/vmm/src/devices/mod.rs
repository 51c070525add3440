//! Devices hull-vmm emulates: legacy (serial, i8042) on the port-I/O bus, and virtio over
//! its own virtio-mmio transport.

pub mod blk;
pub mod bus;
pub mod fs;
pub mod i8042;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod serial;
#[cfg(test)]
pub mod test_utils;
pub mod virtio;
pub mod vsock;
