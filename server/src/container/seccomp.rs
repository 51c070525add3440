//! The `RuntimeDefault` seccomp profile: an allow-list in the spirit of Docker's and
//! containerd's default (everything a normal program needs is allowed, the calls that
//! reach kernel-wide state or widen the attack surface return EPERM), plus the calls a
//! capability the container holds makes useful again. x86_64 only, like the agent.
//!
//! [`profile`] picks a container's profile (RuntimeDefault, Unconfined, or a Localhost file
//! read here on the host). The profile is plain OCI `linux.seccomp` JSON; the agent compiles and installs it in
//! the guest for the container's process and its execs.

use serde_json::{Value, json};

use super::SpecError;

/// Calls every container may make: files, memory, processes and threads, signals, time,
/// sockets, IPC, ids, scheduling, polling (whitespace-separated names, by topic).
const ALLOWED: &[&str] = &[
    // files and directories
    "access chdir chmod chown close close_range copy_file_range creat dup dup2 dup3 \
     faccessat faccessat2 fadvise64 fallocate fchdir fchmod fchmodat fchown fchownat \
     fcntl fdatasync flock fstat fstatfs fsync ftruncate futimesat getcwd getdents \
     getdents64 lchown link linkat lseek lstat mkdir mkdirat mknod mknodat \
     name_to_handle_at newfstatat open openat openat2 pread64 preadv preadv2 pwrite64 \
     pwritev pwritev2 read readahead readlink readlinkat readv rename renameat \
     renameat2 rmdir sendfile splice stat statfs statx symlink symlinkat sync \
     sync_file_range syncfs tee truncate umask unlink unlinkat utime utimensat utimes \
     vmsplice write writev",
    // extended attributes
    "fgetxattr flistxattr fremovexattr fsetxattr getxattr lgetxattr listxattr \
     llistxattr lremovexattr lsetxattr removexattr setxattr",
    // notification and async I/O
    "epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 \
     epoll_wait epoll_wait_old eventfd eventfd2 fanotify_mark inotify_add_watch \
     inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents \
     io_pgetevents io_setup io_submit io_uring_enter io_uring_register io_uring_setup \
     pause poll ppoll pselect6 select signalfd signalfd4 timerfd_create \
     timerfd_gettime timerfd_settime",
    // memory
    "brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2 mlockall \
     mmap mprotect mremap msync munlock munlockall munmap pkey_alloc pkey_free \
     pkey_mprotect remap_file_pages",
    // processes, threads, signals
    "arch_prctl execve execveat exit exit_group fork futex futex_waitv \
     get_robust_list get_thread_area getcpu getpgid getpgrp getpid getppid \
     getpriority getrlimit getrusage getsid gettid ioprio_get ioprio_set kill \
     modify_ldt pidfd_open pidfd_send_signal prctl prlimit64 process_mrelease \
     restart_syscall rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo \
     rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo \
     sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr \
     sched_getparam sched_getscheduler sched_rr_get_interval sched_setaffinity \
     sched_setattr sched_setparam sched_setscheduler sched_yield seccomp \
     set_robust_list set_thread_area set_tid_address setpgid setpriority setrlimit \
     setsid sigaltstack tgkill tkill vfork wait4 waitid",
    // credentials (bounded by the capabilities the process holds)
    "capget capset getegid geteuid getgid getgroups getresgid getresuid getuid \
     setfsgid setfsuid setgid setgroups setregid setresgid setresuid setreuid setuid",
    // time
    "adjtimex alarm clock_adjtime clock_getres clock_gettime clock_nanosleep \
     getitimer gettimeofday nanosleep setitimer time timer_create timer_delete \
     timer_getoverrun timer_gettime timer_settime times",
    // sockets (socket itself below)
    "accept accept4 bind connect getpeername getsockname getsockopt listen recvfrom \
     recvmmsg recvmsg sendmmsg sendmsg sendto setsockopt shutdown socketpair",
    // System V and POSIX IPC
    "mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink msgctl \
     msgget msgrcv msgsnd semctl semget semop semtimedop shmat shmctl shmdt shmget",
    // system information, sandboxing
    "getrandom ioctl landlock_add_rule landlock_create_ruleset landlock_restrict_self \
     sysinfo uname",
];

/// Calls allowed only with a capability, as `(capability, calls)`: without it they return
/// EPERM even when the capability check in the kernel would pass for another reason.
const WITH_CAPABILITY: &[(&str, &str)] = &[
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount \
         mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd \
         setdomainname sethostname setns syslog umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module finit_module init_module"),
    ("CAP_SYS_PACCT", "acct"),
    (
        "CAP_SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("CAP_SYS_RAWIO", "ioperm iopl"),
    ("CAP_SYS_TIME", "clock_settime settimeofday"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    (
        "CAP_SYS_NICE",
        "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    ),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
];

/// Namespace flags of clone(2) (`CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET`):
/// without CAP_SYS_ADMIN, clone is allowed only when none of them is set.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;

fn names<'a>(lists: impl IntoIterator<Item = &'a str>) -> Value {
    Value::from(
        lists
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    )
}

fn allow_if_arg0(name: &str, op: &str, value: u64) -> Value {
    json!({
        "names": [name], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": value, "valueTwo": 0, "op": op}],
    })
}

/// The profile for a container holding `capabilities` (full `CAP_*` names).
pub fn runtime_default(capabilities: &[String]) -> Value {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut rules =
        vec![json!({"names": names(ALLOWED.iter().copied()), "action": "SCMP_ACT_ALLOW"})];
    // socket: every family but AF_VSOCK (the guest's channel to the host belongs to the
    // agent).
    rules.push(allow_if_arg0("socket", "SCMP_CMP_NE", AF_VSOCK));
    // personality: only the harmless personas (Linux, 32-bit uname, query).
    for persona in [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(allow_if_arg0("personality", "SCMP_CMP_EQ", persona));
    }
    for (cap, calls) in WITH_CAPABILITY {
        if has(cap) {
            rules.push(json!({"names": names([*calls]), "action": "SCMP_ACT_ALLOW"}));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        rules.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        // ENOSYS, not EPERM: libc then falls back to clone, which is checked above.
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    })
}

/// Which seccomp profile a container gets, from `seccomp` or, when that is unset, the
/// deprecated `seccomp_profile_path` (`runtime/default`, `docker/default`, `unconfined`,
/// `localhost/<path>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    Localhost(String),
}

pub fn seccomp_choice(sc: &hull_cri_api::LinuxContainerSecurityContext) -> SeccompChoice {
    use hull_cri_api::security_profile::ProfileType;
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => SeccompChoice::RuntimeDefault,
            Ok(ProfileType::Localhost) => SeccompChoice::Localhost(p.localhost_ref.clone()),
            _ => SeccompChoice::Unconfined,
        };
    }
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "runtime/default" | "docker/default" => SeccompChoice::RuntimeDefault,
        p if p.starts_with("localhost/") => SeccompChoice::Localhost(p.to_owned()),
        _ => SeccompChoice::Unconfined,
    }
}

/// The container's seccomp profile (none when privileged or unconfined); `caps` is its
/// bounding set, which the default profile follows.
pub fn profile(
    sc: &hull_cri_api::LinuxContainerSecurityContext,
    caps: &[String],
) -> Result<Option<serde_json::Value>, SpecError> {
    let localhost_ref = match seccomp_choice(sc) {
        _ if sc.privileged => return Ok(None),
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::RuntimeDefault => return Ok(Some(runtime_default(caps))),
        SeccompChoice::Localhost(r) => r,
    };
    let err = |why: String| SpecError::Seccomp {
        path: localhost_ref.clone(),
        why,
    };
    let path = localhost_ref
        .strip_prefix("localhost/")
        .unwrap_or(&localhost_ref);
    if !path.starts_with('/') {
        return Err(err("not an absolute path".into()));
    }
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    if !value.is_object() || !value["defaultAction"].is_string() {
        return Err(err("not an OCI seccomp profile (no defaultAction)".into()));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &Value) -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(|r| r["names"].as_array().expect("names").clone())
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn dangerous_calls_need_their_capability() {
        let plain = runtime_default(&["CAP_CHOWN".to_owned()]);
        let calls = allowed(&plain);
        for call in ["read", "execve", "socketpair", "setuid", "capset", "prctl"] {
            assert!(calls.iter().any(|c| c == call), "{call} must be allowed");
        }
        for call in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "kexec_load",
            "ptrace",
            "bpf",
        ] {
            assert!(!calls.iter().any(|c| c == call), "{call} must be blocked");
        }
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        let rules = plain["syscalls"].as_array().expect("rules");
        assert!(
            rules
                .iter()
                .any(|r| r["names"][0] == "clone3" && r["errnoRet"] == 38)
        );
        let admin = runtime_default(&["CAP_SYS_ADMIN".to_owned(), "CAP_SYS_PTRACE".to_owned()]);
        let calls = allowed(&admin);
        for call in ["mount", "unshare", "clone", "clone3", "ptrace"] {
            assert!(
                calls.iter().any(|c| c == call),
                "{call} with its capability"
            );
        }
        let rules = admin["syscalls"].as_array().expect("rules");
        assert!(!rules.iter().any(|r| r["action"] == "SCMP_ACT_ERRNO"));
    }

    #[test]
    fn no_call_is_listed_twice_in_the_base_list() {
        let mut seen = std::collections::HashSet::new();
        for call in ALLOWED.iter().flat_map(|l| l.split_whitespace()) {
            assert!(seen.insert(call), "{call} twice");
            for (_, calls) in WITH_CAPABILITY {
                assert!(
                    !calls.split_whitespace().any(|c| c == call),
                    "{call} is in the base list"
                );
            }
        }
        assert!(seen.len() > 250, "{} calls", seen.len());
    }
}
