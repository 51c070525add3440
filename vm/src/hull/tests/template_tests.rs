//! The template paths of the backend with fake hull-vmms: a template boot that cannot
//! snapshot falls back to a cold boot (once, then remembered), a complete template is
//! restored with `--restore`, and a restore that fails falls back to a cold boot. The real
//! snapshot and restore run in the nested harness.

use super::*;
use crate::hull::template::{COMPLETE_MARKER, SNAPSHOT_FILES, TemplatePaths, template_key};

/// Like [`FAKE_VMM`], and it logs its arguments next to its config and prints the agent's
/// ready line on the console named in the config. Every start, template VMs' included (their
/// build dir goes away), also appends a line to `invocations` next to the script. The trap
/// comes first: the backend may stop the VM as soon as the socket is there.
const FAKE_BOOTING_VMM: &str = r#"[ "$1" = --config ] || exit 1
trap 'exit 5' TERM
echo "$@" >> "$(dirname "$0")/invocations"
echo "$@" >> "$(dirname "$2")/args.log"
api=$(sed -n 's/.*"api_socket": "\(.*\)".*/\1/p' "$2")
console=$(sed -n 's/.*"console_log": "\(.*\)".*/\1/p' "$2")
echo "hull-agent: ready" > "$console"
touch "$api"
while :; do sleep 0.05; done"#;

fn templated(vmm: PathBuf) -> HullHypervisor {
    HullHypervisor::new(HullConfig {
        vmm,
        virtiofsd: "/nonexistent/virtiofsd".into(),
        jail: true,
    })
}

fn args_log(run_dir: &Path) -> String {
    std::fs::read_to_string(run_dir.join("args.log")).unwrap_or_default()
}

/// How many times the fake hull-vmm in `dir` was started (template VMs included).
fn invocations(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("invocations"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// A complete template for `config` (fake snapshot files), as a template boot leaves it.
fn fake_template(config: &VmConfig, vmm: &Path) -> TemplatePaths {
    let key = template_key(config, vmm).expect("key");
    let paths = TemplatePaths::new(&config.run_dir, &key);
    std::fs::create_dir_all(&paths.dir).expect("mkdir");
    for f in SNAPSHOT_FILES.iter().chain([&COMPLETE_MARKER]) {
        std::fs::write(paths.dir.join(f), "x").expect("write");
    }
    paths
}

#[tokio::test]
async fn a_template_that_cannot_be_made_means_cold_boots_and_is_not_retried_per_pod() {
    let s = setup();
    let vmm = write_script(s.dir.path(), "hull-vmm", FAKE_BOOTING_VMM);
    let hv = templated(vmm.clone());
    let vm = hv.start_vm(&s.config).await.expect("start");
    assert_eq!(vm.boot(), &Boot::Cold);
    assert!(!args_log(&s.config.run_dir).contains("--restore"));
    // The template VM ran (to the snapshot request the fake cannot answer) and is gone.
    let key = template_key(&s.config, &vmm).expect("key");
    let paths = TemplatePaths::new(&s.config.run_dir, &key);
    assert!(!paths.build.exists() && !paths.dir.exists());
    vm.wait_agent_ready(Instant::now() + Duration::from_secs(5))
        .await
        .expect("cold boot: the ready line");
    vm.stop(Duration::from_secs(5)).await.expect("stop");
    // The template VM and the pod's cold boot.
    assert_eq!(invocations(s.dir.path()), 2);

    // The next pod does not try again: one start, its own cold boot.
    let vm = hv.start_vm(&s.config).await.expect("start");
    assert_eq!(vm.boot(), &Boot::Cold);
    assert_eq!(invocations(s.dir.path()), 3, "the template was retried");
    vm.stop(Duration::from_secs(5)).await.expect("stop");
}

#[tokio::test]
async fn a_complete_template_is_restored_and_stop_and_reattach_work_the_same() {
    let s = setup();
    let vmm = write_script(s.dir.path(), "hull-vmm", FAKE_BOOTING_VMM);
    let paths = fake_template(&s.config, &vmm);
    let hv = templated(vmm);
    let vm = hv.start_vm(&s.config).await.expect("start");
    assert_eq!(
        vm.boot(),
        &Boot::Restored {
            key: paths.key.clone(),
            dir: paths.dir.clone(),
            created: None
        }
    );
    let files = RunFiles::new(&s.config.run_dir);
    let args = args_log(&s.config.run_dir);
    assert!(
        args.contains(&format!("--restore {}", paths.dir.display())),
        "{args}"
    );
    assert!(files.restored_from.is_file());
    // No agent answers the fake's vsock socket: readiness is the handshake, not the line.
    let err = vm
        .wait_agent_ready(Instant::now() + Duration::from_millis(100))
        .await
        .expect_err("no handshake");
    assert!(err.to_string().contains("did not answer"), "{err}");

    let again = hv.reattach(&s.config).await.expect("reattach");
    assert_eq!(again.pid(), vm.pid());
    assert_eq!(
        again.stop(Duration::from_secs(5)).await.expect("stop"),
        VmExit::Shutdown
    );
    assert!(files.transient().iter().all(|p| !p.exists()));
    assert!(paths.is_complete(), "the template stays for the next pods");
}

#[tokio::test]
async fn a_failed_restore_falls_back_to_a_cold_boot() {
    let s = setup();
    // Logs its arguments, then fails a restore like an incompatible snapshot would.
    let body = FAKE_BOOTING_VMM.replace(
        "args.log\"\n",
        "args.log\"\n[ \"$3\" = --restore ] && exit 1\n",
    );
    let vmm = write_script(s.dir.path(), "hull-vmm", &body);
    fake_template(&s.config, &vmm);
    let hv = templated(vmm);
    let vm = hv.start_vm(&s.config).await.expect("start");
    assert_eq!(vm.boot(), &Boot::Cold);
    let args = args_log(&s.config.run_dir);
    assert_eq!(args.lines().count(), 2, "{args}");
    assert!(!RunFiles::new(&s.config.run_dir).restored_from.exists());
    vm.stop(Duration::from_secs(5)).await.expect("stop");
    // Remembered: the next pod boots cold at once.
    let vm = hv.start_vm(&s.config).await.expect("start");
    assert_eq!(vm.boot(), &Boot::Cold);
    assert!(
        !args_log(&s.config.run_dir)
            .lines()
            .last()
            .unwrap_or("")
            .contains("--restore")
    );
    vm.stop(Duration::from_secs(5)).await.expect("stop");
}

#[tokio::test]
async fn warm_makes_or_finds_the_template_and_reports_it() {
    let s = setup();
    let vmm = write_script(s.dir.path(), "hull-vmm", FAKE_BOOTING_VMM);
    // A template that cannot be made: not ready, and pods then boot cold without retrying.
    let hv = templated(vmm.clone());
    assert!(!hv.warm(&s.config).await.expect("warm"));
    let key = template_key(&s.config, &vmm).expect("key");
    assert!(!TemplatePaths::new(&s.config.run_dir, &key).dir.exists());
    assert_eq!(invocations(s.dir.path()), 1, "one template VM");
    let vm = hv.start_vm(&s.config).await.expect("start");
    assert_eq!(vm.boot(), &Boot::Cold);
    assert_eq!(invocations(s.dir.path()), 2, "the template was retried");
    vm.stop(Duration::from_secs(5)).await.expect("stop");

    // A template that is there: ready, no VM started.
    let hv = templated(vmm.clone());
    fake_template(&s.config, &vmm);
    assert!(hv.warm(&s.config).await.expect("warm"));
    // Templates off: nothing to warm.
    assert!(!hv_off(&vmm).warm(&s.config).await.expect("warm"));
    // No hull-vmm: an error naming it.
    let missing = templated(s.dir.path().join("no-such-vmm"));
    let err = missing.warm(&s.config).await.expect_err("no hull-vmm");
    assert!(err.to_string().contains("hull-vmm"), "{err}");
}

fn hv_off(vmm: &Path) -> HullHypervisor {
    templated(vmm.to_owned()).with_templates(false)
}

#[tokio::test]
async fn an_abandoned_template_creation_kills_its_vm() {
    let s = setup();
    // Never prints the ready line: the template boot waits until it is dropped.
    let vmm = write_script(s.dir.path(), "hull-vmm", FAKE_VMM);
    let hv = templated(vmm.clone());
    let key = template_key(&s.config, &vmm).expect("key");
    let pid_file = TemplatePaths::new(&s.config.run_dir, &key)
        .run_files()
        .vmm_pid;
    // Drop the creation once its VM runs (its pid file is written), however long a loaded
    // machine takes to get there: the order matters here, not the time.
    let started = async {
        loop {
            match std::fs::read_to_string(&pid_file) {
                Ok(pid) if !pid.trim().is_empty() => return pid.trim().to_owned(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let pid = tokio::select! {
        warm = hv.warm(&s.config) => panic!("the fake never gets ready: {warm:?}"),
        pid = tokio::time::timeout(Duration::from_secs(60), started) => {
            pid.expect("the template VM was not started within 60 s")
        }
    };
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "template hull-vmm {pid} still running after its creation was dropped"
    );
}
