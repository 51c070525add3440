//! Property tests of the validation (the fuzz target of issue 15): random requests built
//! from valid ones with hostile pieces spliced in. A fixed case count keeps the time
//! bounded in `cargo test` (about two seconds); `PROPTEST_CASES` raises it for a longer
//! run. Properties: validation never panics; its messages stay short; and whatever it
//! accepts, the later checks accept too (the guest agent's validators, CNI_ARGS, the
//! log path join), so nothing it lets through fails after a VM was booted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use hull_cri_api as cri;
use proptest::prelude::*;

use super::tests::{container, pod, run};
use super::*;

/// Bits of strings that have broken parsers before.
const PIECES: &[&str] = &[
    "",
    "a",
    "web",
    "0",
    "-",
    ".",
    "..",
    "/",
    ";",
    "=",
    " ",
    "\t",
    "\n",
    "\r",
    "\0",
    "%",
    ":",
    "ndots:5",
    "10.0.0.1",
    "::1",
    "net",
    "kernel",
    "shm",
    "ipv4",
    "eth0.100",
    "*",
    "é",
    "\u{202e}",
    "999999999999",
    "-1",
    "CAP_",
    "ALL",
    "memory.high",
    "2MB",
    "0-3",
    "../",
    "/..",
    "//",
];

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(PIECES).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => (1usize..400).prop_map(|n| "x".repeat(n)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(fragment(), 0..6).prop_map(|v| v.concat())
}

fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -2i64..3,
        Just(1000),
        Just(65_536),
        Just(i64::MIN),
        Just(1 << 50),
    ]
}

/// A valid pod with one field replaced by something random.
fn pod_strategy() -> impl Strategy<Value = cri::PodSandboxConfig> {
    (0usize..14, text(), text(), number()).prop_map(|(which, s, t, n)| {
        let mut c = pod();
        let m = c.metadata.as_mut().unwrap();
        let dns = c.dns_config.as_mut().unwrap();
        let linux = c.linux.as_mut().unwrap();
        let res = linux.resources.as_mut().unwrap();
        match which {
            0 => m.name = s,
            1 => m.namespace = s,
            2 => m.uid = s,
            3 => c.hostname = s,
            4 => dns.servers.push(s),
            5 => dns.searches.push(s),
            6 => dns.options.push(s),
            7 => {
                linux.sysctls.insert(s, t);
            }
            8 => c.port_mappings[0].container_port = n as i32,
            9 => c.port_mappings[0].host_ip = s,
            10 => c.log_directory = s,
            11 => res.memory_limit_in_bytes = n,
            12 => res.cpu_quota = n,
            _ => {
                c.labels.insert(s, t);
            }
        }
        c
    })
}

fn container_strategy() -> impl Strategy<Value = cri::CreateContainerRequest> {
    (0usize..12, text(), text(), number()).prop_map(|(which, s, t, n)| {
        let mut r = container();
        let c = r.config.as_mut().unwrap();
        let linux = c.linux.as_mut().unwrap();
        let res = linux.resources.as_mut().unwrap();
        match which {
            0 => c.log_path = s,
            1 => c.working_dir = s,
            2 => c.mounts[0].container_path = s,
            3 => c.mounts[0].host_path = s,
            4 => c.envs.push(cri::KeyValue { key: s, value: t }),
            5 => c.args.push(s),
            6 => res.cpuset_cpus = s,
            7 => {
                res.unified.insert(s, t);
            }
            8 => res.oom_score_adj = n,
            9 => res.hugepage_limits[0].page_size = s,
            10 => c.metadata.as_mut().unwrap().name = s,
            _ => {
                let caps = linux.security_context.as_mut().unwrap();
                caps.capabilities.as_mut().unwrap().add_capabilities.push(s);
            }
        }
        r
    })
}

/// What the guest agent and hull-network would say about an accepted pod.
fn later_checks_accept(c: &cri::PodSandboxConfig) {
    use hull_agent_api::validate as agent;
    let m = c.metadata.as_ref().unwrap();
    let pod_ref = hull_network::cni::PodRef {
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        uid: m.uid.clone(),
    };
    hull_network::cni::cni_args(&pod_ref, "0123").expect("CNI_ARGS");
    if !c.hostname.is_empty() {
        agent::hostname(&c.hostname).expect("agent hostname");
    }
    let dns = c.dns_config.as_ref().unwrap();
    for s in &dns.servers {
        s.parse::<std::net::IpAddr>().expect("server");
    }
    for s in dns.searches.iter().chain(&dns.options) {
        assert!(!s.is_empty() && !s.contains(char::is_whitespace), "{s:?}");
    }
    let sysctls: &HashMap<String, String> = &c.linux.as_ref().unwrap().sysctls;
    for (k, v) in sysctls {
        let path = agent::sysctl_key(k).expect("agent sysctl");
        assert!(!path.contains("/../") && !path.ends_with("/.."), "{path}");
        assert!(!v.contains('\n'));
    }
    assert!(c.log_directory.is_empty() || c.log_directory.starts_with('/'));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn pods(config in pod_strategy()) {
        match run_pod_sandbox(&run(config.clone())) {
            Ok(()) => later_checks_accept(&config),
            Err(e) => {
                let msg = CriError::from(e.clone()).to_string();
                prop_assert!(msg.len() < 1024, "{} bytes: {}", msg.len(), e.field);
                prop_assert!(e.field.starts_with("config"));
            }
        }
    }

    #[test]
    fn containers(req in container_strategy()) {
        match create_container(&req) {
            Ok(()) => {
                let c = req.config.as_ref().unwrap();
                if !c.log_path.is_empty() {
                    let rel = log_path("config.log_path", &c.log_path).expect("same answer");
                    prop_assert!(rel.is_relative());
                    prop_assert!(rel.components().all(|p| matches!(p, std::path::Component::Normal(_))));
                }
                prop_assert!(c.working_dir.is_empty() || c.working_dir.starts_with('/'));
                for kv in &c.envs {
                    prop_assert!(!kv.key.is_empty() && !kv.key.contains(['=', '\0']));
                }
                let res = c.linux.as_ref().unwrap().resources.as_ref().unwrap();
                for f in res.unified.keys() {
                    prop_assert!(!f.contains('/'));
                }
            }
            Err(e) => {
                let msg = CriError::from(e.clone()).to_string();
                prop_assert!(msg.len() < 1024, "{} bytes: {}", msg.len(), e.field);
            }
        }
    }
}
