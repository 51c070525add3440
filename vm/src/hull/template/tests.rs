use super::*;
use crate::hypervisor::NetConfig as PodNic;

struct Files {
    dir: tempfile::TempDir,
    config: VmConfig,
    vmm: PathBuf,
}

fn setup() -> Files {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, name).expect("write");
        p
    };
    let (vmm, kernel, initramfs) = (f("hull-vmm"), f("vmlinux"), f("initramfs.img"));
    let config = VmConfig {
        id: "pod-1".into(),
        vcpus: 1,
        memory_mib: 256,
        kernel,
        initramfs,
        cmdline: String::new(),
        run_dir: dir.path().join("sandboxes/pod-1"),
        netns: Some("/run/netns/hull-pod-1".into()),
        net: Some(PodNic {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        }),
        shared_dir: Some(dir.path().join("share")),
        host: None,
    };
    Files { dir, config, vmm }
}

#[test]
fn the_key_covers_what_a_snapshot_depends_on_and_nothing_pod_specific() {
    let s = setup();
    let key = |c: &VmConfig| template_key(c, &s.vmm).expect("key");
    let base = key(&s.config);
    assert_eq!(base.len(), 16);
    assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(base, key(&s.config), "stable");

    // Another pod of the same kind shares the template.
    let mut other = s.config.clone();
    other.id = "pod-2".into();
    other.run_dir = s.dir.path().join("sandboxes/pod-2");
    other.netns = None;
    other.net = Some(PodNic {
        tap: "tap9".into(),
        mac: "02:00:00:00:00:09".into(),
        mtu: 9000,
    });
    other.shared_dir = Some("/elsewhere".into());
    assert_eq!(key(&other), base);

    type Change = Box<dyn Fn(&mut VmConfig)>;
    let changed: Vec<Change> = vec![
        Box::new(|c| c.vcpus = 2),
        Box::new(|c| c.memory_mib = 512),
        Box::new(|c| c.cmdline = "RUST_LOG=debug".into()),
        Box::new(|c| c.net = None),
        Box::new(|c| c.shared_dir = None),
    ];
    for change in changed {
        let mut c = s.config.clone();
        change(&mut c);
        assert_ne!(key(&c), base, "{c:?}");
    }
    // A rebuilt initramfs (other size) or another hull-vmm makes a new template.
    std::fs::write(&s.config.initramfs, "a new initramfs").expect("rewrite");
    assert_ne!(key(&s.config), base);
    let new = key(&s.config);
    assert_ne!(template_key(&s.config, &s.config.kernel).expect("key"), new);
    // A missing file has no key (the pod then boots cold).
    let mut gone = s.config.clone();
    gone.kernel = s.dir.path().join("missing");
    assert!(template_key(&gone, &s.vmm).is_err());
}

#[test]
fn templates_live_next_to_the_run_dirs() {
    let run_dir = Path::new("/run/hull/sandboxes/pod-1");
    assert_eq!(
        templates_dir(run_dir),
        Path::new("/run/hull/sandboxes/.templates")
    );
    let p = TemplatePaths::new(run_dir, "0123456789abcdef");
    assert_eq!(
        p.dir,
        Path::new("/run/hull/sandboxes/.templates/0123456789abcdef")
    );
    assert_eq!(p.build.parent(), p.dir.parent());
    let build = p.build.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(build.starts_with(".build-0123456789abcdef-"), "{build}");
    assert!(p.snapshot.starts_with(&p.build) && p.share.starts_with(&p.build));
    assert_eq!(
        p.run_files().agent_socket,
        p.build.join("agent.vsock"),
        "the template VM's sockets are in its build dir"
    );
    // Unix socket paths must fit sockaddr_un (108 bytes) under /run/hull/sandboxes.
    assert!(p.run_files().agent_socket.as_os_str().len() < 100);
}

#[test]
fn a_template_is_complete_only_with_its_marker_and_snapshot() {
    let s = setup();
    let p = TemplatePaths::new(&s.config.run_dir, "k");
    assert!(!p.is_complete());
    std::fs::create_dir_all(&p.dir).expect("mkdir");
    for f in SNAPSHOT_FILES {
        std::fs::write(p.dir.join(f), "x").expect("write");
    }
    assert!(!p.is_complete(), "no marker yet");
    std::fs::write(p.dir.join(COMPLETE_MARKER), "k\n").expect("marker");
    assert!(p.is_complete());
    std::fs::remove_file(p.dir.join("memory")).expect("rm");
    assert!(!p.is_complete());
}

#[test]
fn template_and_restore_configs_have_one_device_set_and_their_own_backends() {
    let s = setup();
    let p = TemplatePaths::new(&s.config.run_dir, "k1");
    let t = template_vmm_config(&s.config, &p);
    let pod_files = RunFiles::new(&s.config.run_dir);
    let r = vmm_config(&s.config, &pod_files);
    // What the snapshot fixes is the same.
    assert_eq!((t.vcpus, t.memory_mib), (r.vcpus, r.memory_mib));
    assert_eq!(
        (&t.kernel, &t.initramfs, &t.cmdline),
        (&r.kernel, &r.initramfs, &r.cmdline)
    );
    assert_eq!(t.rng, r.rng);
    assert_eq!(t.blk, r.blk);
    let (tv, rv) = (
        t.vsock.as_ref().expect("vsock"),
        r.vsock.as_ref().expect("vsock"),
    );
    assert_eq!(tv.guest_cid, rv.guest_cid);
    assert_eq!((t.net.is_some(), t.fs.is_some()), (true, true));
    assert_eq!(t.fs.as_ref().map(|f| &f.tag), r.fs.as_ref().map(|f| &f.tag));
    // The backends are the template's own, in its build dir; no netns, no tap.
    assert_eq!(t.id, "template-k1");
    assert_eq!(tv.uds_path, p.build.join("agent.vsock"));
    assert_eq!(
        t.api_socket.as_deref(),
        Some(p.build.join("vmm.sock").as_path())
    );
    assert_eq!(
        t.console_log.as_deref(),
        Some(p.build.join("console.log").as_path())
    );
    assert_eq!(
        t.fs.as_ref().map(|f| f.socket.clone()),
        Some(p.build.join("vhost-fs.sock"))
    );
    let net = t.net.as_ref().expect("net");
    assert_eq!(net.mac.as_deref(), Some(TEMPLATE_MAC));
    let mut tapless = net.clone();
    untap(&mut tapless);
    assert_eq!(net, &tapless, "the template NIC has no tap");
    // The restore config is the pod's: its sockets, tap and MAC.
    assert_eq!(rv.uds_path, pod_files.agent_socket);
    assert_eq!(
        r.net.as_ref().and_then(|n| n.mac.as_deref()),
        Some("02:00:00:00:00:01")
    );
    assert_eq!(
        r.fs.as_ref().map(|f| f.socket.clone()),
        Some(pod_files.fs_backend)
    );

    // Optional devices stay out of both.
    let mut bare = s.config.clone();
    bare.net = None;
    bare.shared_dir = None;
    let t = template_vmm_config(&bare, &p);
    assert!(t.net.is_none() && t.fs.is_none());

    let args = restore_args(Path::new("/r/hull-vmm.json"), &p.dir);
    let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
    assert_eq!(args[..3], ["--config", "/r/hull-vmm.json", "--restore"]);
    assert_eq!(Path::new(args[3]), p.dir);
}
