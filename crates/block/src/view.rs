//! One device shared by several vbds, each through a [`View`] of its own
//! extent (STYLE.md §12: a partition is a view that offsets its start and
//! narrows its length).
//!
//! A view checks every request against its extent before the device sees
//! it and translates the LBA; the device's completions are routed back to
//! the view that submitted them (by token), with the view's own LBA
//! restored, so a vbd can never address, nor receive, another's blocks.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use drivers::block::{BlockCompletion, BlockDevice, BlockRequest, Features, Token, Volumes};
use drivers::hal::Nanos;
use drivers::inflight::ByToken;
use drivers::Error;

/// A contiguous run of a device's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First device block.
    pub start: u64,
    /// Length in device blocks (non-zero for a usable extent).
    pub blocks: u64,
}

impl Extent {
    /// The device's blocks `[start, start + blocks)`.
    pub const fn new(start: u64, blocks: u64) -> Self {
        Extent { start, blocks }
    }

    /// One past the last block (saturating: a hostile table cannot wrap).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.blocks)
    }

    /// True if the two extents share a block.
    pub fn overlaps(&self, other: &Extent) -> bool {
        self.blocks > 0 && other.blocks > 0 && self.start < other.end() && other.start < self.end()
    }

    /// The device LBA of view block `lba` when `[lba, lba + n)` lies inside
    /// the extent; `None` otherwise (and for `n == 0`).
    pub fn translate(&self, lba: u64, n: u64) -> Option<u64> {
        let end = lba.checked_add(n)?;
        (n > 0 && end <= self.blocks).then(|| self.start + lba)
    }
}

/// Who submitted a token, and the offset to take back off its LBA.
#[derive(Clone, Copy)]
struct Owner {
    view: u32,
    offset: u64,
}

/// Limits how many foreign completions one `poll` moves to other views'
/// inboxes before it gives up for this turn.
const ROUTE_BUDGET: usize = 4096;

/// The device behind a set of views.
pub struct Shared<D: Volumes> {
    dev: D,
    /// Who submitted each token in flight (in submission order: a
    /// completion's owner is found at the front).
    owners: ByToken<Owner>,
    /// Per view id: per queue, completions that arrived while another view polled.
    inboxes: BTreeMap<u32, Vec<VecDeque<BlockCompletion<D::Buffer>>>>,
    /// Completions waiting in all inboxes (none: a poll skips the inboxes).
    parked: usize,
    next_view: u32,
}

impl<D: Volumes> Shared<D> {
    /// Wraps a device for sharing.
    pub fn new(dev: D) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Shared {
            dev,
            owners: ByToken::default(),
            inboxes: BTreeMap::new(),
            parked: 0,
            next_view: 0,
        }))
    }

    /// The device itself (information, maintenance).
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device itself, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Requests submitted through views and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.owners.len() + self.parked
    }
}

/// One vbd's window onto a shared device.
pub struct View<D: Volumes> {
    shared: Rc<RefCell<Shared<D>>>,
    id: u32,
    volume: usize,
    block_size: u32,
    extent: Extent,
    readonly: bool,
    /// The registry's claim on the extent, released with the view.
    claim: Option<crate::registry::Claim>,
}

impl<D: Volumes> View<D> {
    /// A view of `extent` of volume `volume` (which must lie inside it: checked).
    pub fn new(shared: &Rc<RefCell<Shared<D>>>, volume: usize, extent: Extent, readonly: bool) -> Option<Self> {
        let mut s = shared.borrow_mut();
        let (block_size, blocks) = s.dev.volume_geometry(volume)?;
        if extent.blocks == 0 || extent.end() > blocks || extent.start.checked_add(extent.blocks).is_none() {
            return None;
        }
        let id = s.next_view;
        s.next_view = s.next_view.checked_add(1)?;
        let queues = usize::from(s.dev.queue_count().max(1));
        s.inboxes.insert(id, (0..queues).map(|_| VecDeque::new()).collect());
        drop(s);
        Some(View { shared: shared.clone(), id, volume, block_size, extent, readonly, claim: None })
    }

    /// Ties a registry claim to this view: it is released when the view is dropped.
    pub(crate) fn hold(&mut self, claim: crate::registry::Claim) {
        self.claim = Some(claim);
    }

    /// The extent this view serves.
    pub fn extent(&self) -> Extent {
        self.extent
    }

    /// True if writes, discards and write-zeroes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The shared device behind the view.
    pub fn shared(&self) -> &Rc<RefCell<Shared<D>>> {
        &self.shared
    }

    /// Blocks a request addresses and its LBA field, or `None` for flush.
    fn span(&self, block_size: u32, r: &BlockRequest<D::Buffer>) -> Option<(u64, u64)>
    where
        D::Buffer: AsRef<[u8]>,
    {
        match r {
            BlockRequest::Read { lba, buffer } | BlockRequest::Write { lba, buffer, .. } => {
                // Rounded up: a partial last block still counts against the extent.
                Some((*lba, buffer.as_ref().len().div_ceil(block_size.max(1) as usize) as u64))
            }
            BlockRequest::ReadSg { lba, sg } | BlockRequest::WriteSg { lba, sg, .. } => {
                Some((*lba, drivers::block::sg_len(sg).div_ceil(block_size.max(1) as usize) as u64))
            }
            BlockRequest::Discard { lba, blocks } | BlockRequest::WriteZeroes { lba, blocks } => Some((*lba, *blocks)),
            BlockRequest::Flush => None,
        }
    }
}

fn shift<B>(r: &mut BlockRequest<B>, f: impl Fn(u64) -> u64) {
    match r {
        BlockRequest::Read { lba, .. }
        | BlockRequest::Write { lba, .. }
        | BlockRequest::ReadSg { lba, .. }
        | BlockRequest::WriteSg { lba, .. }
        | BlockRequest::Discard { lba, .. }
        | BlockRequest::WriteZeroes { lba, .. } => *lba = f(*lba),
        BlockRequest::Flush => {}
    }
}

impl<D: Volumes> Drop for View<D> {
    fn drop(&mut self) {
        // Completions still owed to this view are dropped when they arrive
        // (the device is done with their buffers by then).
        if let Ok(mut s) = self.shared.try_borrow_mut() {
            let gone = s.inboxes.remove(&self.id).map_or(0, |q| q.iter().map(VecDeque::len).sum::<usize>());
            s.parked = s.parked.saturating_sub(gone);
        }
    }
}

impl<D: Volumes> BlockDevice for View<D>
where
    D::Buffer: AsRef<[u8]>,
{
    type Buffer = D::Buffer;

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn capacity(&self) -> u64 {
        self.extent.blocks
    }

    fn queue_count(&self) -> u16 {
        self.shared.borrow().dev.queue_count()
    }

    fn max_transfer(&self) -> usize {
        self.shared.borrow().dev.max_transfer()
    }

    fn features(&self) -> Features {
        let f = self.shared.borrow().dev.features();
        if self.readonly {
            Features { volatile_cache: false, discard: false, write_zeroes: false }
        } else {
            f
        }
    }

    fn submit(
        &mut self,
        queue: u16,
        mut r: BlockRequest<D::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<D::Buffer>)> {
        let writes = !matches!(r, BlockRequest::Read { .. } | BlockRequest::ReadSg { .. } | BlockRequest::Flush);
        if self.readonly && writes {
            return Err((Error::NotSupported, r));
        }
        let mut s = self.shared.borrow_mut();
        let offset = self.extent.start;
        if let Some((lba, n)) = self.span(self.block_size, &r) {
            if self.extent.translate(lba, n).is_none() {
                return Err((Error::OutOfRange, r));
            }
            shift(&mut r, |l| l + offset);
        }
        match s.dev.submit_to(self.volume, queue, r) {
            Ok(t) => {
                s.owners.insert(t.0, Owner { view: self.id, offset });
                Ok(t)
            }
            Err((e, mut r)) => {
                shift(&mut r, |l| l - offset);
                Err((e, r))
            }
        }
    }

    fn scatter_gather(&self) -> bool {
        self.shared.borrow().dev.scatter_gather()
    }

    fn accepts_sg(&self, sg: &[drivers::block::SgEntry]) -> bool {
        self.shared.borrow().dev.accepts_sg(sg)
    }

    fn poll(&mut self, queue: u16, now: Nanos) -> Option<BlockCompletion<D::Buffer>> {
        let mut s = self.shared.borrow_mut();
        if s.parked > 0 {
            let mine = s.inboxes.get_mut(&self.id).and_then(|q| q.get_mut(usize::from(queue)));
            if let Some(c) = mine.and_then(VecDeque::pop_front) {
                s.parked = s.parked.saturating_sub(1);
                return Some(c);
            }
        }
        for _ in 0..ROUTE_BUDGET {
            let mut c = s.dev.poll(queue, now)?;
            let Some(owner) = s.owners.remove(c.token.0) else {
                continue; // not submitted through a view: nobody to give it to
            };
            shift(&mut c.request, |l| l - owner.offset);
            if owner.view == self.id {
                return Some(c);
            }
            if let Some(q) = s.inboxes.get_mut(&owner.view).and_then(|q| q.get_mut(usize::from(queue))) {
                q.push_back(c);
                s.parked += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use drivers::block::RamDisk;

    type Ram = RamDisk<Vec<u8>>;

    fn setup() -> (Rc<RefCell<Shared<Ram>>>, View<Ram>, View<Ram>) {
        let shared = Shared::new(RamDisk::new(512, 100, 2, 8));
        let a = View::new(&shared, 0, Extent::new(10, 20), false).unwrap();
        let b = View::new(&shared, 0, Extent::new(30, 20), false).unwrap();
        (shared, a, b)
    }

    fn run(v: &mut View<Ram>, r: BlockRequest<Vec<u8>>) -> Result<BlockCompletion<Vec<u8>>, Error> {
        let t = v.submit(0, r).map_err(|(e, _)| e)?;
        let c = v.poll(0, 0).expect("a completion");
        assert_eq!(c.token, t);
        Ok(c)
    }

    #[test]
    fn extent_math() {
        let e = Extent::new(10, 20);
        assert_eq!(e.translate(0, 20), Some(10));
        assert_eq!(e.translate(19, 1), Some(29));
        assert_eq!(e.translate(19, 2), None);
        assert_eq!(e.translate(0, 0), None);
        assert_eq!(e.translate(u64::MAX, 2), None);
        assert!(e.overlaps(&Extent::new(29, 5)));
        assert!(!e.overlaps(&Extent::new(30, 5)));
        assert!(!e.overlaps(&Extent::new(0, 10)));
        assert!(!e.overlaps(&Extent::new(15, 0)));
    }

    #[test]
    fn views_translate_and_stay_inside() {
        let (shared, mut a, mut b) = setup();
        run(&mut a, BlockRequest::Write { lba: 0, buffer: vec![0xA; 512 * 20], fua: false }).unwrap();
        run(&mut b, BlockRequest::Write { lba: 0, buffer: vec![0xB; 512 * 20], fua: false }).unwrap();
        let disk = shared.borrow().device().contents().to_vec();
        assert!(disk[..10 * 512].iter().all(|&x| x == 0));
        assert!(disk[10 * 512..30 * 512].iter().all(|&x| x == 0xA));
        assert!(disk[30 * 512..50 * 512].iter().all(|&x| x == 0xB));
        assert!(disk[50 * 512..].iter().all(|&x| x == 0));
        // one block past the end, and a range that wraps
        assert_eq!(run(&mut a, BlockRequest::Read { lba: 20, buffer: vec![0; 512] }).unwrap_err(), Error::OutOfRange);
        assert_eq!(run(&mut a, BlockRequest::Read { lba: 19, buffer: vec![0; 1024] }).unwrap_err(), Error::OutOfRange);
        assert_eq!(run(&mut a, BlockRequest::Discard { lba: u64::MAX, blocks: 2 }).unwrap_err(), Error::OutOfRange);
        // A buffer with a partial block past the end is checked as a whole block.
        let e = a.submit(0, BlockRequest::Read { lba: 19, buffer: vec![0; 600] }).unwrap_err();
        assert_eq!(e.0, Error::OutOfRange);
        let c = run(&mut a, BlockRequest::Read { lba: 19, buffer: vec![0; 512] }).unwrap();
        assert_eq!(c.request, BlockRequest::Read { lba: 19, buffer: vec![0xA; 512] }, "LBA given back in view terms");
    }

    #[test]
    fn completions_reach_their_own_view() {
        let (shared, mut a, mut b) = setup();
        let ta = a.submit(0, BlockRequest::Read { lba: 1, buffer: vec![0; 512] }).unwrap();
        let tb = b.submit(0, BlockRequest::Read { lba: 2, buffer: vec![0; 512] }).unwrap();
        // b polls first: a's completion is parked for a
        let cb = b.poll(0, 0).unwrap();
        assert_eq!((cb.token, cb.request.buffer().map(|_| ())), (tb, Some(())));
        assert!(b.poll(0, 0).is_none());
        assert_eq!(shared.borrow().in_flight(), 1);
        let ca = a.poll(0, 0).unwrap();
        assert_eq!(ca.token, ta);
        assert!(matches!(ca.request, BlockRequest::Read { lba: 1, .. }));
        assert_eq!(shared.borrow().in_flight(), 0);
    }

    #[test]
    fn readonly_refuses_every_write_kind() {
        let shared = Shared::new(RamDisk::new(512, 100, 1, 8));
        let mut r = View::new(&shared, 0, Extent::new(0, 100), true).unwrap();
        for req in [
            BlockRequest::Write { lba: 0, buffer: vec![1; 512], fua: true },
            BlockRequest::Discard { lba: 0, blocks: 1 },
            BlockRequest::WriteZeroes { lba: 0, blocks: 1 },
        ] {
            assert_eq!(r.submit(0, req).unwrap_err().0, Error::NotSupported);
        }
        assert!(r.submit(0, BlockRequest::Read { lba: 0, buffer: vec![1; 512] }).is_ok());
        assert!(shared.borrow().device().contents().iter().all(|&x| x == 0));
        assert!(!r.features().discard);
    }

    #[test]
    fn views_must_fit_the_device() {
        let shared = Shared::new(RamDisk::<Vec<u8>>::new(512, 100, 1, 8));
        assert!(View::new(&shared, 0, Extent::new(90, 11), false).is_none());
        assert!(View::new(&shared, 0, Extent::new(0, 0), false).is_none());
        assert!(View::new(&shared, 0, Extent::new(u64::MAX, 2), false).is_none());
        assert!(View::new(&shared, 0, Extent::new(90, 10), false).is_some());
    }

    #[test]
    fn dropped_view_loses_only_its_own_completions() {
        let (_shared, mut a, b) = setup();
        let mut b = b;
        b.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).unwrap();
        drop(b);
        let t = a.submit(0, BlockRequest::Read { lba: 0, buffer: vec![0; 512] }).unwrap();
        assert_eq!(a.poll(0, 0).unwrap().token, t);
        assert!(a.poll(0, 0).is_none());
    }
}
