//! What PID 1 does before and after serving: mounts, cgroup controllers, logging to the
//! console, and powering off. The virtio-fs share is mounted later, by `SetupSandbox`
//! ([`crate::share`]): a VM template's guest must not open a FUSE session at boot.

use std::path::Path;

use anyhow::Context;
use nix::mount::{MsFlags, mount};

/// Mounts proc, sys, dev, devpts, shm, run, tmp and cgroup2 and enables the cgroup
/// controllers for containers.
pub fn early_setup() -> anyhow::Result<()> {
    switch_root().context("switch root away from the initramfs")?;
    mount_pseudo_filesystems()?;
    enable_cgroup_controllers()?;
    std::fs::create_dir_all("/etc").context("create /etc")?;
    // Containers bind these; SetupSandbox fills them in.
    if !Path::new("/etc/resolv.conf").exists() {
        let _ = std::fs::write("/etc/resolv.conf", "");
    }
    if !Path::new("/etc/hosts").exists() {
        let _ = std::fs::write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n");
    }
    Ok(())
}

fn mount_pseudo_filesystems() -> anyhow::Result<()> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            Some("nsdelegate"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        std::fs::create_dir_all(target).with_context(|| format!("create {target}"))?;
        mount(Some(source), target, Some(fstype), flags, data)
            .with_context(|| format!("mount {fstype} on {target}"))?;
    }
    dev_links()
}

/// /dev/ptmx must be the devpts instance's (devtmpfs has a legacy node there), plus the
/// usual /dev/fd and /dev/std* links.
fn dev_links() -> anyhow::Result<()> {
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").context("symlink /dev/ptmx")?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Every controller the kernel has is made available to the containers' cgroups.
fn enable_cgroup_controllers() -> anyhow::Result<()> {
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .context("read cgroup.controllers")?;
    let enable: Vec<String> = controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect();
    std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
        .context("enable cgroup controllers")
}

/// Moves `/` from the initramfs rootfs to a tmpfs (what `switch_root` does), because
/// `pivot_root` — used for every container — fails while the root is the rootfs. The agent
/// binary stays reachable as `/proc/self/exe` for the container helpers.
fn switch_root() -> anyhow::Result<()> {
    let new_root = "/newroot";
    std::fs::create_dir_all(new_root).context("create /newroot")?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mount tmpfs root")?;
    for dir in ["dev", "proc", "sys", "run", "tmp", "etc", "mnt", "var"] {
        std::fs::create_dir_all(Path::new(new_root).join(dir)).context("create root dirs")?;
    }
    nix::unistd::chdir(new_root).context("chdir /newroot")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("move root")?;
    nix::unistd::chroot(".").context("chroot")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}

/// Logs to stderr, which for PID 1 is the console (the VMM writes it to the console log).
/// `RUST_LOG` on the kernel command line (passed to init as an env var) sets the filter.
pub fn setup_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

/// A panic in PID 1 would panic the kernel; log it and power off cleanly instead.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("hull-agent: fatal: {info}");
        power_off();
    }));
}

/// Syncs and restarts the machine, like `reboot -f`: QEMU runs with `-no-reboot` and
/// `reboot=t`, so this ends the VMM process. (`poweroff -f` does not end QEMU microvm.)
pub fn power_off() -> ! {
    nix::unistd::sync();
    eprintln!("hull-agent: powering off");
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("hull-agent: reboot failed: {err:?}");
    // Exiting PID 1 panics the kernel, which with panic=-1 also ends the VM.
    std::process::exit(1)
}
