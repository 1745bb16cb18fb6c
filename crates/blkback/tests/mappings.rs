//! Bounded mappings (issue 11): ring pages and persistent grants of all
//! vbds together stay within `MAX_MAPPINGS`; busy guests with full
//! persistent caches cannot keep the next guest from connecting: their
//! caches shrink to a fair share, least recently used first.

use blkback::abi::BLKIF_OP_WRITE;
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use blkback::{MAX_MAPPINGS, MAX_PERSISTENT_PER_RING};
use xen::gnttab::{GrantError, GrantOps};
use xen::types::GrantRef;

/// Five 256-segment indirect writes: 1285 distinct persistent grants.
fn fill_cache(w: &mut World<drivers::block::RamDisk<Buf>>, fi: usize, seed: u32) {
    for k in 0..5u32 {
        let f = &mut w.fronts[fi];
        let (req, id, _) = f.indirect(BLKIF_OP_WRITE, u64::from(k) * 256 * 8 % DISK_SECTORS, 256, seed + k * 1000);
        assert_eq!(w.io(fi, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
        assert!(w.blk.mappings() <= MAX_MAPPINGS, "{} mappings", w.blk.mappings());
    }
}

/// Grants of all frontends the backend still has mapped (ends every
/// other grant: call last).
fn mapped_in_hub(w: &mut World<drivers::block::RamDisk<Buf>>) -> usize {
    let mut still = 0;
    for f in w.fronts.iter_mut() {
        for g in f.granted.clone() {
            match f.g.end_access(GrantRef(g)) {
                Ok(()) => {
                    f.granted.remove(&g);
                }
                Err(GrantError::InUse) => still += 1,
                Err(e) => panic!("grant {g}: {e:?}"),
            }
        }
    }
    still
}

#[test]
fn busy_guests_cannot_keep_the_next_one_from_connecting() {
    // Enough busy guests that their full caches would exceed the budget.
    let busy = MAX_MAPPINGS / MAX_PERSISTENT_PER_RING + 1;
    let doms: Vec<u16> = (0..=busy as u16).map(|d| 5 + d).collect();
    let mut w = world(ram(1), BackendConfig::default(), &doms);
    for fi in 0..busy {
        w.attach(fi);
        w.connect(fi, Opts { persistent: true, ..Opts::default() });
        fill_cache(&mut w, fi, fi as u32 * 7);
    }
    assert!(w.blk.mappings() > MAX_MAPPINGS / 2, "the caches are in use");
    // The next guest connects, is served and gets its share.
    let next = busy;
    w.attach(next);
    w.connect(next, Opts { persistent: true, ..Opts::default() });
    w.write_read_back(next, 0, 0, 99);
    fill_cache(&mut w, next, 5000);
    let share = (MAX_MAPPINGS - (busy + 1) - 264) / (busy + 1);
    let (req, id, _) = w.fronts[next].rw(BLKIF_OP_WRITE, 0, &[(0, 7)], 3, true);
    assert_eq!(w.io(next, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    let hits_before = w.blk.stats.persistent_hits;
    assert_eq!(w.io(next, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    assert!(w.blk.stats.persistent_hits > hits_before, "the new guest's cache works");
    // The older guests are still served too.
    for fi in 0..busy {
        w.write_read_back(fi, 0, 1024, fi as u32);
    }
    assert!(w.blk.mappings() <= MAX_MAPPINGS);
    assert!(w.blk.mappings() <= (busy + 1) * (share + 1), "each ring within its share");
    // The hub agrees with the backend's count.
    let in_hub = mapped_in_hub(&mut w);
    assert_eq!(in_hub, w.blk.mappings(), "every mapping accounted for");
    assert!(in_hub <= MAX_MAPPINGS);
}

#[test]
fn shares_grow_back_when_a_guest_leaves() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6, 7, 8, 9]);
    for fi in 0..5 {
        w.attach(fi);
        w.connect(fi, Opts { persistent: true, ..Opts::default() });
    }
    for fi in 0..4 {
        w.fe_state(fi, 6);
    }
    fill_cache(&mut w, 4, 1);
    assert_eq!(w.blk.mappings(), 1 + MAX_PERSISTENT_PER_RING, "a ring alone keeps the per-ring bound");
}

/// Ring pages are never evicted: a ring whose pages no longer fit the
/// budget is refused (the frontend sees an error, nothing is mapped for
/// it); the guests already connected keep working.
#[test]
fn ring_pages_beyond_the_budget_are_refused() {
    let cfg = BackendConfig { max_queues: 16, ..BackendConfig::default() };
    let big = Opts { queues: 16, order: Some(4), ..Opts::default() };
    let per_vbd = 16 * 16;
    let fit = (MAX_MAPPINGS - 264) / per_vbd;
    let doms: Vec<u16> = (0..=fit as u16).map(|d| 5 + d).collect();
    let mut w = world(ram(1), cfg, &doms);
    for fi in 0..fit {
        w.attach(fi);
        w.connect(fi, big);
    }
    assert_eq!(w.blk.mappings(), fit * per_vbd);
    let last = fit;
    w.attach(last);
    w.connect_initialised(last, big);
    assert_ne!(w.be_state(last).as_deref(), Some("4"), "refused");
    assert!(w.be(last, "error").is_some_and(|e| e.contains("map")), "{:?}", w.be(last, "error"));
    assert_eq!(w.blk.mappings(), fit * per_vbd, "nothing mapped for the refused ring");
    assert!(w.blk.mappings() <= MAX_MAPPINGS);
    w.write_read_back(0, 15, 0, 1);
}
