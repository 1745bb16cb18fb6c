//! The `iommu_op` hypercall: sub-op decoding and dispatch, `remote_cmd`
//! on behalf of another domain, capabilities and `init`. The context
//! sub-ops live in [`contexts`], map and unmap in [`pages`].

use pv_iommu_abi::{self as abi, cap, decode, subop, Capabilities, Init, Op, RemoteCmd};

use crate::hw::Hardware;
use crate::mem::Memory;
use crate::types::{DomId, Instant};

use super::{Domain, Error, Iommu, Outcome, Platform};

mod contexts;
mod pages;

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// `do_iommu_op(subop, arg)` for `caller`, at time `now`.
    pub fn handle(&mut self, caller: DomId, subop: u32, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        self.poll(now);
        if subop == abi::subop::REMOTE_CMD {
            return self.remote_cmd(caller, arg, now);
        }
        self.handle_for(caller, subop, arg, now)
    }

    fn remote_cmd(&mut self, caller: DomId, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        if caller != self.cfg.hardware_domain {
            return Err(Error::Perm);
        }
        self.domain(caller)?;
        let rc = RemoteCmd::parse(arg)?;
        let inner = rc.subop as u32;
        if inner == subop::REMOTE_CMD {
            return Err(Error::Inval);
        }
        let size = abi::arg_size(inner)?;
        let mut buf = [0u8; 64];
        let buf = buf.get_mut(..size).ok_or(Error::Fault)?;
        if !self.plat.copy_from_guest(caller, rc.arg, buf) {
            return Err(Error::Fault);
        }
        let r = self.handle_for(rc.target(), inner, buf, now);
        if !self.plat.copy_to_guest(caller, rc.arg, buf) {
            return Err(Error::Fault);
        }
        r
    }

    pub(super) fn domain(&self, dom: DomId) -> Result<&Domain, Error> {
        match self.domains.get(&dom) {
            Some(d) if d.enabled && !d.dying => Ok(d),
            Some(d) if d.dying => Err(Error::Inval),
            _ => Err(Error::NoDev),
        }
    }

    pub(super) fn domain_mut(&mut self, dom: DomId) -> Result<&mut Domain, Error> {
        match self.domains.get_mut(&dom) {
            Some(d) if d.enabled && !d.dying => Ok(d),
            Some(d) if d.dying => Err(Error::Inval),
            _ => Err(Error::NoDev),
        }
    }

    fn handle_for(&mut self, dom: DomId, subop: u32, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        self.domain(dom)?;
        match decode(subop, arg)? {
            Op::Noop => Ok(Outcome::Done),
            Op::QueryCapabilities => self.query_caps(dom, arg),
            Op::Init(i) => self.init(dom, i),
            Op::AllocContext(a) => self.alloc_context(dom, a, arg),
            Op::FreeContext(f) => self.free_context(dom, f, now),
            Op::ReattachDevice(r) => self.reattach(dom, r, now),
            Op::MapPages(m) => self.map_pages(dom, m, arg, now),
            Op::UnmapPages(u) => self.unmap_pages(dom, u, arg, now),
            Op::RemoteCmd(_) => Err(Error::Inval),
            Op::Unsupported(_) => Err(Error::OpNotSupp),
        }
    }

    fn query_caps(&mut self, dom: DomId, arg: &mut [u8]) -> Result<Outcome, Error> {
        let d = self.domain(dom)?;
        let caps = Capabilities {
            max_iova_addr: (1u64 << self.aw.bits()) - 1,
            cap_flags: cap::DEFAULT_IDENTITY | if self.cfg.identity_contexts { cap::IDENTITY } else { 0 },
            pgsize_mask: 1 << 12,
            max_pasid: 0,
            max_ctx_no: d.max_ctx_no.min(u16::MAX as u32) as u16,
            pad0: 0,
        };
        caps.write_to(arg)?;
        Ok(Outcome::Done)
    }

    fn init(&mut self, dom: DomId, i: Init) -> Result<Outcome, Error> {
        let limit = self.cfg.max_ctx_limit.min(u16::MAX as u32);
        let max_order = self.cfg.max_arena_order.min(40);
        let d = self.domain_mut(dom)?;
        if d.initialised {
            return Err(Error::Access);
        }
        if i.max_ctx_no == u32::MAX || i.max_ctx_no > limit || i.arena_order > max_order {
            return Err(Error::TooBig);
        }
        d.initialised = true;
        // Clamped to the domain's limits (query_capabilities reports the result).
        d.max_ctx_no = i.max_ctx_no.min(d.limits.contexts);
        d.arena_limit = (1u64 << i.arena_order).min(d.limits.table_pages);
        // No fall-through into alloc_context.
        Ok(Outcome::Done)
    }
}
