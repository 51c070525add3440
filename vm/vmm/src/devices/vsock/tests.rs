//! The vsock device driven through real queues in guest memory (MockSplitQueue) on one side
//! and real unix sockets on the other.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::packet::{HOST_CID, Op};
use super::*;
use crate::devices::test_utils::{add_chain, desc, used_entry};

const GUEST_CID: u64 = 3;
const RX_BUF: u64 = 0x1_0000;
const TX_BUF: u64 = 0x2_0000;

struct Rig<'a> {
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    worker: VsockWorker,
    mem: &'a GuestMemoryMmap,
    tx_next: u16,
    rx_next: u16,
    uds: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Holds the eventfds the worker's epoll watches.
    _activation: Activation,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap()
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let rx = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x5000), 16);
    let evq = MockSplitQueue::create(mem, GuestAddress(0x9000), 16);
    let queues = vec![
        rx.create_queue().unwrap(),
        tx.create_queue().unwrap(),
        evq.create_queue().unwrap(),
    ];
    let mut activation = Activation {
        mem: mem.clone(),
        queues,
        queue_evts: (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect::<Vec<_>>()
            .into(),
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: VIRTIO_F_VERSION_1,
        stop_evt: Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()),
        generation: 0,
        current: Arc::default(),
        exit: Arc::new(crate::exit::ExitSignal::new().unwrap()),
    };
    let listener = muxer::bind_listener(&uds).unwrap();
    let worker = make_worker(GUEST_CID, uds.clone(), listener, &mut activation)
        .map_err(|e| e.0)
        .unwrap();
    Rig {
        rx,
        tx,
        worker,
        mem,
        tx_next: 0,
        rx_next: 0,
        uds,
        _dir: dir,
        _activation: activation,
    }
}

fn hdr(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

impl Rig<'_> {
    /// The guest sends `h` + `payload` on TX.
    fn guest_send(&mut self, h: Header, payload: &[u8]) {
        let slot = u64::from(self.tx_next);
        let at = TX_BUF + slot * 0x1000;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + 44))
            .unwrap();
        let d = [desc(at, 44 + payload.len() as u32, false)];
        add_chain(&self.tx, &d, self.tx_next);
        self.tx_next += 1;
        self.worker.handle_event(TX as u64, EventSet::IN).unwrap();
    }

    /// The guest posts one 4 KiB RX buffer.
    fn post_rx(&mut self) {
        let at = RX_BUF + u64::from(self.rx_next) * 0x1000;
        add_chain(&self.rx, &[desc(at, 0x1000, true)], self.rx_next);
        self.rx_next += 1;
    }

    /// Packets the device has put in RX so far, from `from` on.
    fn guest_received(&self, from: u16) -> Vec<(Header, Vec<u8>)> {
        let used = self.rx.used().idx().load();
        (from..used)
            .map(|i| {
                let (id, len) = used_entry(&self.rx, i);
                let at = RX_BUF + u64::from(id) * 0x1000;
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
                let h = Header::parse(&b[..44], b.len() - 44).unwrap_or_else(|_| {
                    // Our own packets come from the host side: parse with swapped CIDs.
                    let mut sw = b[..44].to_vec();
                    sw.swap(0, 8);
                    Header::parse(&sw, b.len() - 44).unwrap()
                });
                (h, b[44..].to_vec())
            })
            .collect()
    }

    fn pump(&mut self) {
        for _ in 0..20 {
            self.worker.poll_once(20).unwrap();
        }
    }
}

#[test]
fn host_connect_handshake_and_data_both_ways() {
    let mem = memory();
    let mut r = rig(&mem);
    for _ in 0..8 {
        r.post_rx();
    }
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    r.pump();
    let got = r.guest_received(0);
    assert_eq!(got.len(), 1);
    let req = got[0].0;
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid),
        (Op::Request, 1024, GUEST_CID)
    );
    let host_port = req.src_port;
    // Guest accepts.
    r.guest_send(hdr(Op::Response, 1024, host_port, 0), &[]);
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut line = [0u8; 64];
    let n = host.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {host_port}\n").as_bytes());
    // Guest → host.
    r.guest_send(hdr(Op::Rw, 1024, host_port, 5), b"hello");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // Host → guest.
    host.write_all(b"world").unwrap();
    r.pump();
    let got = r.guest_received(1);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.len), (Op::Rw, 5));
    assert_eq!(got[0].1, b"world");
    // Host closes: the guest hears SHUTDOWN.
    drop(host);
    r.pump();
    let got = r.guest_received(2);
    assert_eq!(got.last().map(|p| p.0.op), Some(Op::Shutdown));
}

#[test]
fn guest_connect_to_listening_host_port() {
    let mem = memory();
    let mut r = rig(&mem);
    r.post_rx();
    r.post_rx();
    let listener = UnixListener::bind(format!("{}_5000", r.uds.display())).unwrap();
    r.guest_send(hdr(Op::Request, 777, 5000, 0), &[]);
    let got = r.guest_received(0);
    assert_eq!(got[0].0.op, Op::Response);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (5000, 777));
    let (mut s, _) = listener.accept().unwrap();
    r.guest_send(hdr(Op::Rw, 777, 5000, 3), b"abc");
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
    assert_eq!(r.worker.muxer.connections(), 1);
    r.guest_send(hdr(Op::Rst, 777, 5000, 0), &[]);
    assert_eq!(r.worker.muxer.connections(), 0);
}

#[test]
fn guest_connect_to_closed_port_is_reset() {
    let mem = memory();
    let mut r = rig(&mem);
    r.post_rx();
    r.guest_send(hdr(Op::Request, 777, 6000, 0), &[]);
    assert_eq!(r.guest_received(0)[0].0.op, Op::Rst);
}

#[test]
fn data_for_unknown_connection_gets_rst() {
    let mem = memory();
    let mut r = rig(&mem);
    r.post_rx();
    r.guest_send(hdr(Op::Rw, 1, 2, 4), b"junk");
    let got = r.guest_received(0);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (Op::Rst, 2, 1)
    );
}

#[test]
fn malformed_tx_packets_are_dropped() {
    let mem = memory();
    let mut r = rig(&mem);
    r.post_rx();
    // Claims 100 bytes of payload, chain holds 4.
    let mut h = hdr(Op::Rw, 1, 2, 100);
    r.guest_send(h, b"abcd");
    // Wrong source CID (spoofing another VM).
    h = hdr(Op::Request, 1, 2, 0);
    h.src_cid = 42;
    r.guest_send(h, &[]);
    // A chain shorter than a header.
    add_chain(&r.tx, &[desc(TX_BUF, 10, false)], r.tx_next);
    r.tx_next += 1;
    // A header pointing outside guest memory.
    add_chain(&r.tx, &[desc(0x10_0000, 44, false)], r.tx_next);
    r.tx_next += 1;
    r.worker.handle_event(TX as u64, EventSet::IN).unwrap();
    assert_eq!(r.tx.used().idx().load(), 4, "every chain is returned");
    assert_eq!(r.worker.rejected, 3);
    assert!(
        r.guest_received(0).is_empty(),
        "spoofed request gets no answer"
    );
    assert_eq!(r.worker.muxer.connections(), 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mem = memory();
    let mut r = rig(&mem);
    r.post_rx();
    let mut a = UnixStream::connect(&r.uds).unwrap();
    a.write_all(b"HELLO\n").unwrap();
    let mut b = UnixStream::connect(&r.uds).unwrap();
    b.write_all(&[b'x'; 40]).unwrap(); // no newline within 32 bytes
    r.pump();
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    for s in [&mut a, &mut b] {
        // Closed by the device: EOF, or a reset when it dropped our unread bytes.
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    assert!(r.guest_received(0).is_empty());
}

#[test]
fn host_data_respects_guest_credit() {
    let mem = memory();
    let mut r = rig(&mem);
    for _ in 0..8 {
        r.post_rx();
    }
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    r.pump();
    let port = r.guest_received(0)[0].0.src_port;
    let mut resp = hdr(Op::Response, 9, port, 0);
    resp.buf_alloc = 10; // the guest can take only 10 bytes
    r.guest_send(resp, &[]);
    host.write_all(&[7u8; 100]).unwrap();
    r.pump();
    let data: usize = r.guest_received(1).iter().map(|p| p.1.len()).sum();
    assert_eq!(data, 10);
}

#[test]
fn config_space_has_the_guest_cid() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Vsock::new(GUEST_CID, dir.path().join("v.sock")).unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), GUEST_CID);
    let mut far = [1u8; 4];
    dev.read_config(6, &mut far);
    assert_eq!(far, [0; 4], "reads past the end read as zero");
}

#[test]
fn a_queue_kick_is_consumed_so_an_idle_worker_sleeps() {
    let mem = memory();
    let mut r = rig(&mem);
    for q in [RX, TX, EVQ] {
        r.post_rx();
        r.worker.queue_evts[q].write(1).unwrap();
        assert!(r.worker.poll_once(0).unwrap());
        // Level-triggered epoll: an eventfd left readable would wake the worker forever.
        let mut events = [EpollEvent::default(); 8];
        let left = r.worker.muxer.epoll.wait(0, &mut events).unwrap();
        assert_eq!(
            left, 0,
            "queue {q}'s kick still pending after it was handled"
        );
    }
}
