//! Exec, attach and port-forward through hulld's streaming server against a real pod (a
//! guest under QEMU, real CNI, an image from a registry on 127.0.0.1): the CRI call
//! returns a URL, a client upgrades it to SPDY/3.1 or WebSocket and talks to a process in
//! the container. Also the refusals: a used token, a request that does not upgrade, a
//! protocol the server does not speak.

mod common;
mod cri_common;
#[path = "../../image-service/tests/support/registry.rs"]
#[allow(dead_code)]
mod registry;
mod sandbox_common;
mod streaming_client;

use std::time::Duration;

use cri_common::create_start as run;
use hull_cri_api as cri;
use hull_cri_api::client::RuntimeServiceClient;
use sandbox_common::PodEnv;
use streaming_client::{Received, SpdyClient, WsClient, printable};
use tonic::transport::Channel;

const IMAGE: &str = "registry.k8s.io/busybox:latest";
const LIMIT: Duration = Duration::from_secs(60);

fn container(name: &str, args: &[&str], stdin: bool) -> cri::ContainerConfig {
    cri::ContainerConfig {
        stdin,
        stdin_once: stdin,
        ..cri_common::container(name, IMAGE, args, &format!("{name}.log"))
    }
}

async fn exec_url(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
    tty: bool,
) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: true,
        stdout: true,
        stderr: !tty,
    })
    .await
    .expect("Exec")
    .into_inner()
    .url
}

/// The v4 error stream's status JSON.
fn status(got: &Received, id: u32) -> serde_json::Value {
    let raw = got.data.get(&id).cloned().unwrap_or_default();
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("status {raw:?}: {e}"))
}

/// A running pod (guest VM) on a hulld that pulls from a registry on 127.0.0.1; runs
/// `checks` in it and always tears the pod down.
async fn with_pod<F, Fut>(name: &str, checks: F)
where
    F: FnOnce(
        RuntimeServiceClient<Channel>,
        String,
        cri::PodSandboxConfig,
        std::path::PathBuf,
    ) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let env = PodEnv::new();
    let (_reg, _hulld, _, mut rt) = cri_common::mirrored_hulld(&env, IMAGE).await;
    let logs = tempfile::tempdir().expect("log dir");
    let pod_config = cri::PodSandboxConfig {
        hostname: "streampod".into(),
        ..cri_common::pod_config(name, logs.path())
    };
    let pod = cri_common::run_pod(&mut rt, &pod_config).await;
    // The checks run in a task so that a failed one still tears the pod down below.
    let checks = tokio::spawn(checks(
        rt.clone(),
        pod.clone(),
        pod_config,
        logs.path().to_owned(),
    ))
    .await;
    cri_common::stop_remove_pod(&mut rt, &pod).await;
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_port_forward_in_a_real_pod() {
    with_pod("streaming", |mut rt, pod, config, _| async move {
        checks(&mut rt, &pod, &config).await;
    })
    .await;
}

/// Attach needs an agent whose output streams have several readers (the log writer and
/// the attach: the output hub of 21db71a), and execs that inherit the container's
/// process (19c3483), in the guest's initramfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_exec_as_the_container_in_a_real_pod() {
    with_pod("attach", |mut rt, pod, config, logs| async move {
        attach_checks(&mut rt, &pod, &config, &logs).await;
    })
    .await;
}

/// critest's attach: a shell reading stdin (stdin_once), a command written to it, its
/// output back; the client's EOF ends the shell and the session with Success. The CRI
/// log got the same output: the log writer and the attach read side by side.
async fn attach_checks(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    logs: &std::path::Path,
) {
    let id = run(rt, pod, pod_config, container("shell", &["sh"], true)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = rt
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let up = streaming_client::spdy(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(up.code, 101, "{}{}", up.head, up.body);
    let mut c = SpdyClient::new(up.conn.expect("upgraded"));
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    c.data(stdin, b"echo hello-attach; echo err-attach >&2\n", false)
        .await;
    // Give the shell time to answer before its stdin closes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.data(stdin, &[], true).await;
    let mut got = Received::default();
    c.collect(&[stdout, stderr, error], LIMIT, &mut got).await;
    let text = printable(&got);
    assert_eq!(
        text.get(&stdout).map(String::as_str),
        Some("hello-attach\n"),
        "{text:?}"
    );
    assert_eq!(
        text.get(&stderr).map(String::as_str),
        Some("err-attach\n"),
        "{text:?}"
    );
    assert_eq!(status(&got, error)["status"], "Success");
    let log = std::fs::read_to_string(logs.join("shell.log")).unwrap_or_default();
    assert!(log.contains("stdout F hello-attach"), "CRI log: {log:?}");

    // An exec runs as the container's process: its env and working dir.
    let mut config = container("envd", &["sleep", "3600"], false);
    config.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: "from-the-container".into(),
    }];
    config.working_dir = "/tmp".into();
    let id = run(rt, pod, pod_config, config).await;
    let url = exec_url(rt, &id, &["sh", "-c", "echo \"$FOO:$(pwd)\""], false).await;
    let up = streaming_client::spdy(&url, &["v4.channel.k8s.io"]).await;
    let mut c = SpdyClient::new(up.conn.expect("upgraded"));
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    c.data(stdin, &[], true).await;
    let mut got = Received::default();
    c.collect(&[stdout, stderr, error], LIMIT, &mut got).await;
    let text = printable(&got);
    assert_eq!(
        text.get(&stdout).map(String::as_str),
        Some("from-the-container:/tmp\n"),
        "{text:?}"
    );
}

async fn checks(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
) {
    let sleeper = run(
        rt,
        pod,
        pod_config,
        container("sleeper", &["sleep", "3600"], false),
    )
    .await;
    let web = container(
        "web",
        &["busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"],
        false,
    );
    let _web = run(rt, pod, pod_config, web).await;

    spdy_exec_with_stdin_and_exit_code(rt, &sleeper).await;
    spdy_exec_with_tty(rt, &sleeper).await;
    websocket_exec(rt, &sleeper).await;
    refusals(rt, &sleeper).await;
    spdy_port_forward(rt, pod).await;
}

/// `cat` echoes stdin; stderr and the exit code come back separately (v4 status).
async fn spdy_exec_with_stdin_and_exit_code(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let url = exec_url(
        rt,
        id,
        &["sh", "-c", "cat; echo to-stderr >&2; exit 7"],
        false,
    )
    .await;
    let up = streaming_client::spdy(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"]).await;
    assert_eq!(up.code, 101, "{}{}", up.head, up.body);
    assert!(
        up.head
            .contains("X-Stream-Protocol-Version: v4.channel.k8s.io"),
        "{}",
        up.head
    );
    let mut c = SpdyClient::new(up.conn.expect("upgraded"));
    let error = c.open(&[("streamType", "error")]).await;
    let stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    c.data(stdin, b"hello through stdin\n", false).await;
    c.data(stdin, b"second line\n", true).await;
    let mut got = Received::default();
    c.collect(&[stdout, stderr, error], LIMIT, &mut got).await;
    let text = printable(&got);
    assert_eq!(
        text.get(&stdout).map(String::as_str),
        Some("hello through stdin\nsecond line\n"),
        "{text:?}"
    );
    assert_eq!(
        text.get(&stderr).map(String::as_str),
        Some("to-stderr\n"),
        "{text:?}"
    );
    let st = status(&got, error);
    assert_eq!(st["status"], "Failure", "{st}");
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "7", "{st}");
    for id in [error, stdin, stdout, stderr] {
        assert!(
            got.replies.contains(&id),
            "no SYN_REPLY for stream {id}: {:?}",
            got.replies
        );
    }
    // The token was used up.
    let again = streaming_client::spdy(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(again.code, 404, "{}{}", again.head, again.body);
}

/// A terminal: output has CRLF line ends, the resize stream sets the size, `tty` names
/// the terminal under the container's own /dev/pts, and a successful command ends with a
/// Success status.
async fn spdy_exec_with_tty(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let url = exec_url(
        rt,
        id,
        &[
            "sh",
            "-c",
            "sleep 2; stty size; tty; [ -t 0 ] && [ -t 1 ] && echo is-a-tty",
        ],
        true,
    )
    .await;
    let up = streaming_client::spdy(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(up.code, 101, "{}{}", up.head, up.body);
    let mut c = SpdyClient::new(up.conn.expect("upgraded"));
    let error = c.open(&[("streamType", "error")]).await;
    let _stdin = c.open(&[("streamType", "stdin")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let resize = c.open(&[("streamType", "resize")]).await;
    c.data(resize, br#"{"Width":123,"Height":45}"#, false).await;
    let mut got = Received::default();
    c.collect(&[stdout, error], LIMIT, &mut got).await;
    let out = printable(&got).remove(&stdout).unwrap_or_default();
    assert!(out.starts_with("45 123\r\n/dev/pts/"), "{out:?}");
    assert!(out.ends_with("is-a-tty\r\n"), "{out:?}");
    assert_eq!(status(&got, error)["status"], "Success");
}

/// v5 over WebSocket: channel bytes, the close-stdin signal, the status on channel 3.
async fn websocket_exec(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let url = exec_url(rt, id, &["sh", "-c", "cat; exit 3"], false).await;
    let up = streaming_client::websocket(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(up.code, 101, "{}{}", up.head, up.body);
    assert!(
        up.head
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{}",
        up.head
    );
    assert!(
        up.head
            .contains("Sec-WebSocket-Protocol: v5.channel.k8s.io"),
        "{}",
        up.head
    );
    let mut c = WsClient::new(up.conn.expect("upgraded"));
    c.send(b"\x00over websocket\n").await;
    c.send(&[255, 0]).await;
    let (mut stdout, mut error) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let m = tokio::time::timeout_at(deadline, c.message())
            .await
            .expect("ws message in time");
        match m {
            Some((2, m)) if m.first() == Some(&1) => stdout.extend_from_slice(&m[1..]),
            Some((2, m)) if m.first() == Some(&3) => error.extend_from_slice(&m[1..]),
            Some((8, _)) | None => break,
            Some(_) => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "over websocket\n");
    let st: serde_json::Value = serde_json::from_slice(&error).expect("status JSON");
    assert_eq!(st["details"]["causes"][0]["message"], "3", "{st}");
}

/// Bad requests get HTTP answers, not hangs or dropped connections.
async fn refusals(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    let url = exec_url(rt, id, &["true"], false).await;
    let base = url.rsplit_once('/').expect("token").0.to_owned();
    let bad =
        streaming_client::spdy(&format!("{base}/0123456789abcdef"), &["v4.channel.k8s.io"]).await;
    assert_eq!(bad.code, 404, "{}", bad.head);
    assert!(bad.body.contains("token"), "{}", bad.body);
    let plain = streaming_client::request(&url, "POST", &[]).await;
    assert_eq!(plain.code, 400, "{}", plain.head);
    assert!(plain.body.contains("upgrade"), "{}", plain.body);
    let url = exec_url(rt, id, &["true"], false).await;
    let old = streaming_client::spdy(&url, &["v9.channel.example"]).await;
    assert_eq!(old.code, 403, "{}", old.head);
    assert!(
        old.body.contains("unable to negotiate protocol"),
        "{}",
        old.body
    );
    assert!(
        old.head.contains("X-Accepted-Stream-Protocol-Versions"),
        "{}",
        old.head
    );
    let err = rt
        .exec(cri::ExecRequest {
            container_id: "no-such-container".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect_err("exec in an unknown container");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

/// A GET through a SPDY port-forward to busybox httpd listening on 8080 in the pod.
async fn spdy_port_forward(rt: &mut RuntimeServiceClient<Channel>, pod: &str) {
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let up = streaming_client::spdy(&url, &["portforward.k8s.io"]).await;
    assert_eq!(up.code, 101, "{}{}", up.head, up.body);
    let mut c = SpdyClient::new(up.conn.expect("upgraded"));
    // httpd may still be starting: retry a few requests, each on its own stream pair.
    let mut last = String::new();
    for n in 0..20 {
        let rid = n.to_string();
        let error = c
            .open(&[
                ("streamType", "error"),
                ("port", "8080"),
                ("requestID", &rid),
            ])
            .await;
        c.data(error, &[], true).await;
        let data = c
            .open(&[
                ("streamType", "data"),
                ("port", "8080"),
                ("requestID", &rid),
            ])
            .await;
        c.data(data, b"GET /hostname HTTP/1.0\r\n\r\n", false).await;
        let mut got = Received::default();
        c.collect(&[data], LIMIT, &mut got).await;
        let text = printable(&got);
        last = format!("{text:?}");
        let body = text.get(&data).cloned().unwrap_or_default();
        if body.contains("200 OK") {
            assert!(body.ends_with("streampod\n"), "{body:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no HTTP answer through the port-forward: {last}");
}
