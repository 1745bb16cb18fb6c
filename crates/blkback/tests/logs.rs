//! Log discipline (issue 11): whatever a guest does, each vbd logs a
//! bounded number of lines (`xen::ratelimit::LogLimit`, with the count of
//! suppressed lines), and other vbds' lines are not crowded out.

use blkback::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use xen::evtchn::EventOps;

/// Lines that name vbd `dom`.
fn about(lines: &[String], dom: u16) -> usize {
    let tag = format!("vbd/{dom}/");
    lines.iter().filter(|l| l.contains(&tag)).count()
}

#[test]
fn a_thousand_bad_frontend_state_writes_log_a_bounded_number_of_lines() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(1, Opts::default());
    let bad = ["2", "7", "-1", "banana", "", "4294967301", "3\u{1b}[2J", "0", "9"];
    let ((), lines) = capture_logs(|| {
        for i in 0..1000 {
            w.fe_write(0, "state", bad[i % bad.len()]);
            w.pump();
        }
    });
    let n = about(&lines, 5);
    assert!(n <= 12, "{n} lines for 1000 bad state writes: {:#?}", &lines[..lines.len().min(40)]);
    // The other guest is still served, and still heard.
    let ((), lines) = capture_logs(|| {
        w.fe_state(1, 6);
    });
    assert!(about(&lines, 6) >= 1, "{lines:?}");
}

#[test]
fn a_thousand_refused_requests_and_bad_grants_log_a_bounded_number_of_lines() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let ((), lines) = capture_logs(|| {
        for i in 0..1000u64 {
            let f = &mut w.fronts[0];
            let req = match i % 3 {
                // Past the end of the disk.
                0 => f.rw(BLKIF_OP_READ, DISK_SECTORS, &[(0, 7)], 0, false).0,
                // Unknown operation.
                1 => enc_rw(f.abi, 0x77, f.id(), 0, &[]),
                // A grant that was never given.
                _ => enc_rw(
                    f.abi,
                    BLKIF_OP_WRITE,
                    f.id(),
                    0,
                    &[blkback::abi::Segment { gref: 7777, first_sect: 0, last_sect: 7 }],
                ),
            };
            let rsp = w.io(0, 0, &[req]);
            assert_eq!(rsp.len(), 1);
            assert_ne!(rsp[0].status, 0);
        }
    });
    let n = about(&lines, 5);
    assert!(n <= 12, "{n} lines for 1000 refused requests: {:#?}", &lines[..lines.len().min(40)]);
    assert!(n >= 2, "refusals are still logged: {lines:?}");
    // Later, the next refusal is logged again, with the count of those
    // suppressed meanwhile.
    let later = w.e.now() + 6_000_000_000;
    let _ = w.e.wait_any(&[], later);
    let ((), lines) = capture_logs(|| {
        let f = &mut w.fronts[0];
        let req = enc_rw(f.abi, 0x77, f.id(), 0, &[]);
        assert_eq!(w.io(0, 0, &[req]).len(), 1);
    });
    assert!(
        lines.iter().any(|l| l.contains("vbd/5/") && l.contains("suppressed)")),
        "a refusal after a pause is logged with the suppressed count: {lines:?}"
    );
}

#[test]
fn reconnect_storms_log_a_bounded_number_of_lines() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    let ((), lines) = capture_logs(|| {
        for _ in 0..200 {
            w.connect(0, Opts::default());
            w.fe_state(0, 5);
            w.fe_state(0, 6);
            w.fe_state(0, 1);
        }
    });
    let n = about(&lines, 5);
    assert!(n <= 40, "{n} lines for 200 reconnects: {:#?}", &lines[..lines.len().min(60)]);
}
