//! # hull-agent
//!
//! PID 1 of every hull pod VM. It will mount the guest's pseudo filesystems, reap orphans,
//! configure the pod network from what hulld sends, and run the pod's containers (namespaces
//! and cgroup v2 inside the guest), serving `hull-agent-api` over vsock port 1024.

fn main() {
    eprintln!("hull-agent: not implemented yet");
    std::process::exit(1);
}
