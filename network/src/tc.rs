//! Kata's "tcfilter" model, in-process over rtnetlink: an ingress qdisc on eth0 and on the
//! tap, and on each a `u32 match u8 0 0` filter (matches every frame) whose action is
//! `mirred egress redirect` to the other device. Frames arriving on eth0 (from the veth
//! peer) leave through the tap to the VMM, and frames the VMM writes into the tap leave
//! through eth0. The host has no `matchall`/`flower` classifier, hence u32.
//!
//! Removing an ingress qdisc removes its filters, so teardown deletes the two qdiscs.

use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirrorActionType, TcOption,
};

use crate::netlink::{NetnsLink, errno};

/// Parent handle of the ingress qdisc (`ffff:`), as a u32.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// Tries to add an ingress qdisc while the kernel answers EBUSY (Kata retries too).
const QDISC_ATTEMPTS: u32 = 5;

/// Errors of tc setup.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("Failed to add the ingress qdisc on ifindex {ifindex}")]
    AddQdisc {
        ifindex: u32,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("Failed to add the redirect filter {from} -> {to}")]
    AddFilter {
        from: u32,
        to: u32,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("Failed to delete the ingress qdisc on ifindex {ifindex}")]
    DelQdisc {
        ifindex: u32,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("Failed to list the filters on ifindex {ifindex}")]
    ListFilters {
        ifindex: u32,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("Interface index {0} does not fit the tc API")]
    BadIndex(u32),
}

fn tc_index(ifindex: u32) -> Result<i32, TcError> {
    i32::try_from(ifindex).map_err(|_| TcError::BadIndex(ifindex))
}

/// `ETH_P_ALL` in network byte order, as `protocol all` is sent.
fn protocol_all() -> u16 {
    u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be()
}

/// Installs the ingress qdiscs and the redirect filters both ways between `a` and `b`.
/// On error, what was added is removed again.
pub async fn add_mirroring(link: &NetnsLink, a: u32, b: u32) -> Result<(), TcError> {
    let res = async {
        add_ingress_qdisc(link, a).await?;
        add_ingress_qdisc(link, b).await?;
        add_redirect(link, a, b).await?;
        add_redirect(link, b, a).await
    }
    .await;
    if res.is_err() {
        let _ = remove_mirroring(link, &[a, b]).await;
    }
    res
}

async fn add_ingress_qdisc(link: &NetnsLink, ifindex: u32) -> Result<(), TcError> {
    let index = tc_index(ifindex)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match link.handle().qdisc().add(index).ingress().execute().await {
            Ok(()) => return Ok(()),
            Err(e) if errno(&e) == Some(libc::EBUSY) && attempt < QDISC_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
            }
            Err(source) => {
                return Err(TcError::AddQdisc {
                    ifindex,
                    source: Box::new(source),
                });
            }
        }
    }
}

async fn add_redirect(link: &NetnsLink, from: u32, to: u32) -> Result<(), TcError> {
    let err = |source| TcError::AddFilter {
        from,
        to,
        source: Box::new(source),
    };
    link.handle()
        .traffic_filter(tc_index(from)?)
        .add()
        .parent(INGRESS_PARENT)
        .protocol(protocol_all())
        .redirect(to)
        .map_err(err)?
        .execute()
        .await
        .map_err(err)
}

/// Deletes the ingress qdiscs (and with them the filters) of the given interfaces.
/// Missing qdiscs or interfaces are fine; the first other error is returned after trying all.
pub async fn remove_mirroring(link: &NetnsLink, ifindices: &[u32]) -> Result<(), TcError> {
    let mut first_err = None;
    for &ifindex in ifindices {
        let index = tc_index(ifindex)?;
        let mut req = link.handle().qdisc().del(index);
        req.message_mut().header.parent = TcHandle::INGRESS;
        req.message_mut().header.handle = TcHandle::from(INGRESS_PARENT);
        match req.execute().await {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {}
            Err(source) => {
                first_err.get_or_insert(TcError::DelQdisc {
                    ifindex,
                    source: Box::new(source),
                });
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The interface indices that ingress filters on `ifindex` redirect to with
/// `mirred egress redirect` (for CHECK and tests).
pub async fn redirect_targets(link: &NetnsLink, ifindex: u32) -> Result<Vec<u32>, TcError> {
    let index = tc_index(ifindex)?;
    let mut stream = link
        .handle()
        .traffic_filter(index)
        .get()
        .ingress()
        .execute();
    let mut targets = Vec::new();
    loop {
        match stream.try_next().await {
            Ok(Some(msg)) => targets.extend(mirred_targets(&msg)),
            Ok(None) => break,
            Err(e) if matches!(errno(&e), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => {
                break;
            }
            Err(source) => {
                return Err(TcError::ListFilters {
                    ifindex,
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(targets)
}

fn mirred_targets(msg: &TcMessage) -> Vec<u32> {
    let is_u32 = msg
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "u32"));
    if !is_u32 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for attr in &msg.attributes {
        let TcAttribute::Options(opts) = attr else {
            continue;
        };
        for opt in opts {
            let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
                continue;
            };
            for action in actions {
                for aattr in &action.attributes {
                    let TcActionAttribute::Options(aopts) = aattr else {
                        continue;
                    };
                    for aopt in aopts {
                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = aopt
                            && m.eaction == TcMirrorActionType::EgressRedir
                        {
                            out.push(m.ifindex);
                        }
                    }
                }
            }
        }
    }
    out
}
