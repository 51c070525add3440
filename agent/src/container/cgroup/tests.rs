use super::*;

const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
28 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
30 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset,clone_children
31 40 0:27 /kubepods /var/lib/x rw - cgroup cgroup rw,memory
32 25 0:27 / /mnt/memory-again rw - cgroup cgroup rw,memory
";

#[test]
fn finds_v1_and_unified_hierarchies_in_mountinfo() {
    let p = Placement::from_mountinfo(HYBRID);
    assert_eq!(
        p.unified.as_deref(),
        Some(Path::new("/sys/fs/cgroup/unified"))
    );
    let controllers: Vec<Vec<String>> = p.v1.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(
        controllers,
        [
            vec!["name=systemd".to_owned()],
            vec!["cpu".into(), "cpuacct".into()],
            vec!["memory".into()],
            vec!["cpuset".into()],
        ],
        "a bind of a sub-cgroup and a second mount of a hierarchy are not hierarchies"
    );
    let v2 = Placement::from_mountinfo(
        "22 1 0:21 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
    );
    assert!(v2.v1.is_empty());
    assert_eq!(v2.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));
}

#[test]
fn a_container_gets_a_directory_in_every_hierarchy() {
    let mut p = Placement::from_mountinfo(HYBRID);
    p.parent = "/kubepods/burstable/pod-1/".into();
    let cg = p.cgroup_of("c1");
    assert!(cg.is_v1());
    assert_eq!(
        cg.v1_dir("cpuacct"),
        Some(Path::new(
            "/sys/fs/cgroup/cpu,cpuacct/kubepods/burstable/pod-1/c1"
        ))
    );
    assert_eq!(
        cg.unified.as_deref(),
        Some(Path::new(
            "/sys/fs/cgroup/unified/kubepods/burstable/pod-1/c1"
        ))
    );
    assert_eq!(cg.dirs().count(), 5);
    let guest = Placement::guest().cgroup_of("c1");
    assert!(!guest.is_v1());
    assert_eq!(
        guest.unified.as_deref(),
        Some(Path::new("/sys/fs/cgroup/hull/c1"))
    );
}

/// A fake hierarchy tree in a temp dir: the directories are plain ones, the limit files
/// plain files, so what create writes can be read back.
fn fake(dir: &Path, v1: &[&str], parent: &str) -> Placement {
    let v1 = v1
        .iter()
        .map(|c| {
            let mount = dir.join(c);
            std::fs::create_dir_all(&mount).expect("mkdir");
            (vec![(*c).to_owned()], mount)
        })
        .collect();
    Placement {
        unified: Some(dir.join("unified")),
        v1,
        parent: parent.into(),
    }
}

#[test]
fn create_makes_the_levels_and_writes_v1_limits_and_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("unified")).expect("mkdir");
    let p = fake(
        dir.path(),
        &["cpu", "cpuset", "memory", "devices", "pids"],
        "/hull/pod1",
    );
    std::fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").expect("write");
    std::fs::write(dir.path().join("cpuset/cpuset.mems"), "0\n").expect("write");
    let r: Resources = serde_json::from_str(
        r#"{"memory":{"limit":67108864},"cpu":{"shares":512,"quota":20000,"period":100000},
            "pids":{"limit":50},"hugepageLimits":[{"pageSize":"2MB","limit":0}],
            "devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#,
    )
    .expect("resources");
    let cg = p.create("c1", Some(&r)).expect("create");
    let read = |c: &str, f: &str| {
        std::fs::read_to_string(cg.v1_dir(c).expect("dir").join(f)).expect("read")
    };
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("pids", "pids.max"), "50");
    assert_eq!(
        read("devices", "devices.allow"),
        "c 1:3 rwm",
        "the last rule"
    );
    assert_eq!(read("devices", "devices.deny"), "a");
    // The new cpuset levels took their parent's cpus and mems.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cpuset/hull/cpuset.cpus")).expect("read"),
        "0-1"
    );
    assert_eq!(read("cpuset", "cpuset.mems"), "0");
    assert!(dir.path().join("unified/hull/pod1/c1").is_dir());
    let unified = LinuxResources {
        unified: [("memory.high".to_owned(), "1M".to_owned())].into(),
        ..Default::default()
    };
    assert!(matches!(
        update(&cg, &unified),
        Err(CgroupError::Invalid(_))
    ));
}

#[test]
fn a_missing_v1_controller_is_an_error_except_optional_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("unified")).expect("mkdir");
    let p = fake(dir.path(), &["memory"], "/hull/pod2");
    let cg = p.create("c1", None).expect("create");
    let pids = LinuxResources {
        pids_limit: 10,
        ..Default::default()
    };
    assert!(matches!(
        update(&cg, &pids),
        Err(CgroupError::NoController("pids"))
    ));
    let huge = LinuxResources {
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit_bytes: 0,
        }],
        ..Default::default()
    };
    update(&cg, &huge).expect("no hugetlb hierarchy: skipped");
}

/// On this machine's real cgroups (v1, v2 or hybrid): a container cgroup is made in every
/// hierarchy, a process joins it, and destroy kills the process and removes every
/// directory.
#[tokio::test]
async fn real_cgroups_take_a_process_and_go_away_with_it() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates cgroups: run it as root (CI does)"
    );
    let parent = format!("/hull-agent-test-{}", std::process::id());
    let p = Placement::host(parent).expect("placement");
    assert!(
        p.unified.is_some() || !p.v1.is_empty(),
        "no cgroup hierarchy mounted"
    );
    let r: Resources =
        serde_json::from_str(r#"{"memory":{"limit":67108864},"pids":{"limit":64}}"#).expect("r");
    /// Removes what the test made even when it fails half-way.
    struct Cleanup(Placement, Cgroup);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in self
                .1
                .dirs()
                .map(Path::to_owned)
                .chain(self.0.parent_dirs())
            {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let cg = p.create("c1", Some(&r)).expect("create");
    let _cleanup = Cleanup(p.clone(), cg.clone());
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    cg.join(child.id()).expect("join");
    let mine = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).expect("cgroup");
    assert!(mine.contains("/hull-agent-test-"), "{mine}");
    let s = stats(&cg);
    assert_eq!((s.pids_current, s.memory_max_bytes), (1, 64 << 20), "{s:?}");
    destroy(&cg).await.expect("destroy");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed by destroy: {status}");
    assert!(cg.dirs().all(|d| !d.exists()));
    for dir in p.parent_dirs() {
        std::fs::remove_dir(&dir).expect("parent empty");
    }
}
