//! The self-test image as a Xen PV driver domain in the lab: on top of the
//! shared driver domain it runs the destructive NVMe disk test at boot, the
//! error-path self-checks, grants dom0 a page and answers the lab's grant and
//! event-channel checks (keys under `data/ferrite/test/`, lab/README.md).

use crate::disktest;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use driver_domain::{Image, PvNvme, Services, Xs};
use drivers::block::BlockDevice;
use log::{info, warn};
use xen::evtchn::EventOps;
use xen::gnttab::{CopyEnd, CopyOp, GrantOps, MapRequest};
use xen::shmem::SharedMem;
use xen::types::{DomId, EvtchnPort, GrantRef, Pfn};
use xen::xenstore::XsError;

/// How long the event-channel check waits for dom0's reply.
const EVTCHN_TEST_TIMEOUT_NS: u64 = 20_000_000_000;
/// Requests of the boot disk test (16 KiB each: 2 MiB from LBA 0).
const DISK_TEST_REQUESTS: usize = 128;

/// Byte `i` of the page dom0 grants us in the lab check.
pub fn dom0_pattern(i: usize) -> u8 {
    ((i * 131) + 17 + (i >> 8)) as u8
}
/// Byte `i` of the page we grant dom0.
pub fn our_pattern(i: usize) -> u8 {
    ((i * 29) + 5) as u8
}

pub struct LabChecks;

impl Image for LabChecks {
    /// Destructive: overwrites the first 2 MiB, write-zeroes and discards after it.
    fn check_nvme(&mut self, nvme: &mut PvNvme) -> Result<String, String> {
        let r = disktest::run(nvme, 16 * 1024, DISK_TEST_REQUESTS)?;
        Ok(format!(
            "pass: {} I/O queues, {} KiB written, flushed, read back and verified",
            nvme.queue_count(),
            r.bytes_written / 1024
        ))
    }

    fn before_ready(&mut self, s: &mut Services) {
        if let Err(e) = self_checks(s) {
            warn!("self-check: {e}");
        }
        if let Err(e) = offer_page_to_dom0(s) {
            warn!("could not grant a page to dom0: {e}");
        }
    }

    fn watches(&self) -> &'static [(&'static str, &'static str)] {
        &[("data/ferrite/test/request", "test")]
    }

    fn on_watch(&mut self, s: &mut Services, _token: &str) {
        on_test_request(s);
    }
}

fn read_u32(s: &mut Services, path: &str) -> Result<u32, String> {
    let v = s.xs.read_string(path).map_err(|e| format!("read {path}: {e:?}"))?;
    v.trim().parse::<u32>().map_err(|_| format!("{path} is not a number: {v:?}"))
}

fn on_test_request(s: &mut Services) {
    match s.xs.read_string("data/ferrite/test/request") {
        Ok(v) if v == "go" => {}
        _ => return, // initial watch event or cleared
    }
    let _ = s.xs.write("data/ferrite/test/request", "taken");
    let grant = read_u32(s, "data/ferrite/test/gref").map(GrantRef);
    let port = read_u32(s, "data/ferrite/test/port").map(EvtchnPort);
    let verdict = match &grant {
        Ok(g) => check_grant(s, *g),
        Err(e) => Err(e.clone()),
    };
    report(&mut s.xs, "grant", &verdict);
    let verdict = match port {
        Ok(p) => check_evtchn(s, p),
        Err(e) => Err(e),
    };
    report(&mut s.xs, "evtchn", &verdict);
}

/// Maps dom0's page, checks its pattern, copies it with GNTTABOP_copy,
/// signs it with `ferrite!` and unmaps it.
fn check_grant(s: &mut Services, gref: GrantRef) -> Result<String, String> {
    let req = [MapRequest { dom: DomId::DOM0, gref, readonly: false }];
    let m = s.grants.map_batch(&req).remove(0).map_err(|e| format!("map gref {gref}: {e:?}"))?;
    let page = s.grants.page(&m);
    let mut buf = vec![0u8; 4096];
    page.read(0, &mut buf);
    let bad = (0..4096).find(|&i| buf[i] != dom0_pattern(i));
    let copy = copy_check(s, gref);
    if bad.is_none() {
        page.write(0, b"ferrite!");
    }
    let un = s.grants.unmap_batch(&[m]).remove(0);
    if let Some(i) = bad {
        return Err(format!("byte {i} is {:#x}, expected {:#x}", buf[i], dom0_pattern(i)));
    }
    un.map_err(|e| format!("unmap: {e:?}"))?;
    let copied = copy?;
    info!("grant check: mapped dom0 gref {gref}, 4096 bytes match, grant copy of {copied} bytes matches, unmapped");
    Ok(String::from("ok"))
}

fn copy_check(s: &mut Services, gref: GrantRef) -> Result<usize, String> {
    let pfn = s.mm.lock().alloc_frame().map_err(|e| format!("no frame: {e:?}"))?;
    let op = CopyOp {
        src: CopyEnd::Grant { dom: DomId::DOM0, gref, offset: 8 },
        dst: CopyEnd::Local { pfn, offset: 0 },
        len: 4088,
    };
    let r = s.grants.copy_batch(&[op]).remove(0);
    let local = s.mm.lock().frame_page(pfn).map_err(|e| format!("{e:?}"))?;
    let mut buf = vec![0u8; 4088];
    local.read(0, &mut buf);
    s.mm.lock().free_frame(pfn);
    r.map_err(|e| format!("grant copy: {e:?}"))?;
    match (0..4088).find(|&i| buf[i] != dom0_pattern(i + 8)) {
        Some(i) => Err(format!("grant copy: byte {} differs", i + 8)),
        None => Ok(4088),
    }
}

/// Binds to dom0's port, sends one event and waits for one back.
fn check_evtchn(s: &mut Services, remote: EvtchnPort) -> Result<String, String> {
    let local =
        s.events.bind_interdomain(DomId::DOM0, remote).map_err(|e| format!("bind to dom0 port {remote}: {e:?}"))?;
    s.events.take_pending(local);
    let _ = s.xs.write("data/ferrite/test/evtchn", "sent");
    let r = s.events.send(local).map_err(|e| format!("send: {e:?}")).and_then(|()| {
        let deadline = runtime::time::now() + EVTCHN_TEST_TIMEOUT_NS;
        match s.events.wait_any(&[local], deadline) {
            Ok(true) => {
                s.events.take_pending(local);
                Ok(String::from("ok"))
            }
            Ok(false) => Err(String::from("timeout waiting for dom0's event")),
            Err(e) => Err(format!("poll: {e:?}")),
        }
    });
    let _ = s.events.close(local);
    if r.is_ok() {
        info!("event channel check: local port {local} <-> dom0 port {remote}, round trip ok");
    }
    r
}

/// Grants dom0 read access to one of our pages holding a pattern.
fn offer_page_to_dom0(s: &mut Services) -> Result<(), String> {
    let pfn: Pfn = s.mm.lock().alloc_frame().map_err(|e| format!("{e:?}"))?;
    let page = s.mm.lock().frame_page(pfn).map_err(|e| format!("{e:?}"))?;
    let data: alloc::vec::Vec<u8> = (0..4096).map(our_pattern).collect();
    page.write(0, &data);
    let gref = s.grants.grant_access(DomId::DOM0, pfn, true).map_err(|e| format!("{e:?}"))?;
    s.xs.write("data/ferrite/test/our-gref", format!("{gref}")).map_err(|e| format!("{e:?}"))?;
    info!("granted page (pfn {}) to dom0 as gref {gref}", pfn.0);
    Ok(())
}

/// Exercises error paths against the real hypervisor and xenstored:
/// each must come back as a typed error, never a hang or a panic.
fn self_checks(s: &mut Services) -> Result<(), String> {
    match s.xs.read_string("data/ferrite/no-such-node") {
        Err(XsError::Xs(e)) => info!("self-check: xenstore error reply for a missing node -> {e:?}"),
        other => return Err(format!("missing node read gave {other:?}")),
    }
    match s.events.send(EvtchnPort(4000)) {
        Err(e) => info!("self-check: EVTCHNOP_send on an unbound port -> {e}"),
        Ok(()) => return Err(String::from("send on an unbound port succeeded")),
    }
    match s.grants.map_batch(&[MapRequest { dom: DomId(0x7FF0), gref: GrantRef(1), readonly: true }]).remove(0) {
        Err(e) => info!("self-check: mapping a grant of an invalid domain -> {e:?}"),
        Ok(m) => {
            let _ = s.grants.unmap_batch(&[m]);
            return Err(String::from("bogus grant map succeeded"));
        }
    }
    Ok(())
}

fn report(xs: &mut Xs, key: &str, verdict: &Result<String, String>) {
    let value = match verdict {
        Ok(v) => v.clone(),
        Err(e) => {
            warn!("{key} check failed: {e}");
            format!("fail: {e}")
        }
    };
    if let Err(e) = xs.write(&format!("data/ferrite/test/{key}"), value) {
        warn!("cannot report {key}: {e:?}");
    }
}
