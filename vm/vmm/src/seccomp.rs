//! One seccomp allow-list per thread kind (Firecracker `resources/seccomp`, Cloud Hypervisor
//! `seccomp_filters.rs`): each thread installs its own filter when it starts, after
//! everything privileged (opening /dev/kvm, files, binding sockets) was done by the main
//! thread during build. A syscall outside the list kills the process (SIGSYS).
//!
//! Filters are enabled process-wide by the `hull-vmm` binary ([`enable`]); library tests that
//! run devices in the test process leave them off, the binary's end-to-end tests run with them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn filters on for every thread that starts from now on.
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Whether filters are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// The kinds of threads hull-vmm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs: epoll on the exit/signal fds.
    Vmm,
    /// A vCPU: KVM_RUN and device emulation on the buses.
    Vcpu,
    /// The control API: accept, read a line, answer (reads /proc/self/smaps).
    Api,
    /// A virtio device worker: epoll, eventfds, guest memory, I/O on sockets it was
    /// given (virtio-fs' vhost-user connection); it cannot create a socket.
    Device,
    /// The vsock device worker: as [`ThreadKind::Device`], plus accepting host
    /// connections and connecting the guest's to `<uds>_<port>` (`AF_UNIX` only).
    VsockDevice,
}

/// Errors from building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Failed to build the {0:?} filter")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    #[error("Failed to install the {0:?} filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
}

const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;

/// The KVM ioctls that read a paused VM's state for a snapshot (vm/vmm/src/snapshot).
mod snapshot_ioctls {
    use kvm_bindings::*;
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

    /// All of them.
    pub fn all() -> Vec<u64> {
        vec![
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_GET_MSRS(),
            KVM_GET_LAPIC(),
            KVM_GET_MP_STATE(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_TSC_KHZ(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
            KVM_GET_IRQCHIP(),
            KVM_GET_CLOCK(),
            KVM_GET_PIT2(),
        ]
    }
}

/// What the main thread needs to save a snapshot once the VM stops: kick and join the vCPU
/// threads, read their state (the ioctls in [`snapshot_ioctls`]), write two files.
const SNAPSHOT: &[(i64, &str)] = &[
    (libc::SYS_tgkill, "kicking vCPU threads out of KVM_RUN"),
    (libc::SYS_openat, "creating the snapshot files"),
    (libc::SYS_ftruncate, "sizing the memory file"),
    (libc::SYS_pread64, "reading guest RAM"),
    (libc::SYS_pwrite64, "writing the memory file"),
];

/// Syscalls every thread needs: memory (malloc), locks, signals, time, logging, exit.
const COMMON: &[(i64, &str)] = &[
    (libc::SYS_read, "eventfd/socket/file reads"),
    (libc::SYS_write, "eventfd signals, console log, stderr logs"),
    (libc::SYS_writev, "stderr logs"),
    (libc::SYS_close, "dropping fds"),
    (libc::SYS_futex, "mutexes, channels, thread join"),
    (libc::SYS_mmap, "malloc"),
    (libc::SYS_munmap, "malloc, thread exit"),
    (libc::SYS_mprotect, "malloc arenas"),
    (libc::SYS_madvise, "malloc, thread exit"),
    (libc::SYS_mremap, "realloc"),
    (libc::SYS_brk, "malloc"),
    (libc::SYS_rt_sigreturn, "signal return"),
    (libc::SYS_rt_sigprocmask, "signal masks"),
    (
        libc::SYS_sigaltstack,
        "thread exit tears down the alt stack",
    ),
    (libc::SYS_sched_yield, "spin loops in locks"),
    (
        libc::SYS_sched_getaffinity,
        "std thread parallelism queries",
    ),
    (libc::SYS_clock_gettime, "timestamps (vDSO fallback)"),
    (libc::SYS_clock_nanosleep, "sleeps"),
    (libc::SYS_nanosleep, "sleeps"),
    (libc::SYS_gettid, "logging"),
    (libc::SYS_getpid, "status"),
    (libc::SYS_getrandom, "HashMap seeds"),
    (libc::SYS_fstat, "std file metadata"),
    (libc::SYS_newfstatat, "std file metadata"),
    (libc::SYS_statx, "std file metadata"),
    (libc::SYS_lseek, "file offsets"),
    (libc::SYS_fcntl, "fd flags"),
    (libc::SYS_rseq, "glibc thread setup"),
    (libc::SYS_exit, "thread exit"),
    (libc::SYS_exit_group, "process exit"),
    (libc::SYS_restart_syscall, "interrupted sleeps"),
    // The jail's uid drop (vm/vmm/src/jail.rs) runs after the device threads started;
    // glibc makes every thread change its credentials. Once dropped, a thread can only
    // "change" to the ids it has.
    (libc::SYS_setresuid, "the jail's uid drop, in every thread"),
    (libc::SYS_setresgid, "the jail's gid drop, in every thread"),
    (
        libc::SYS_setgroups,
        "the jail's group drop, in every thread",
    ),
];

const EPOLL: &[(i64, &str)] = &[
    (libc::SYS_epoll_create1, "per-activation epoll"),
    (libc::SYS_epoll_ctl, "watching fds"),
    (libc::SYS_epoll_wait, "event loop"),
    (libc::SYS_epoll_pwait, "event loop"),
];

/// I/O on sockets a thread was given; no `socket()`, `connect()` or `accept4()`.
const SOCKET_IO: &[(i64, &str)] = &[
    (libc::SYS_recvfrom, "unix stream reads"),
    (libc::SYS_sendto, "unix stream writes"),
    (libc::SYS_recvmsg, "unix stream reads"),
    (libc::SYS_sendmsg, "unix stream writes"),
    (libc::SYS_shutdown, "half-close"),
    (libc::SYS_setsockopt, "read timeouts"),
];

fn ioctl_rule(values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|v| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *v)?;
            SeccompRule::new(vec![cond])
        })
        .collect()
}

/// The syscall numbers (with argument rules) allowed for `kind`.
pub fn rules(
    kind: ThreadKind,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |list: &[(i64, &str)]| {
        for (nr, _why) in list {
            rules.insert(*nr, Vec::new());
        }
    };
    allow(COMMON);
    match kind {
        ThreadKind::Vmm => {
            allow(EPOLL);
            allow(SNAPSHOT);
        }
        ThreadKind::Vcpu => {}
        ThreadKind::Api => {
            allow(SOCKET_IO);
            allow(&[(libc::SYS_accept4, "API connections")]);
            allow(&[(libc::SYS_openat, "reading /proc/self/smaps for metrics")]);
        }
        ThreadKind::Device | ThreadKind::VsockDevice => {
            allow(EPOLL);
            allow(SOCKET_IO);
            allow(&[
                (libc::SYS_pread64, "virtio-blk reads"),
                (libc::SYS_pwrite64, "virtio-blk writes"),
                (libc::SYS_fdatasync, "virtio-blk flush"),
            ]);
        }
    }
    if kind == ThreadKind::VsockDevice {
        allow(&[
            (
                libc::SYS_accept4,
                "host connections to the hybrid-vsock socket",
            ),
            (
                libc::SYS_connect,
                "guest-initiated connections to <uds>_<port>",
            ),
        ]);
        // socket(AF_UNIX, ...) only: no network sockets, whatever the address family.
        let unix = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?;
        rules.insert(libc::SYS_socket, vec![SeccompRule::new(vec![unix])?]);
    }
    let ioctls: Vec<u64> = match kind {
        ThreadKind::Vcpu => vec![KVM_RUN],
        ThreadKind::Device | ThreadKind::VsockDevice => vec![FIONBIO],
        ThreadKind::Vmm => snapshot_ioctls::all(),
        ThreadKind::Api => Vec::new(),
    };
    if !ioctls.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctl_rule(&ioctls)?);
    }
    Ok(rules)
}

/// Compile the filter for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let rules = rules(kind).map_err(|e| SeccompError::Build(kind, e))?;
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    f.try_into().map_err(|e| SeccompError::Build(kind, e))
}

/// Install `kind`'s filter on the calling thread, if filters are enabled.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    if !enabled() {
        return Ok(());
    }
    let bpf = filter(kind)?;
    seccompiler::apply_filter(&bpf).map_err(|e| SeccompError::Install(kind, e))?;
    tracing::debug!(?kind, "seccomp filter installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Device,
            ThreadKind::VsockDevice,
        ] {
            assert!(!filter(kind).unwrap().is_empty());
        }
    }

    #[test]
    fn only_the_vsock_thread_may_make_sockets_and_only_unix_ones() {
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Device,
        ] {
            let r = rules(kind).unwrap();
            assert!(
                !r.contains_key(&libc::SYS_socket),
                "{kind:?} may create sockets"
            );
            assert!(!r.contains_key(&libc::SYS_connect), "{kind:?} may connect");
        }
        let r = rules(ThreadKind::VsockDevice).unwrap();
        assert_eq!(r[&libc::SYS_socket].len(), 1, "one rule: AF_UNIX");
        assert!(r.contains_key(&libc::SYS_connect));
    }

    /// Runs `check` in a child process under `kind`'s filter; the child's exit status.
    fn in_filtered_child(
        test: &str,
        kind: ThreadKind,
        check: impl FnOnce(),
    ) -> Option<std::process::ExitStatus> {
        if std::env::var_os("HULL_SECCOMP_CHILD").is_some() {
            let bpf = filter(kind).unwrap();
            seccompiler::apply_filter(&bpf).unwrap();
            check();
            std::process::exit(0);
        }
        // The test's path in this crate (`seccomp::tests::<test>`): a wrong name would run
        // no test at all and exit 0.
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let test = format!("{module}::{test}");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &test, "--nocapture", "--test-threads", "1"])
            .env("HULL_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("running 1 test"),
            "the child did not run {test}: {stdout}"
        );
        Some(out.status)
    }

    #[test]
    fn the_vsock_thread_cannot_make_a_network_socket() {
        use std::os::unix::process::ExitStatusExt;
        let test = "the_vsock_thread_cannot_make_a_network_socket";
        let status = in_filtered_child(test, ThreadKind::VsockDevice, || {
            // A unix socket is allowed; an inet one is not.
            let _ = std::os::unix::net::UnixStream::connect("/nonexistent/hull.sock");
            let _ = std::net::TcpStream::connect("127.0.0.1:9");
        });
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGSYS));
    }

    #[test]
    fn the_vsock_thread_may_connect_a_unix_socket() {
        let test = "the_vsock_thread_may_connect_a_unix_socket";
        let status = in_filtered_child(test, ThreadKind::VsockDevice, || {
            let _ = std::os::unix::net::UnixStream::connect("/nonexistent/hull.sock");
        });
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
    }

    #[test]
    fn a_device_thread_cannot_make_any_socket() {
        use std::os::unix::process::ExitStatusExt;
        let test = "a_device_thread_cannot_make_any_socket";
        let status = in_filtered_child(test, ThreadKind::Device, || {
            let _ = std::os::unix::net::UnixStream::connect("/run/hull/hull.sock");
        });
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGSYS));
    }

    #[test]
    fn vcpus_may_only_run() {
        let r = rules(ThreadKind::Vcpu).unwrap();
        assert_eq!(r[&libc::SYS_ioctl].len(), 1);
        assert!(!r.contains_key(&libc::SYS_openat));
        assert!(!r.contains_key(&libc::SYS_socket));
        assert!(!r.contains_key(&libc::SYS_execve));
    }

    #[test]
    fn a_filtered_thread_is_killed_by_a_forbidden_syscall() {
        // Run the check in a child process: the filter kills the whole process.
        let exe = std::env::current_exe().unwrap();
        if std::env::var_os("HULL_SECCOMP_CHILD").is_some() {
            let bpf = filter(ThreadKind::Vcpu).unwrap();
            seccompiler::apply_filter(&bpf).unwrap();
            // openat is not on the vCPU list.
            let _ = std::fs::File::open("/etc/hostname");
            std::process::exit(0);
        }
        // The libtest name: this module's path without the crate's name.
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let name = format!("{module}::a_filtered_thread_is_killed_by_a_forbidden_syscall");
        let out = std::process::Command::new(exe)
            .args(["--exact", &name, "--nocapture"])
            .env("HULL_SECCOMP_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{out:?}");
    }
}
