//! Observability through a real hulld and a real pod VM: the CRI metrics kubelet serves at
//! `/metrics/cadvisor` (ListMetricDescriptors, ListPodSandboxMetrics) for a busy container,
//! hulld's own Prometheus endpoint parsed by Prometheus text-format parsers with counters
//! that move with the calls made, and CheckpointContainer's refusals (an unknown container,
//! bad and unwritable locations, and this backend) leaving nothing behind.

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cri_common::{container, create_start};
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/busybox:latest";

/// A port nothing listens on now (hulld binds it a moment later).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    l.local_addr().expect("local addr").port()
}

/// `GET /metrics` on hulld's endpoint: content type and body.
fn scrape(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (ctype, body.to_owned())
}

/// Parses the exposition with the `prometheus-parse` crate and with Python's reference
/// `prometheus_client` parser (it must accept every line); samples by `name{labels}`.
fn parse(body: &str) -> HashMap<String, f64> {
    let py = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nn = sum(len(f.samples) for f in p(sys.stdin.read()))\nprint(n)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian's, with python3-prometheus-client)");
    py.stdin
        .as_ref()
        .expect("python's stdin")
        .write_all(body.as_bytes())
        .expect("write to python");
    let out = py.wait_with_output().expect("python's output");
    assert!(
        out.status.success(),
        "prometheus_client rejects the exposition (apt-get install python3-prometheus-client):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus-parse");
    let py_samples: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("python's sample count");
    assert!(py_samples > 0);
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => h.last().map(|b| b.count).unwrap_or(0.0),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), v)
        })
        .collect()
}

/// One sample's value; 0 when absent.
fn sample(s: &HashMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// The pod's CRI metrics by `name{k=v,...}`, labels checked against the descriptors.
async fn pod_metrics(
    rt: &mut RuntimeServiceClient<Channel>,
    descs: &HashMap<String, Vec<String>>,
    pod_id: &str,
) -> HashMap<String, u64> {
    let all = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let pod = all
        .into_iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .expect("the pod has metrics");
    let metrics = pod
        .metrics
        .iter()
        .chain(pod.container_metrics.iter().flat_map(|c| c.metrics.iter()));
    let mut out = HashMap::new();
    for m in metrics {
        let keys = descs
            .get(&m.name)
            .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(keys.len(), m.label_values.len(), "{}", m.name);
        let labels: Vec<String> = keys
            .iter()
            .zip(&m.label_values)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let key = format!("{}{{{}}}", m.name, labels.join(","));
        let dup = out.insert(key.clone(), m.value.map(|v| v.value).unwrap_or(0));
        assert!(dup.is_none(), "{key} twice");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_and_checkpoint_refusals() {
    let env = PodEnv::new();
    let reg = registry::TestRegistry::start();
    let h = reg.host();
    common::push_test_images(&h);
    let mut hulld = env.hulld(&env.conflist(&[]), &[("agent_timeout_secs", "120".into())]);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut config = std::fs::read_to_string(&hulld.config_path).expect("read hulld's config");
    config.push_str(&format!("[metrics]\naddress = \"{addr}\"\n"));
    std::fs::write(&hulld.config_path, config).expect("write hulld's config");
    cri_common::mirror_registry_k8s_io(&hulld, &h);
    hulld.start();
    let mut images = hulld.images().await;
    let mut rt = hulld.runtime().await;
    cri_common::pull(&mut images, IMAGE).await;

    let logs = tempfile::tempdir().expect("tempdir");
    let pod_config = cri_common::pod_config("metrics", logs.path());
    let pod_id = cri_common::run_pod(&mut rt, &pod_config).await;
    let checks = {
        let (mut rt, pod_id, addr) = (rt.clone(), pod_id.clone(), addr.clone());
        tokio::spawn(async move {
            let busy = container(
                "busy",
                IMAGE,
                &["sh", "-c", "while true; do :; done"],
                "busy.log",
            );
            let id = create_start(&mut rt, &pod_id, &pod_config, busy).await;
            cri_metrics(&mut rt, &pod_id, &id).await;
            endpoint(&mut rt, &addr).await;
            checkpoint_refusals(&mut rt, &id).await;
            hung_guest(&mut rt, &pod_id).await;
        })
    }
    .await;
    cri_common::stop_remove_pod(&mut rt, &pod_id).await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Descriptors with cAdvisor's names; the busy container's CPU moves; the pod's network
/// and VM cost are there, labelled.
async fn cri_metrics(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str, id: &str) {
    let descs: HashMap<String, Vec<String>> = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors
        .into_iter()
        .map(|d| (d.name, d.label_keys))
        .collect();
    assert_eq!(
        descs["container_cpu_usage_seconds_total"],
        ["container", "id", "image", "name", "namespace", "pod"]
    );
    let c =
        format!("container=busy,id={id},image={IMAGE},name=busy,namespace=hulltest,pod=metrics");
    let cpu = format!("container_cpu_usage_seconds_total{{{c}}}");
    let first = pod_metrics(rt, &descs, pod_id).await;
    let start = first[&cpu];
    assert!(
        first[&format!("container_memory_usage_bytes{{{c}}}")] > 0,
        "{first:?}"
    );
    assert!(first[&format!("container_memory_working_set_bytes{{{c}}}")] > 0);
    assert!(first[&format!("container_processes{{{c}}}")] >= 1);
    assert!(first[&format!("container_start_time_seconds{{{c}}}")] > 1_600_000_000);
    let pod = format!("container=,id={pod_id},image=,name=metrics,namespace=hulltest,pod=metrics");
    let eth0 = format!(
        "container=,id={pod_id},image=,interface=eth0,name=metrics,namespace=hulltest,pod=metrics"
    );
    assert!(
        first.contains_key(&format!("container_network_receive_bytes_total{{{eth0}}}")),
        "{first:?}"
    );
    assert!(first[&format!("hull_pod_vm_memory_bytes{{{pod}}}")] > 0);
    let vmm_rss = first
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!(
                "hull_pod_vm_process_resident_memory_bytes{{{pod},process="
            ))
        })
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(0);
    assert!(vmm_rss > 10 << 20, "the VMM's RSS: {first:?}");
    // What one call costs hulld (agent round trip per container, /proc, the writable
    // layer's walk): printed for the record, not asserted (the machine is shared).
    let t = Instant::now();
    for _ in 0..5 {
        pod_metrics(rt, &descs, pod_id).await;
    }
    eprintln!(
        "ListPodSandboxMetrics, 1 pod with 1 container: {:?} per call ({} series)",
        t.elapsed() / 5,
        first.len()
    );
    // A busy loop: its CPU seconds move (whole seconds; TCG under load is slow).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = pod_metrics(rt, &descs, pod_id).await[&cpu];
        if now > start {
            eprintln!("container CPU seconds {start} -> {now}");
            break;
        }
        assert!(Instant::now() < deadline, "{cpu} stayed at {start}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// hulld's endpoint parses, shows the pod and container, and its counters move.
async fn endpoint(rt: &mut RuntimeServiceClient<Channel>, addr: &str) {
    let t = Instant::now();
    let (ctype, body) = scrape(addr);
    eprintln!(
        "GET /metrics: {:?}, {} bytes, {} lines",
        t.elapsed(),
        body.len(),
        body.lines().count()
    );
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let before = parse(&body);
    let status_ok = "hull_cri_requests_total{code=OK,rpc=ListPodSandbox}";
    let not_found = "hull_cri_request_errors_total{code=NotFound,rpc=ContainerStatus}";
    assert_eq!(sample(&before, "hull_pods{state=ready}"), 1.0, "{body}");
    assert_eq!(sample(&before, "hull_containers{state=running}"), 1.0);
    assert!(sample(&before, "hull_image_pulls_total{result=ok}") >= 1.0);
    assert!(
        sample(&before, "hull_image_pull_bytes_total{}") > 0.0,
        "{body}"
    );
    assert!(
        sample(
            &before,
            "hull_vm_start_duration_seconds{backend=qemu,boot=cold}"
        ) >= 1.0
            || sample(
                &before,
                "hull_vm_start_duration_seconds{backend=hull,boot=cold}"
            ) + sample(
                &before,
                "hull_vm_start_duration_seconds{backend=hull,boot=restore}"
            ) >= 1.0,
        "{body}"
    );
    assert!(body.contains("hull_cri_request_duration_seconds_bucket{rpc=\"RunPodSandbox\""));
    for _ in 0..3 {
        rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .expect("ListPodSandbox");
    }
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let after = parse(&scrape(addr).1);
    assert_eq!(sample(&after, status_ok), sample(&before, status_ok) + 3.0);
    assert_eq!(sample(&after, not_found), sample(&before, not_found) + 1.0);
}

/// Bad requests and this backend are refused with clear codes; nothing is left behind.
async fn checkpoint_refusals(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |p: &std::path::Path| p.display().to_string();
    let mut checkpoint = async |container_id: &str, location: String| {
        rt.checkpoint_container(cri::CheckpointContainerRequest {
            container_id: container_id.into(),
            location,
            timeout: 0,
        })
        .await
        .expect_err("refused")
    };
    let e = checkpoint("no-such-container", at(&dir.path().join("a.tar"))).await;
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = checkpoint(id, "relative.tar".into()).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = checkpoint(id, at(&dir.path().join("no/such/dir/c.tar"))).await;
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("cannot write the checkpoint archive"),
        "{e:?}"
    );
    let e = checkpoint(id, "/proc/hull-checkpoint.tar".into()).await;
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = checkpoint(id, at(&dir.path().join("c.tar"))).await;
    match sandbox_common::TestVmm::current() {
        sandbox_common::TestVmm::Qemu => {
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("non-migratable"), "{e:?}");
        }
        _ => assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}"),
    }
    assert_eq!(
        std::fs::read_dir(dir.path())
            .expect("list the location's dir")
            .count(),
        0,
        "left behind"
    );
    let s = cri_common::status(rt, id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
}

/// A guest that does not answer (its VMM stopped with SIGSTOP) costs its containers' series
/// in that scrape, within the guest timeout (10 s), not the whole call nor the VM's series.
async fn hung_guest(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str) {
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).expect("info");
    let pid = info["vmmPid"].as_i64().expect("vmmPid") as i32;
    let vmm = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(vmm, nix::sys::signal::SIGSTOP).expect("SIGSTOP the VMM");
    let t = Instant::now();
    let call = rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {});
    let answer = tokio::time::timeout(Duration::from_secs(60), call).await;
    let took = t.elapsed();
    nix::sys::signal::kill(vmm, nix::sys::signal::SIGCONT).expect("SIGCONT the VMM");
    eprintln!("ListPodSandboxMetrics with a stopped VMM: {took:?}");
    let pods = answer
        .expect("ListPodSandboxMetrics answers with a stopped VMM")
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    let pod = pods
        .iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .expect("the pod is listed");
    assert!(pod.container_metrics.is_empty(), "{pod:?}");
    let names: Vec<&str> = pod.metrics.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.contains(&"hull_pod_vm_process_resident_memory_bytes"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"hull_pod_vm_overhead_memory_bytes"),
        "{names:?}"
    );
}
