//! Typed PV-IOMMU calls over a [`Transport`].

use crate::abi::{
    self, alloc_flags, errno, free_flags, subop, Alloc, Capabilities, Free, Init, MapPages, ReattachDevice, RemoteCmd,
    UnmapPages,
};
use crate::error::{Error, PartialError};
use crate::types::{CtxNo, Dfn, DomId, Gfn, PciSbdf, PAGE_SIZE_4K};

/// Issues `__HYPERVISOR_iommu_op`.
///
/// The real implementation (in the runtime's HAL) passes `arg.as_mut_ptr()`
/// as the guest handle; host fakes may run a hypervisor model directly.
pub trait Transport {
    /// Runs `subop` with `arg` as its in/out argument; returns Xen's result
    /// (0 or positive on success, `-errno` on failure).
    fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64;

    /// Runs `remote_cmd`: `cmd` is an encoded [`RemoteCmd`] whose `arg`
    /// handle must reach `inner`, the inner sub-op's argument.
    ///
    /// The default stores `inner`'s address as the handle (what a PV guest
    /// passes to Xen) and calls [`Transport::iommu_op`]; `inner` stays
    /// borrowed, hence alive and unmoved, for the whole call. Fakes that
    /// cannot follow an address override this.
    fn iommu_op_remote(&mut self, cmd: &mut [u8; RemoteCmd::SIZE], inner: &mut [u8]) -> i64 {
        let mut rc = RemoteCmd::from_bytes(cmd);
        rc.arg = inner.as_mut_ptr() as u64;
        *cmd = rc.to_bytes();
        self.iommu_op(subop::REMOTE_CMD, cmd)
    }
}

/// Access rights of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFlags(u32);

impl MapFlags {
    /// Device may read.
    pub const READ: MapFlags = MapFlags(abi::map_flags::READABLE);
    /// Device may write.
    pub const WRITE: MapFlags = MapFlags(abi::map_flags::WRITEABLE);
    /// Device may read and write.
    pub const READ_WRITE: MapFlags = MapFlags(abi::map_flags::READABLE | abi::map_flags::WRITEABLE);

    /// Adds the `cache` hint.
    pub const fn with_cache(self) -> MapFlags {
        MapFlags(self.0 | abi::map_flags::CACHE)
    }

    /// The raw `map_flags` value.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

/// Upper bound on re-issues of one map/unmap call: each must make progress,
/// so `nr_pages + 1` issues always suffice; this caps a misbehaving transport.
fn max_issues(nr: u32) -> u64 {
    u64::from(nr) + 1
}

/// A PV-IOMMU client bound to a transport.
pub struct Client<T: Transport> {
    transport: T,
}

impl<T: Transport> Client<T> {
    /// Wraps a transport.
    pub fn new(transport: T) -> Self {
        Client { transport }
    }

    /// The transport, for tests and teardown.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Gives the transport back.
    pub fn into_inner(self) -> T {
        self.transport
    }

    fn call(&mut self, op: u32, arg: &mut [u8]) -> Result<u64, Error> {
        let ret = self.transport.iommu_op(op, arg);
        if ret < 0 {
            Err(Error::from_errno(ret))
        } else {
            Ok(ret as u64)
        }
    }

    /// `noop`: probes for the interface (`NotImplemented` without it,
    /// `NoDevice` when not enabled for this domain).
    pub fn noop(&mut self) -> Result<(), Error> {
        self.call(subop::NOOP, &mut []).map(|_| ())
    }

    /// `query_capabilities`.
    pub fn query_capabilities(&mut self) -> Result<Capabilities, Error> {
        let mut b = [0u8; Capabilities::SIZE];
        self.call(subop::QUERY_CAPABILITIES, &mut b)?;
        Ok(Capabilities::from_bytes(&b))
    }

    /// `init`: sets the number of contexts and the page-table arena (2^order pages).
    pub fn init(&mut self, max_ctx_no: u32, arena_order: u32) -> Result<(), Error> {
        let mut b = Init { max_ctx_no, arena_order }.to_bytes();
        self.call(subop::INIT, &mut b).map(|_| ())
    }

    /// What the Linux client does at start: query, and `init(128, 12)` when no
    /// context has been granted yet. Returns the capabilities after init.
    /// `AccessDenied` means the domain may not (re)initialise.
    pub fn ensure_initialised(&mut self) -> Result<Capabilities, Error> {
        let caps = self.query_capabilities()?;
        if caps.max_ctx_no != 0 {
            return Ok(caps);
        }
        self.init(128, 12)?;
        self.query_capabilities()
    }

    /// `alloc_context`; `identity` asks for an identity-mapped context.
    pub fn alloc_context(&mut self, identity: bool) -> Result<CtxNo, Error> {
        let flags = if identity { alloc_flags::IDENTITY } else { 0 };
        let mut b = Alloc { alloc_flags: flags, ..Default::default() }.to_bytes();
        self.call(subop::ALLOC_CONTEXT, &mut b)?;
        Ok(CtxNo(Alloc::from_bytes(&b).ctx_no))
    }

    /// `free_context`; with `reattach_default` attached devices move to context 0,
    /// otherwise a context with devices fails with `Busy`.
    pub fn free_context(&mut self, ctx: CtxNo, reattach_default: bool) -> Result<(), Error> {
        let flags = if reattach_default { free_flags::REATTACH_DEFAULT } else { 0 };
        let mut b = Free { ctx_no: ctx.0, pad0: 0, free_flags: flags }.to_bytes();
        self.call(subop::FREE_CONTEXT, &mut b).map(|_| ())
    }

    /// `reattach_device`: moves the device (machine SBDF) to `ctx`.
    pub fn reattach_device(&mut self, ctx: CtxNo, dev: PciSbdf) -> Result<(), Error> {
        let mut b = ReattachDevice { ctx_no: ctx.0, dev: dev.into(), pad0: 0, pasid: 0 }.to_bytes();
        self.call(subop::REATTACH_DEVICE, &mut b).map(|_| ())
    }

    /// `map_pages` of `nr` 4K pages, `gfn..` to `dfn..`.
    ///
    /// Re-issues after a restart (`-ERESTART` from a transport without
    /// continuations, or success with pages left) as long as progress is
    /// made. On failure reports how many pages stayed mapped.
    pub fn map_pages(&mut self, ctx: CtxNo, gfn: Gfn, dfn: Dfn, nr: u32, flags: MapFlags) -> Result<(), PartialError> {
        let m = MapPages::new(ctx, gfn, dfn, flags.bits(), PAGE_SIZE_4K, nr);
        self.restartable(nr, |t, done| {
            let mut b = MapPages { mapped: done, ..m }.to_bytes();
            let ret = t.iommu_op(subop::MAP_PAGES, &mut b);
            (ret, MapPages::from_bytes(&b).mapped)
        })
    }

    /// `unmap_pages` of `nr` 4K pages from `dfn..`; restarts as [`Client::map_pages`].
    pub fn unmap_pages(&mut self, ctx: CtxNo, dfn: Dfn, nr: u32) -> Result<(), PartialError> {
        let u = UnmapPages::new(ctx, dfn, PAGE_SIZE_4K, nr);
        self.restartable(nr, |t, done| {
            let mut b = UnmapPages { unmapped: done, ..u }.to_bytes();
            let ret = t.iommu_op(subop::UNMAP_PAGES, &mut b);
            (ret, UnmapPages::from_bytes(&b).unmapped)
        })
    }

    /// Issues a restartable page operation until all `nr` pages are done.
    /// `call(transport, done_so_far)` issues it once, resuming after
    /// `done_so_far` pages, and returns Xen's result and the progress it
    /// reported. Re-issues after a restart (`-ERESTART` from a transport
    /// without continuations, or success with pages left) while progress is
    /// made; progress that goes backwards or past `nr` is a protocol error.
    fn restartable(&mut self, nr: u32, mut call: impl FnMut(&mut T, u32) -> (i64, u32)) -> Result<(), PartialError> {
        let mut so_far = 0u32;
        let mut issues = 0u64;
        loop {
            let (ret, done) = call(&mut self.transport, so_far);
            if done > nr || done < so_far {
                return Err(PartialError { error: Error::Protocol, done: so_far });
            }
            let progressed = done > so_far;
            so_far = done;
            match ret {
                0.. if done == nr => return Ok(()),
                r if r >= 0 || r == -errno::ERESTART => {
                    issues += 1;
                    if !progressed || issues > max_issues(nr) {
                        return Err(PartialError { error: Error::Protocol, done });
                    }
                }
                r => return Err(PartialError { error: Error::from_errno(r), done }),
            }
        }
    }

    /// `remote_cmd`: runs `inner_subop` with argument `inner` on behalf of
    /// `domid` (hardware domain only; others get `NotPermitted`).
    pub fn remote_cmd(&mut self, domid: DomId, inner_subop: u32, inner: &mut [u8]) -> Result<u64, Error> {
        let sub = u16::try_from(inner_subop).map_err(|_| Error::Invalid)?;
        let mut cmd = RemoteCmd { domid: domid.0, subop: sub, pad0: 0, arg: 0 }.to_bytes();
        let ret = self.transport.iommu_op_remote(&mut cmd, inner);
        if ret < 0 {
            Err(Error::from_errno(ret))
        } else {
            Ok(ret as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{decode, Op};
    use std::vec::Vec;

    type Answer = Box<dyn FnMut(u32, &mut [u8]) -> i64>;

    /// Records calls and answers from a script.
    struct Scripted {
        calls: Vec<(u32, Vec<u8>)>,
        answer: Answer,
    }

    impl Transport for Scripted {
        fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
            self.calls.push((subop, arg.to_vec()));
            (self.answer)(subop, arg)
        }
    }

    fn client(answer: impl FnMut(u32, &mut [u8]) -> i64 + 'static) -> Client<Scripted> {
        Client::new(Scripted { calls: Vec::new(), answer: Box::new(answer) })
    }

    #[test]
    fn errors_are_typed() {
        let mut c = client(|_, _| -38);
        assert_eq!(c.noop(), Err(Error::NotImplemented));
        let mut c = client(|_, _| -19);
        assert_eq!(c.query_capabilities(), Err(Error::NoDevice));
        let mut c = client(|_, _| -13);
        assert_eq!(c.init(1, 1), Err(Error::AccessDenied));
    }

    #[test]
    fn ensure_initialised_inits_when_no_contexts() {
        let mut inited = false;
        let mut c = client(move |s, arg| match decode(s, arg) {
            Ok(Op::QueryCapabilities) => {
                let caps = Capabilities { max_ctx_no: if inited { 128 } else { 0 }, ..Default::default() };
                caps.write_to(arg).map(|_| 0).unwrap_or(-14)
            }
            Ok(Op::Init(i)) => {
                assert_eq!((i.max_ctx_no, i.arena_order), (128, 12));
                inited = true;
                0
            }
            _ => -22,
        });
        assert_eq!(c.ensure_initialised().map(|c| c.max_ctx_no), Ok(128));
        let subops: Vec<u32> = c.transport_mut().calls.iter().map(|c| c.0).collect();
        assert_eq!(subops, [subop::QUERY_CAPABILITIES, subop::INIT, subop::QUERY_CAPABILITIES]);
    }

    #[test]
    fn alloc_returns_context_number() {
        let mut c = client(|s, arg| {
            assert_eq!(s, subop::ALLOC_CONTEXT);
            let mut a = Alloc::parse(arg).unwrap();
            assert_eq!(a.alloc_flags, alloc_flags::IDENTITY);
            a.ctx_no = 42;
            a.write_to(arg).unwrap();
            0
        });
        assert_eq!(c.alloc_context(true), Ok(CtxNo(42)));
    }

    #[test]
    fn free_and_reattach_encode_arguments() {
        let mut c = client(|_, _| 0);
        c.free_context(CtxNo(3), true).unwrap();
        c.reattach_device(CtxNo(3), PciSbdf::new(0, 0x3a, 2, 1)).unwrap();
        let calls = &c.transport_mut().calls;
        assert_eq!(calls[0], (subop::FREE_CONTEXT, std::vec![3, 0, 0, 0, 1, 0, 0, 0]));
        assert_eq!(calls[1], (subop::REATTACH_DEVICE, std::vec![3, 0, 0, 0, 0x3a, 0x11, 0, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn map_restarts_until_done() {
        // Answer -ERESTART after at most 256 pages per issue.
        let mut c = client(|_, arg| {
            let mut m = MapPages::parse(arg).unwrap();
            let left = m.nr_pages - m.mapped;
            m.mapped += left.min(256);
            m.write_to(arg).unwrap();
            if m.mapped == m.nr_pages {
                0
            } else {
                -errno::ERESTART
            }
        });
        assert_eq!(c.map_pages(CtxNo(1), Gfn(0x100), Dfn(0x200), 1000, MapFlags::READ_WRITE), Ok(()));
        assert_eq!(c.transport_mut().calls.len(), 4);
    }

    #[test]
    fn map_reports_partial_progress() {
        let mut c = client(|_, arg| {
            let mut m = MapPages::parse(arg).unwrap();
            m.mapped = 5;
            m.write_to(arg).unwrap();
            -errno::EADDRINUSE
        });
        assert_eq!(
            c.map_pages(CtxNo(1), Gfn(0), Dfn(0), 10, MapFlags::READ),
            Err(PartialError { error: Error::AddressInUse, done: 5 })
        );
    }

    #[test]
    fn hostile_progress_is_a_protocol_error() {
        // More than asked.
        let mut c = client(|_, arg| {
            let mut u = UnmapPages::parse(arg).unwrap();
            u.unmapped = u.nr_pages + 1;
            u.write_to(arg).unwrap();
            0
        });
        assert_eq!(c.unmap_pages(CtxNo(1), Dfn(0), 4), Err(PartialError { error: Error::Protocol, done: 0 }));
        // Restart without progress: must not loop forever.
        let mut c = client(|_, _| -errno::ERESTART);
        assert_eq!(c.unmap_pages(CtxNo(1), Dfn(0), 4), Err(PartialError { error: Error::Protocol, done: 0 }));
    }

    #[test]
    fn remote_cmd_sets_handle() {
        struct Remote {
            seen: Option<RemoteCmd>,
        }
        impl Transport for Remote {
            fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
                assert_eq!(subop, subop::REMOTE_CMD);
                self.seen = RemoteCmd::parse(arg).ok();
                0
            }
        }
        let mut c = Client::new(Remote { seen: None });
        let mut inner = [0u8; 8];
        let addr = inner.as_ptr() as u64;
        c.remote_cmd(DomId(7), subop::INIT, &mut inner).unwrap();
        let seen = c.transport_mut().seen.unwrap();
        assert_eq!((seen.domid, seen.subop, seen.arg), (7, subop::INIT as u16, addr));
        assert_eq!(c.remote_cmd(DomId(7), 0x1_0000, &mut inner), Err(Error::Invalid));
    }
}
