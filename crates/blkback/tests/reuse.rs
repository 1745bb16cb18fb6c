//! Disk buffers of finished requests are reused for writes without a
//! zero-fill: a reused buffer that last held another guest's data carries
//! only the writer's bytes to the disk (its segments overwrite all of it),
//! by grant copy and by persistent mapping, with partial-page segments.

use blkback::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;

fn reuse(persistent: bool) {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    for fi in 0..2 {
        w.attach(fi);
        w.connect(fi, Opts { persistent, ..Opts::default() });
    }
    // Partial pages: 6 + 8 + 1 sectors, a buffer of 7680 bytes. Seeds 0x11
    // and 0x77: no sector of one pattern equals a sector of the other.
    let spans = [(1u8, 6u8), (0, 7), (3, 3)];
    // Guest A writes its data, then reads it back: the read's buffer, full
    // of A's bytes, is kept as a spare.
    let (req, id, a_segs) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &spans, 0x11, true);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    let (req, id, _) = w.fronts[0].rw(BLKIF_OP_READ, 64, &spans, 0, false);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_READ)]);
    let a = seg_bytes(&a_segs);
    let reused = w.blk.stats.buffers_reused;
    // Guest B writes the same amount elsewhere: into a reused buffer.
    let (req, id, b_segs) = w.fronts[1].rw(BLKIF_OP_WRITE, 512, &spans, 0x77, true);
    assert_eq!(w.io(1, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    assert!(w.blk.stats.buffers_reused > reused, "the write took a spare buffer");
    let b = seg_bytes(&b_segs);
    let disk = w.disk().contents().to_vec();
    assert_eq!(&disk[512 * SECT..512 * SECT + b.len()], &b[..], "B's blocks hold exactly B's bytes");
    assert_eq!(&disk[64 * SECT..64 * SECT + a.len()], &a[..], "A's blocks unchanged");
    // Nowhere but in A's blocks is any sector of A's data.
    for (k, sector) in a.chunks(SECT).enumerate() {
        let hits: Vec<usize> = disk.chunks(SECT).enumerate().filter(|(_, s)| *s == sector).map(|(i, _)| i).collect();
        assert_eq!(hits, [64 + k], "A's sector {k} found elsewhere");
    }
    // Reads never take a spare: B reads its blocks back, then A's read
    // still sees only A's data.
    let (req, id, r_segs) = w.fronts[1].rw(BLKIF_OP_READ, 512, &spans, 0, false);
    assert_eq!(w.io(1, 0, &[req]), [okay(id, BLKIF_OP_READ)]);
    assert_eq!(seg_bytes(&r_segs), b);
    let (req, id, r_segs) = w.fronts[0].rw(BLKIF_OP_READ, 64, &spans, 0, false);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_READ)]);
    assert_eq!(seg_bytes(&r_segs), a);
}

#[test]
fn reused_write_buffer_carries_only_the_writers_bytes_grant_copy() {
    reuse(false);
}

#[test]
fn reused_write_buffer_carries_only_the_writers_bytes_persistent() {
    reuse(true);
}
