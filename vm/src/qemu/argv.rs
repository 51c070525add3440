//! Command lines of QEMU microvm and its vhost-user helpers, built from a [`VmConfig`]
//! (Kata's `cmdline_generator.rs` idea: pure functions, no processes, unit-tested).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::hypervisor::VmConfig;
use crate::procvm::{Helper, Spawn};

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where the host can boot stock guests (/dev/kvm and VT-x/AMD-V), TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

/// TSC frequency given to the guest under TCG: without it the kernel's early TSC
/// calibration hangs about half the boots.
pub const TCG_TSC_KHZ: u32 = 2_100_000;

/// TCG's translated-code buffer, MiB (`-accel tcg,tb-size=`). QEMU's own default is 1 GiB,
/// filled as the guest runs code it has not translated yet and flushed only when full: an
/// idle pod's QEMU held ~35 MiB of it and ~60 MiB more after serving three execs. 16 MiB
/// cost no measurable CPU on a pod's boot and execs (test/bench/README.md, issue 20).
pub const TCG_TB_SIZE_MIB: u32 = 16;

/// How a TCG guest runs: its translation buffer and the host TSC rate it inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcg {
    /// `-accel tcg,tb-size=` in MiB ([`TCG_TB_SIZE_MIB`]).
    pub tb_size_mib: u32,
    /// The host's TSC rate ([`super::tsc::host_tsc_khz`]): the guest keeps time by its TSC
    /// and idles tickless. `None`: [`TCG_TSC_KHZ`] for the early calibration only.
    pub host_tsc_khz: Option<u32>,
}

/// The virtio-fs tag the agent mounts.
pub const SHARE_TAG: &str = "hullshare";

/// Files a VM's processes create in its run dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    /// Hybrid-vsock socket for host clients (vhost-device-vsock `--uds-path`).
    pub agent_socket: PathBuf,
    /// vhost-user socket between QEMU and vhost-device-vsock.
    pub vsock_backend: PathBuf,
    /// vhost-user socket between QEMU and virtiofsd.
    pub fs_backend: PathBuf,
    /// The pid file virtiofsd itself writes next to its socket.
    pub fs_backend_pid: PathBuf,
    /// QEMU's serial port, a socket it listens on; hulld copies it into `console_log`
    /// (capped, see [`super::console`]).
    pub console_socket: PathBuf,
    pub console_log: PathBuf,
    /// The empty dir QEMU chroots into once the VM is set up (`-chroot`).
    pub jail_root: PathBuf,
    /// QEMU's own stdout/stderr (kept after stop: it says why a VM failed).
    pub qemu_log: PathBuf,
    pub qemu_pid: PathBuf,
    pub vsock_pid: PathBuf,
    pub virtiofsd_pid: PathBuf,
    pub vsock_log: PathBuf,
    pub virtiofsd_log: PathBuf,
}

impl RunFiles {
    pub fn new(run_dir: &Path) -> Self {
        let f = |name: &str| run_dir.join(name);
        Self {
            agent_socket: f("agent.vsock"),
            vsock_backend: f("vhost-vsock.sock"),
            fs_backend: f("vhost-fs.sock"),
            fs_backend_pid: f("vhost-fs.sock.pid"),
            console_socket: f("console.sock"),
            console_log: f("console.log"),
            jail_root: f("jail"),
            qemu_log: f("qemu.log"),
            qemu_pid: f("qemu.pid"),
            vsock_pid: f("vhost-vsock.pid"),
            virtiofsd_pid: f("virtiofsd.pid"),
            vsock_log: f("vhost-vsock.log"),
            virtiofsd_log: f("virtiofsd.log"),
        }
    }

    /// Sockets and pid files (what `stop` removes; logs stay for debugging).
    pub fn transient(&self) -> [&Path; 8] {
        [
            &self.agent_socket,
            &self.console_socket,
            &self.vsock_backend,
            &self.fs_backend,
            &self.fs_backend_pid,
            &self.qemu_pid,
            &self.vsock_pid,
            &self.virtiofsd_pid,
        ]
    }
}

/// Kernel command line: the backend's own arguments, then the caller's.
pub fn kernel_cmdline(config: &VmConfig, tcg: Option<Tcg>) -> String {
    // reboot=t + QEMU -no-reboot: the agent's reboot(2) ends QEMU (poweroff does not on
    // microvm); panic=-1 makes a guest panic end it too.
    let mut parts = vec![
        "console=ttyS0",
        "reboot=t",
        "panic=-1",
        "loglevel=4",
        "8250.nr_uarts=1",
    ];
    let khz = tcg.and_then(|t| t.host_tsc_khz);
    let tsc = format!("tsc_early_khz={}", khz.unwrap_or(TCG_TSC_KHZ));
    if tcg.is_some() {
        parts.push(&tsc);
        if khz.is_some() {
            parts.push("tsc=reliable");
        }
        // Under TCG on a loaded host the IO-APIC timer check can miss its ticks and panic
        // the guest in setup_IO_APIC ("..MP-BIOS bug: 8254 timer not connected"); Kata
        // passes the same flag.
        parts.push("no_timer_check");
    }
    let mut line = parts.join(" ");
    if !config.cmdline.trim().is_empty() {
        line.push(' ');
        line.push_str(config.cmdline.trim());
    }
    line
}

fn os(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

/// QEMU microvm arguments. QEMU adds the `virtio_mmio.device=` kernel arguments itself.
/// Jailed (`jail`), QEMU chroots into [`RunFiles::jail_root`] and drops to the pod's own
/// uid/gid (hull-vmm's, [`crate::hull::jail::id_for`]) once every device is set up: its
/// fds (tap, memfd, vhost-user and console sockets, /dev/kvm) stay, nothing else is
/// reachable and no capability is left. Under TCG (`tcg`) the translation buffer is
/// capped and the guest told the host's TSC rate.
pub fn qemu_args(
    config: &VmConfig,
    files: &RunFiles,
    tcg: Option<Tcg>,
    jail: bool,
) -> Vec<OsString> {
    let mem = config.memory_mib;
    let mut args = os(&["-name", &format!("hull-{}", config.id)]);
    let accel = match tcg {
        Some(t) => format!("tcg,tb-size={}", t.tb_size_mib),
        None => "kvm".to_owned(),
    };
    // The CMOS RTC stays on: without it the guest boots at 1970 and its kernel spends
    // about a second failing to read the clock.
    args.extend(os(&[
        "-accel",
        &accel,
        "-M",
        "microvm,acpi=off,memory-backend=mem",
        "-cpu",
        if tcg.is_some() { "max" } else { "host" },
        "-smp",
        &config.vcpus.to_string(),
        "-m",
        &format!("{mem}M"),
        // vhost-user backends map guest RAM: it must be a shared memfd.
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "chardev:console",
        "-chardev",
    ]));
    // wait=on: the guest starts once hulld's console pump is connected.
    let mut console = chardev("console", &files.console_socket);
    console.push(",server=on,wait=on");
    args.push(console);
    args.push("-kernel".into());
    args.push(config.kernel.clone().into());
    args.push("-initrd".into());
    args.push(config.initramfs.clone().into());
    args.push("-append".into());
    args.push(kernel_cmdline(config, tcg).into());
    args.push("-chardev".into());
    args.push(chardev("vsock", &files.vsock_backend));
    args.extend(os(&["-device", "vhost-user-vsock-device,chardev=vsock"]));
    if config.shared_dir.is_some() {
        args.push("-chardev".into());
        args.push(chardev("fs", &files.fs_backend));
        args.extend(os(&[
            "-device",
            &format!("vhost-user-fs-device,chardev=fs,tag={SHARE_TAG}"),
        ]));
    }
    if jail {
        let id = crate::hull::jail::id_for(&config.id);
        args.push("-chroot".into());
        args.push(files.jail_root.clone().into_os_string());
        args.extend(os(&["-runas", &format!("{id}:{id}")]));
    }
    if let Some(net) = &config.net {
        args.extend(os(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]));
    }
    args
}

fn chardev(id: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("socket,id={id},path="));
    s.push(path);
    s
}

/// vhost-device-vsock: guest CID 3, the host side as a hybrid-vsock unix socket.
pub fn vsock_args(files: &RunFiles) -> Vec<OsString> {
    let mut vm = OsString::from("guest-cid=3,socket=");
    vm.push(&files.vsock_backend);
    vm.push(",uds-path=");
    vm.push(&files.agent_socket);
    vec!["--vm".into(), vm]
}

/// virtiofsd serving `shared_dir` on [`RunFiles::fs_backend`], as a helper to start
/// (the hull backend's run files name virtiofsd's files alike).
pub(crate) fn virtiofsd<'a>(
    files: &'a RunFiles,
    program: &'a Path,
    shared_dir: &Path,
) -> Helper<'a> {
    Helper {
        spawn: Spawn {
            what: "virtiofsd",
            program,
            args: virtiofsd_args(files, shared_dir),
            log: &files.virtiofsd_log,
            pid_file: &files.virtiofsd_pid,
        },
        socket: &files.fs_backend,
    }
}

/// virtiofsd serving `shared_dir`.
pub fn virtiofsd_args(files: &RunFiles, shared_dir: &Path) -> Vec<OsString> {
    let mut socket = OsString::from("--socket-path=");
    socket.push(&files.fs_backend);
    let mut dir = OsString::from("--shared-dir=");
    dir.push(shared_dir);
    vec![
        socket,
        dir,
        "--cache=auto".into(),
        "--sandbox=namespace".into(),
        "--announce-submounts".into(),
        "--log-level=warn".into(),
    ]
}

/// Characters that would let a config value inject QEMU options (`,` separates them).
pub fn check_qemu_value(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.contains([',', '\n', '\0', '=']) {
        return Err(format!(
            "{what} {value:?} is empty or contains ',', '=', NUL or newline"
        ));
    }
    Ok(())
}

/// A pod's VM config with a NIC and a shared dir, for both backends' unit tests of what
/// they build from one.
#[cfg(test)]
pub(crate) fn test_config() -> VmConfig {
    use crate::hypervisor::NetConfig;
    VmConfig {
        id: "pod1".into(),
        vcpus: 2,
        memory_mib: 512,
        kernel: "/k".into(),
        initramfs: "/i".into(),
        cmdline: "RUST_LOG=debug".into(),
        run_dir: "/run/hull/sandboxes/pod1".into(),
        netns: None,
        net: Some(NetConfig {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        }),
        shared_dir: Some("/srv/share".into()),
        host: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn qemu_command_line_has_every_device() {
        let cfg = test_config();
        let files = RunFiles::new(&cfg.run_dir);
        let tcg = Tcg {
            tb_size_mib: TCG_TB_SIZE_MIB,
            host_tsc_khz: None,
        };
        let line = joined(&qemu_args(&cfg, &files, Some(tcg), true));
        for want in [
            "-accel tcg,tb-size=16 -M microvm,acpi=off,memory-backend=mem",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-smp 2 -m 512M",
            "-no-reboot",
            "-serial chardev:console",
            "socket,id=console,path=/run/hull/sandboxes/pod1/console.sock,server=on,wait=on",
            "vhost-user-vsock-device,chardev=vsock",
            "socket,id=fs,path=/run/hull/sandboxes/pod1/vhost-fs.sock",
            "vhost-user-fs-device,chardev=fs,tag=hullshare",
            "tap,id=net0,ifname=tap0,script=no,downscript=no",
            "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
            "-kernel /k -initrd /i",
            "-chroot /run/hull/sandboxes/pod1/jail -runas ",
        ] {
            assert!(line.contains(want), "missing {want:?} in {line}");
        }
        assert!(
            line.contains("tsc_early_khz=2100000 no_timer_check RUST_LOG=debug"),
            "{line}"
        );
        let kvm = joined(&qemu_args(&cfg, &files, None, false));
        assert!(
            kvm.contains("-accel kvm -M microvm,acpi=off")
                && !kvm.contains("tb-size")
                && kvm.contains("-cpu host")
                && !kvm.contains("tsc_early_khz")
        );
        assert!(!kvm.contains("-runas"), "not jailed when asked not to be");
    }

    #[test]
    fn optional_devices_are_left_out() {
        let mut cfg = test_config();
        cfg.net = None;
        cfg.shared_dir = None;
        let tcg = Tcg {
            tb_size_mib: 8,
            host_tsc_khz: Some(2_300_000),
        };
        let line = joined(&qemu_args(
            &cfg,
            &RunFiles::new(&cfg.run_dir),
            Some(tcg),
            false,
        ));
        assert!(!line.contains("vhost-user-fs-device") && !line.contains("-netdev"));
        assert!(line.contains("-accel tcg,tb-size=8 "), "{line}");
        assert!(
            line.contains("tsc_early_khz=2300000 tsc=reliable no_timer_check"),
            "{line}"
        );
    }

    #[test]
    fn helper_command_lines() {
        let files = RunFiles::new(Path::new("/r"));
        assert_eq!(
            joined(&vsock_args(&files)),
            "--vm guest-cid=3,socket=/r/vhost-vsock.sock,uds-path=/r/agent.vsock"
        );
        let fs = joined(&virtiofsd_args(&files, Path::new("/s")));
        assert!(fs.starts_with("--socket-path=/r/vhost-fs.sock --shared-dir=/s"));
        assert!(check_qemu_value("tap", "tap0").is_ok());
        assert!(check_qemu_value("tap", "tap0,script=/evil").is_err());
    }
}
