use super::*;

fn kv(k: &str, v: &str) -> cri::KeyValue {
    cri::KeyValue {
        key: k.into(),
        value: v.into(),
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

fn image() -> ImageDefaults {
    ImageDefaults {
        entrypoint: strings(&["/entry"]),
        cmd: strings(&["default-arg"]),
        env: strings(&["PATH=/image/bin", "A=image", "B=image"]),
        working_dir: "/work".into(),
        user: "www".into(),
        stop_signal: "SIGQUIT".into(),
    }
}

fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0::/:/bin/sh\nwww:x:33:44::/:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:www\n").expect("group");
    dir
}

fn sc(f: impl FnOnce(&mut cri::LinuxContainerSecurityContext)) -> cri::ContainerConfig {
    let mut s = cri::LinuxContainerSecurityContext::default();
    f(&mut s);
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(s),
        }),
        ..Default::default()
    }
}

fn build_with(
    config: &cri::ContainerConfig,
    mounts: &[GuestMount],
) -> Result<oci::Spec, SpecError> {
    let root = rootfs();
    let img = image();
    let sysctls = BTreeMap::from([("net.core.somaxconn".to_owned(), "1024".to_owned())]);
    build(&SpecInput {
        config,
        image: &img,
        host_rootfs: root.path(),
        guest_rootfs: "/run/hull/shared/c1/rootfs",
        mounts,
        hostname: "pod-a",
        pod_sysctls: &sysctls,
    })
}

#[test]
fn command_and_args_follow_kubernetes_rules() {
    let img = image();
    let cfg = |cmd: &[&str], args: &[&str]| cri::ContainerConfig {
        command: strings(cmd),
        args: strings(args),
        ..Default::default()
    };
    assert_eq!(
        process_args(&cfg(&[], &[]), &img),
        Ok(strings(&["/entry", "default-arg"]))
    );
    assert_eq!(
        process_args(&cfg(&[], &["x"]), &img),
        Ok(strings(&["/entry", "x"]))
    );
    assert_eq!(process_args(&cfg(&["sh"], &[]), &img), Ok(strings(&["sh"])));
    assert_eq!(
        process_args(&cfg(&["sh"], &["-c", "x"]), &img),
        Ok(strings(&["sh", "-c", "x"]))
    );
    let mut no_entry = img.clone();
    no_entry.entrypoint = vec![String::new()];
    assert_eq!(
        process_args(&cfg(&[], &[]), &no_entry),
        Ok(strings(&["default-arg"]))
    );
    assert_eq!(
        process_args(&cfg(&[], &[]), &ImageDefaults::default()),
        Err(SpecError::NoCommand)
    );
}

#[test]
fn env_merges_with_cri_winning() {
    let env = merge_env(
        &image().env,
        &[kv("B", "cri"), kv("C", "x=y"), kv("", "bad")],
        "h",
    );
    assert_eq!(
        env,
        strings(&["HOSTNAME=h", "PATH=/image/bin", "A=image", "B=cri", "C=x=y"])
    );
    let env = merge_env(&[], &[], "");
    assert!(env[0].starts_with("PATH=/usr/local/sbin"));
}

#[test]
fn spec_defaults_from_the_image() {
    let spec = build_with(&cri::ContainerConfig::default(), &[]).expect("spec");
    assert_eq!(spec.process.args, strings(&["/entry", "default-arg"]));
    assert_eq!(spec.process.cwd, "/work");
    assert_eq!((spec.process.user.uid, spec.process.user.gid), (33, 44));
    assert_eq!(spec.process.user.additional_gids, vec![50]);
    assert_eq!(spec.root.path, "/run/hull/shared/c1/rootfs");
    assert!(!spec.root.readonly);
    assert_eq!(spec.hostname.as_deref(), Some("pod-a"));
    assert_eq!(spec.linux.masked_paths.len(), DEFAULT_MASKED.len());
    assert_eq!(spec.linux.readonly_paths.len(), DEFAULT_READONLY.len());
    assert_eq!(
        spec.linux
            .sysctl
            .get("net.core.somaxconn")
            .map(String::as_str),
        Some("1024")
    );
    let caps = spec.process.capabilities.clone().expect("caps");
    assert_eq!(caps.bounding.len(), DEFAULT_CAPS.len());
    let kinds: Vec<&str> = spec
        .linux
        .namespaces
        .iter()
        .map(|n| n.kind.as_str())
        .collect();
    assert_eq!(kinds, ["mount", "cgroup"], "pod-shared pid/ipc by default");
    let json = serde_json::to_value(&spec.process).expect("json");
    assert_eq!(json["noNewPrivileges"], false);
    assert_eq!(json["user"]["additionalGids"], serde_json::json!([50]));
}

#[test]
fn users_groups_and_working_dir_from_cri() {
    let mut cfg = sc(|s| {
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.run_as_group = Some(cri::Int64Value { value: 2000 });
        s.supplemental_groups = vec![3000, 2000];
    });
    cfg.working_dir = "/tmp".into();
    let spec = build_with(&cfg, &[]).expect("spec");
    let u = &spec.process.user;
    assert_eq!(
        (u.uid, u.gid, u.additional_gids.clone()),
        (1000, 2000, vec![3000, 2000])
    );
    assert_eq!(spec.process.cwd, "/tmp");
    let spec = build_with(&sc(|s| s.run_as_username = "root".into()), &[]).expect("spec");
    assert_eq!((spec.process.user.uid, spec.process.user.gid), (0, 0));
    let err = build_with(&sc(|s| s.run_as_username = "ghost".into()), &[]);
    assert!(matches!(err, Err(SpecError::User(_))));
    let err = build_with(
        &sc(|s| s.run_as_user = Some(cri::Int64Value { value: -1 })),
        &[],
    );
    assert_eq!(err.err(), Some(SpecError::BadUid(-1)));
    // containerd's rule: a group needs a user (by id or by name).
    let group_only = build_with(
        &sc(|s| s.run_as_group = Some(cri::Int64Value { value: 1002 })),
        &[],
    );
    assert_eq!(group_only.err(), Some(SpecError::GroupWithoutUser));
    let spec = build_with(
        &sc(|s| {
            s.run_as_username = "www".into();
            s.run_as_group = Some(cri::Int64Value { value: 1002 });
        }),
        &[],
    )
    .expect("username and group");
    let u = &spec.process.user;
    assert_eq!(
        (u.uid, u.gid, u.additional_gids.clone()),
        (33, 1002, vec![50])
    );
}

#[test]
fn capabilities_add_drop_privileged() {
    let caps = |f: fn(&mut cri::LinuxContainerSecurityContext)| {
        let mut s = cri::LinuxContainerSecurityContext::default();
        f(&mut s);
        capabilities(&s).map(|c| c.bounding)
    };
    let c = caps(|s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: strings(&["NET_ADMIN", "CAP_SYS_TIME"]),
            drop_capabilities: strings(&["net_raw", "CAP_KILL"]),
            add_ambient_capabilities: vec![],
        })
    })
    .expect("caps");
    assert!(c.contains(&"CAP_NET_ADMIN".into()) && c.contains(&"CAP_SYS_TIME".into()));
    assert!(!c.contains(&"CAP_NET_RAW".into()) && !c.contains(&"CAP_KILL".into()));
    let c = caps(|s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: strings(&["CHOWN"]),
            drop_capabilities: strings(&["ALL"]),
            add_ambient_capabilities: vec![],
        })
    })
    .expect("caps");
    assert_eq!(c, strings(&["CAP_CHOWN"]));
    // Every capability this process' bounding set has (all but CAP_SYS_RESOURCE here).
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let mut bounding = current_caps(&status);
    bounding.sort();
    assert_eq!(caps(|s| s.privileged = true).expect("caps"), bounding);
    let bad = caps(|s| {
        s.capabilities = Some(cri::Capability {
            add_capabilities: strings(&["FLY"]),
            ..Default::default()
        })
    });
    assert_eq!(bad, Err(SpecError::BadCapability("FLY".into())));
}

#[test]
fn privileged_unmasks_and_readonly_rootfs_is_root_readonly() {
    let spec = build_with(&sc(|s| s.privileged = true), &[]).expect("spec");
    assert!(spec.linux.masked_paths.is_empty() && spec.linux.readonly_paths.is_empty());
    let sys = spec
        .mounts
        .iter()
        .find(|m| m.destination == "/sys")
        .expect("sys");
    assert!(sys.options.contains(&"rw".into()));
    let spec = build_with(
        &sc(|s| {
            s.readonly_rootfs = true;
            s.no_new_privs = true;
            s.masked_paths = strings(&["/proc/x"]);
            s.namespace_options = Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            });
        }),
        &[],
    )
    .expect("spec");
    assert!(spec.root.readonly && spec.process.no_new_privileges);
    assert_eq!(spec.root.path, "/run/hull/shared/c1/rootfs");
    assert!(
        spec.mounts.iter().all(|m| m.destination != "/"),
        "the agent remounts the root read-only after the mounts"
    );
    assert_eq!(spec.linux.masked_paths, strings(&["/proc/x"]));
    assert!(spec.linux.namespaces.iter().any(|n| n.kind == "pid"));
}

#[test]
fn cri_mounts_override_and_sort() {
    let mounts = [
        GuestMount {
            container_path: "/data/sub".into(),
            source: "/run/hull/shared/c1/mounts/1".into(),
            readonly: false,
            recursive_readonly: false,
            host_submounts: false,
            propagation: cri::MountPropagation::PropagationPrivate,
        },
        GuestMount {
            container_path: "/data".into(),
            source: "/run/hull/shared/c1/mounts/0".into(),
            readonly: true,
            recursive_readonly: false,
            host_submounts: false,
            propagation: cri::MountPropagation::PropagationHostToContainer,
        },
        GuestMount {
            container_path: "/dev/shm".into(),
            source: "/run/hull/shared/sandbox/shm".into(),
            readonly: false,
            recursive_readonly: false,
            host_submounts: false,
            propagation: cri::MountPropagation::PropagationBidirectional,
        },
        GuestMount {
            container_path: "/nrro".into(),
            source: "/run/hull/shared/c1/mounts/2".into(),
            readonly: true,
            recursive_readonly: false,
            host_submounts: true,
            propagation: cri::MountPropagation::PropagationPrivate,
        },
        GuestMount {
            container_path: "/rro".into(),
            source: "/run/hull/shared/c1/mounts/3".into(),
            readonly: true,
            recursive_readonly: true,
            host_submounts: true,
            propagation: cri::MountPropagation::PropagationPrivate,
        },
    ];
    let spec = build_with(&cri::ContainerConfig::default(), &mounts).expect("spec");
    let dests: Vec<&str> = spec.mounts.iter().map(|m| m.destination.as_str()).collect();
    let pos = |d: &str| dests.iter().position(|x| *x == d).expect(d);
    assert!(pos("/data") < pos("/data/sub"));
    assert_eq!(dests.iter().filter(|d| **d == "/dev/shm").count(), 1);
    let shm = &spec.mounts[pos("/dev/shm")];
    assert_eq!(shm.options, strings(&["rbind", "rshared", "rw"]));
    assert_eq!(
        spec.mounts[pos("/data")].options,
        strings(&["rbind", "rslave", "ro"])
    );
    // Read-only over host submounts: non-recursive is the host's job (a guest read-only
    // bind would cover the submounts too), recursive is both sides' (`rro`: the agent's
    // bind is read-only all the way down, which a host pod's only bind must be).
    assert_eq!(
        spec.mounts[pos("/nrro")].options,
        strings(&["rbind", "rprivate", "rw"])
    );
    assert_eq!(
        spec.mounts[pos("/rro")].options,
        strings(&["rbind", "rprivate", "ro", "rro"])
    );
    let bad = [GuestMount {
        container_path: "rel".into(),
        ..mounts[0].clone()
    }];
    assert!(matches!(
        build_with(&cri::ContainerConfig::default(), &bad),
        Err(SpecError::BadPath(_))
    ));
}

#[test]
fn resources_map_to_cgroup_limits() {
    let r = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 15 << 20,
        cpuset_cpus: "0".into(),
        unified: [("pids.max".to_owned(), "64".to_owned())].into(),
        ..Default::default()
    };
    let o = resources(&r);
    let cpu = o.cpu.expect("cpu");
    assert_eq!(
        (cpu.shares, cpu.quota, cpu.period),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(cpu.cpus.as_deref(), Some("0"));
    assert_eq!(o.memory.and_then(|m| m.limit), Some(15 << 20));
    assert_eq!(o.pids.map(|p| p.limit), Some(64));
    let empty = resources(&cri::LinuxContainerResources::default());
    assert!(empty.cpu.is_none() && empty.memory.is_none() && empty.pids.is_none());
}

#[test]
fn seccomp_localhost_profile_is_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("p.json");
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).expect("write");
    let local = |path: String| {
        sc(move |s| {
            s.seccomp = Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: path,
            })
        })
    };
    let spec = build_with(&local(profile.display().to_string()), &[]).expect("spec");
    assert_eq!(
        spec.linux.seccomp.expect("seccomp")["defaultAction"],
        "SCMP_ACT_ALLOW"
    );
    let missing = build_with(&local("/nonexistent/p.json".into()), &[]);
    assert!(matches!(missing, Err(SpecError::Seccomp { .. })));
    let spec = build_with(
        &sc(|s| {
            s.seccomp = Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            })
        }),
        &[],
    )
    .expect("spec");
    let default = spec.linux.seccomp.expect("RuntimeDefault is a profile");
    assert_eq!(default["defaultAction"], "SCMP_ACT_ERRNO");
    let unconfined = |p: Option<cri::SecurityProfile>, privileged: bool| {
        build_with(
            &sc(move |s| {
                s.seccomp = p;
                s.privileged = privileged;
            }),
            &[],
        )
        .expect("spec")
        .linux
        .seccomp
        .is_none()
    };
    let runtime_default = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    };
    assert!(unconfined(None, false), "no profile is unconfined");
    assert!(unconfined(
        Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        }),
        false
    ));
    assert!(
        unconfined(Some(runtime_default), true),
        "privileged ignores it"
    );
    std::fs::write(&profile, r#"{"syscalls":[]}"#).expect("write");
    let not_a_profile = build_with(&local(profile.display().to_string()), &[]);
    assert!(matches!(not_a_profile, Err(SpecError::Seccomp { .. })));
}

#[test]
fn runtime_default_follows_the_capabilities() {
    let with_caps = |add: &[&str]| {
        let add = strings(add);
        build_with(
            &sc(move |s| {
                s.seccomp = Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                });
                s.capabilities = Some(cri::Capability {
                    add_capabilities: add,
                    ..Default::default()
                });
            }),
            &[],
        )
        .expect("spec")
        .linux
        .seccomp
        .expect("profile")
        .to_string()
    };
    assert!(!with_caps(&[]).contains("\"unshare\""));
    assert!(with_caps(&["SYS_ADMIN"]).contains("\"unshare\""));
    #[allow(deprecated)]
    let legacy = sc(|s| s.seccomp_profile_path = "runtime/default".into());
    assert_eq!(
        seccomp::seccomp_choice(&legacy.linux.expect("linux").security_context.expect("sc")),
        seccomp::SeccompChoice::RuntimeDefault
    );
}

#[test]
fn the_agent_accepts_the_json() {
    // The agent's parser is strict about paths, env and namespaces: check the shape here.
    let spec = build_with(&cri::ContainerConfig::default(), &[]).expect("spec");
    let json = serde_json::to_value(&spec).expect("json");
    assert!(json["process"]["args"].is_array());
    assert!(
        json["process"]["env"]
            .as_array()
            .expect("env")
            .iter()
            .all(|e| e.as_str().is_some_and(|e| e.contains('=')))
    );
    assert!(
        json["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .all(|n| n["type"] != "user")
    );
    assert!(json["mounts"].as_array().expect("mounts").iter().all(|m| {
        m["destination"]
            .as_str()
            .is_some_and(|d| d.starts_with('/'))
    }));
}

#[test]
fn image_config_json_is_read() {
    let json = serde_json::json!({"architecture":"amd64","config":{
        "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","X=1"],
        "WorkingDir":"/srv","User":"1000:1000","StopSignal":"SIGUSR1"}});
    let d = ImageDefaults::from_image_config(&json);
    assert_eq!(d.entrypoint, strings(&["/bin/sh", "-c"]));
    assert_eq!(d.cmd, strings(&["echo hi"]));
    assert_eq!(d.env, strings(&["PATH=/bin", "X=1"]));
    assert_eq!(
        (
            d.working_dir.as_str(),
            d.user.as_str(),
            d.stop_signal.as_str()
        ),
        ("/srv", "1000:1000", "SIGUSR1")
    );
    assert_eq!(
        ImageDefaults::from_image_config(&serde_json::json!({})),
        ImageDefaults::default()
    );
}

#[test]
fn stop_signals() {
    assert_eq!(stop_signal(""), 15);
    assert_eq!(stop_signal("SIGQUIT"), 3);
    assert_eq!(stop_signal("quit"), 3);
    assert_eq!(stop_signal("9"), 9);
    assert_eq!(stop_signal("SIGNOPE"), 15);
    assert_eq!(stop_signal("999"), 15);
}

#[test]
fn device_rules_deny_all_but_the_standard_devices_unless_privileged() {
    let spec = build_with(&sc(|_| {}), &[]).expect("spec");
    let devices = spec.linux.resources.expect("resources").devices;
    assert_eq!(
        (devices[0].allow, devices[0].kind),
        (false, None),
        "deny all first"
    );
    assert!(
        devices
            .iter()
            .any(|d| d.allow && d.kind == Some("c") && d.major == Some(1) && d.minor == Some(3))
    );
    assert!(!devices.iter().any(|d| d.allow && d.kind.is_none()));
    let privileged = build_with(&sc(|s| s.privileged = true), &[]).expect("spec");
    let devices = privileged.linux.resources.expect("resources").devices;
    assert_eq!(devices.len(), 1);
    assert!(devices[0].allow && devices[0].kind.is_none() && devices[0].access == "rwm");
}

#[test]
fn privileged_gets_the_caps_of_the_bounding_set() {
    let all = current_caps("Name:\thulld\nCapBnd:\t000001ffffffffff\n");
    assert_eq!(all.len(), ALL_CAPS.len());
    let dropped = current_caps("CapBnd:\t000001fffeffffff\n");
    assert!(
        !dropped.iter().any(|c| c == "CAP_SYS_RESOURCE"),
        "{dropped:?}"
    );
    assert_eq!(dropped.len(), ALL_CAPS.len() - 1);
    assert_eq!(current_caps("garbage").len(), ALL_CAPS.len());
}
