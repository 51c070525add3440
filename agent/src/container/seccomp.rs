//! OCI `linux.seccomp` profiles compiled to BPF with rust-vmm's `seccompiler`.
//!
//! seccompiler builds filters with one "match" and one "mismatch" action, while an OCI
//! profile gives each syscall group its own action. So a profile becomes a stack of
//! filters, which the kernel evaluates together, taking the most restrictive verdict: one
//! filter per non-default action (`those syscalls → action, else allow`), plus, when the
//! default is not "allow", one filter `allowed syscalls → allow, else default`. Syscall
//! names unknown on this kernel are skipped, as libseccomp does. Only x86_64 is supported.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

include!(concat!(env!("OUT_DIR"), "/syscalls.rs"));

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    #[serde(default)]
    pub names: Vec<String>,
    pub action: String,
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u8,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

fn syscall_nr(name: &str) -> Option<i64> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

fn action(name: &str, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" => SeccompAction::Trace(errno.unwrap_or(0)),
        other => return Err(format!("seccomp action {other:?} is not supported")),
    })
}

fn condition(arg: &Arg) -> Result<SeccompCondition, String> {
    let (op, value) = match arg.op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.value),
        // OCI: value is the mask, valueTwo the expected masked value.
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
        other => return Err(format!("seccomp operator {other:?} is not supported")),
    };
    SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("seccomp condition on arg {}: {e}", arg.index))
}

/// Per syscall: `None` = unconditional, else any of the rules (each an AND of conditions).
type Group = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rule(group: &mut Group, rule: &SyscallRule) -> Result<(), String> {
    let conds = rule
        .args
        .iter()
        .map(condition)
        .collect::<Result<Vec<_>, _>>()?;
    for nr in rule.names.iter().filter_map(|n| syscall_nr(n)) {
        let entry = group.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), conds.is_empty()) {
            (_, true) => *entry = None,
            (Some(rules), false) => {
                rules.push(SeccompRule::new(conds.clone()).map_err(|e| e.to_string())?)
            }
            (None, false) => {}
        }
    }
    Ok(())
}

fn program(
    group: Group,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let rules = group
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Compiles a profile into the filters to install (see the module doc).
///
/// When the kernel runs several filters, the most restrictive action wins and, among equal
/// actions, the most recently installed filter's data (the errno) wins. So the default
/// filter, installed last, lets through every syscall some other rule matches (with that
/// rule's conditions): an `errnoRet: 38` rule then gives ENOSYS, not the default's errno.
pub fn compile(profile: &Seccomp) -> Result<Vec<BpfProgram>, String> {
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut groups: Vec<(SeccompAction, Group)> = Vec::new();
    let mut not_default = Group::new();
    for rule in &profile.syscalls {
        let act = action(&rule.action, rule.errno_ret)?;
        if act == default {
            continue;
        }
        let at = match groups.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act, Group::new()));
                groups.len() - 1
            }
        };
        add_rule(&mut groups[at].1, rule)?;
        add_rule(&mut not_default, rule)?;
    }
    let mut programs = Vec::new();
    for (act, group) in groups {
        if act != SeccompAction::Allow {
            programs.push(program(group, SeccompAction::Allow, act)?);
        }
    }
    if default != SeccompAction::Allow {
        programs.push(program(not_default, default, SeccompAction::Allow)?);
    }
    Ok(programs)
}

/// Installs the filters on the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
pub fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| format!("install seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> Seccomp {
        serde_json::from_str(json).expect("profile")
    }

    #[test]
    fn table_and_compile() {
        assert_eq!(syscall_nr("read"), Some(0));
        assert_eq!(syscall_nr("mkdirat"), Some(258));
        assert_eq!(syscall_nr("no_such_call"), None);
        let deny_some = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat","not_a_syscall"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
            {"names":["personality"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":8,"op":"SCMP_CMP_NE"}]}]}"#,
        );
        assert_eq!(compile(&deny_some).expect("compile").len(), 1);
        let allow_list = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
            {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["ptrace"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        );
        assert_eq!(compile(&allow_list).expect("compile").len(), 2);
    }

    /// Runs `f` in a forked child with the filters installed; returns its exit code.
    fn in_child(filters: &[BpfProgram], f: fn() -> i32) -> i32 {
        // SAFETY: the child only calls async-signal-safe code (prctl, seccomp, raw
        // syscalls, _exit) before exiting.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = nix::sys::prctl::set_no_new_privs()
                    .ok()
                    .and_then(|()| install(filters).ok())
                    .map_or(100, |()| f());
                // SAFETY: _exit never returns and skips the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("wait") {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn errno_rules_and_the_default_stack_as_written() {
        // An allow-list with EPERM by default and ENOSYS for clone3 (the default profile's
        // shape): clone3 must give ENOSYS, unlisted calls EPERM, listed ones run.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,"syscalls":[
            {"names":["exit","exit_group","getpid","prctl","seccomp"],"action":"SCMP_ACT_ALLOW"},
            {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        );
        let filters = compile(&p).expect("compile");
        let code = in_child(&filters, || {
            let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            // SAFETY: raw syscalls with invalid/null arguments; they only return errors.
            let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
            let e1 = errno();
            // SAFETY: as above; unshare(0) changes nothing even when allowed.
            let unshare = unsafe { libc::syscall(libc::SYS_unshare, 0usize) };
            let e2 = errno();
            // SAFETY: getpid has no arguments.
            let pid = unsafe { libc::syscall(libc::SYS_getpid) };
            match (clone3, e1, unshare, e2, pid > 0) {
                (-1, libc::ENOSYS, -1, libc::EPERM, true) => 0,
                (-1, libc::EPERM, ..) => 1,
                _ => 2,
            }
        });
        assert_eq!(
            code, 0,
            "1: clone3 got the default's EPERM; 2: other mismatch"
        );
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        assert!(compile(&profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#)).is_err());
        let bad_op = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_WAT"}]}]}"#;
        assert!(compile(&profile(bad_op)).is_err());
        let bad_index = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#;
        assert!(compile(&profile(bad_index)).is_err());
    }
}
