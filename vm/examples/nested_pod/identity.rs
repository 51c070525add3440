//! What must differ between pods restored from one VM template, read from inside each pod's
//! first container: the MAC of eth0 (in the guest and on the wire), the kernel's boot id,
//! the first random numbers the workload can get, and the wall clock, which must be the
//! host's. A template snapshot holds the guest's CRNG state, clock and (once read) boot id;
//! each restored VM must leave that behind at SetupSandbox (the agent reseeds the CRNG with
//! host entropy and steps the clock; hulld gives each pod its own MAC).

use std::collections::HashMap;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};

/// Shell lines the container runs (busybox) to print its identity, one `key value` a line.
/// `/proc/sys/kernel/random/uuid` is a fresh random UUID on every read, drawn from the
/// kernel's CRNG, the same generator getrandom(2) and /dev/urandom read from; the container
/// has no /dev of its own, and busybox has no getrandom applet.
pub const SCRIPT: &str = "echo \"mac $(ip -o link show dev eth0 | grep -o 'ether [0-9a-f:]*' | cut -d' ' -f2)\"; \
     echo \"boot_id $(cat /proc/sys/kernel/random/boot_id)\"; \
     echo \"random $(cat /proc/sys/kernel/random/uuid)$(cat /proc/sys/kernel/random/uuid)\"; \
     echo \"time $(date +%s)\"";

/// The busybox applets [`SCRIPT`] needs in the container's rootfs.
pub const APPLETS: &[&str] = &["ip", "grep", "cut", "cat", "date", "echo"];

/// One pod's identity as its container saw it, the host's clock around the container, and
/// the MAC the test host saw on the wire.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The pod's number and the MAC hulld's part (the client) gave it.
    pub pod: usize,
    pub want_mac: String,
    pub mac: String,
    pub boot_id: String,
    pub random: String,
    /// The guest's wall clock (whole seconds), and the host's before and after it was read.
    pub time: u64,
    pub host_before: u64,
    pub host_after: u64,
    /// From the test host's neighbour table after a ping.
    pub wire_mac: Option<String>,
}

/// Seconds since the epoch on the test host.
pub fn host_secs() -> anyhow::Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

/// Parses [`SCRIPT`]'s output (other lines are ignored) of pod `pod`, which was given
/// `want_mac`, read between the host times `before` and `after`.
pub fn parse(
    out: &str,
    pod: usize,
    want_mac: &str,
    (before, after): (u64, u64),
) -> anyhow::Result<Identity> {
    let fields: HashMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    let get = |k: &str| match fields.get(k) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => bail!("no {k} in the container's output {out:?}"),
    };
    Ok(Identity {
        pod,
        want_mac: want_mac.to_owned(),
        mac: get("mac")?,
        boot_id: get("boot_id")?,
        random: get("random")?,
        time: get("time")?.parse().context("time")?,
        host_before: before,
        host_after: after,
        wire_mac: None,
    })
}

/// Every identity check of every pod, each printed, all violations at once (so that one
/// broken property does not hide another): each pod's MAC is its own in the guest and on
/// the wire, its clock the host's, and no two pods share a MAC, boot id or random numbers.
pub fn check_all(ids: &[Identity]) -> anyhow::Result<()> {
    let mut violations = Vec::new();
    for id in ids {
        check_pod(id, &mut violations);
    }
    check_distinct(ids, &mut violations);
    for v in &violations {
        println!("NESTED-POD-VIOLATION {v}");
    }
    ensure!(
        violations.is_empty(),
        "restored pods are not distinct: {violations:?}"
    );
    Ok(())
}

fn check_pod(id: &Identity, violations: &mut Vec<String>) {
    let n = id.pod;
    // Read between `host_before` and `host_after`, give or take the truncation to seconds.
    // A restored guest whose clock was not stepped is behind by the time since the snapshot.
    let (before, after) = (id.host_before, id.host_after);
    if id.time + 1 >= before && id.time <= after + 1 {
        println!(
            "NESTED-POD pod {n}: guest clock is the host's ({} in {before}..={after})",
            id.time
        );
    } else {
        violations.push(format!(
            "pod {n}: guest clock {} is not the host's ({before}..={after})",
            id.time
        ));
    }
    if id.mac == id.want_mac {
        println!("NESTED-POD pod {n}: eth0 has the pod's own MAC {}", id.mac);
    } else {
        violations.push(format!(
            "pod {n}: eth0 has MAC {}, not the pod's {}",
            id.mac, id.want_mac
        ));
    }
    match &id.wire_mac {
        Some(w) if *w == id.want_mac => {
            println!("NESTED-POD pod {n}: MAC on the wire is the pod's own: {w}")
        }
        Some(w) => violations.push(format!(
            "pod {n}: the guest answers with MAC {w} on the wire, not its own {}",
            id.want_mac
        )),
        None => violations.push(format!("pod {n}: no MAC seen on the wire")),
    }
}

/// The MAC the test host learnt for `ip` on `dev` (its neighbour entry after a ping): the
/// guest's MAC on the wire.
pub fn wire_mac(dev: &str, ip: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["neigh", "show", ip, "dev", dev])
        .output()
        .context("ip neigh show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words
                .next()
                .map(str::to_owned)
                .context("lladdr without a MAC");
        }
    }
    bail!("no neighbour entry for {ip} on {dev}: {text:?}")
}

/// Forgets the test host's neighbour entries on `dev`, so the next pod's MAC is learnt anew.
pub fn flush_neighbours(dev: &str) -> anyhow::Result<()> {
    let st = Command::new("ip")
        .args(["neigh", "flush", "dev", dev])
        .status()
        .context("ip neigh flush")?;
    ensure!(st.success(), "ip neigh flush dev {dev} failed");
    Ok(())
}

/// One of an [`Identity`]'s fields that must differ between pods.
type Field = fn(&Identity) -> &str;

/// Every pair of pods differs in MAC, boot id and random numbers: one `NESTED-POD-UNIQUE`
/// line per property that holds.
fn check_distinct(ids: &[Identity], violations: &mut Vec<String>) {
    let props: [(&str, Field); 3] = [
        ("mac", |i| &i.mac),
        ("boot_id", |i| &i.boot_id),
        ("random", |i| &i.random),
    ];
    for (name, get) in props {
        let before = violations.len();
        for (a, x) in ids.iter().enumerate() {
            for y in &ids[a + 1..] {
                if get(x) == get(y) {
                    violations.push(format!(
                        "pods {} and {} share their {name}: {}",
                        x.pod,
                        y.pod,
                        get(x)
                    ));
                }
            }
        }
        if violations.len() == before {
            let all: Vec<&str> = ids.iter().map(get).collect();
            println!(
                "NESTED-POD-UNIQUE {name}: {} pods, all different: {all:?}",
                ids.len()
            );
        }
    }
}
