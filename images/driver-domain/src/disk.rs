//! A device Ferrite serves disks from: an NVMe controller passed through to
//! it (every namespace a volume), or a RAM disk a vbd named (`ram:SIZE`).

use crate::pci_nvme::PvNvme;
use drivers::block::{BlockCompletion, BlockDevice, BlockRequest, Features, Token, Volumes};
use drivers::hal::Nanos;
use drivers::Error;
use runtime::dev::DmaBuf;

// One per domain, built once at boot: the NVMe variant's size costs nothing,
// a Box would add an indirection on every request.
#[allow(clippy::large_enum_variant)]
pub enum AnyDisk {
    Nvme(PvNvme),
    Ram(drivers::block::RamDisk<DmaBuf>),
}

macro_rules! each {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            AnyDisk::Nvme($d) => $e,
            AnyDisk::Ram($d) => $e,
        }
    };
}

impl BlockDevice for AnyDisk {
    type Buffer = DmaBuf;
    fn block_size(&self) -> u32 {
        each!(self, d => d.block_size())
    }
    fn capacity(&self) -> u64 {
        each!(self, d => d.capacity())
    }
    fn queue_count(&self) -> u16 {
        each!(self, d => d.queue_count())
    }
    fn max_transfer(&self) -> usize {
        each!(self, d => d.max_transfer())
    }
    fn features(&self) -> Features {
        each!(self, d => d.features())
    }
    fn submit(&mut self, queue: u16, r: BlockRequest<DmaBuf>) -> Result<Token, (Error, BlockRequest<DmaBuf>)> {
        each!(self, d => d.submit(queue, r))
    }
    fn poll(&mut self, queue: u16, now: Nanos) -> Option<BlockCompletion<DmaBuf>> {
        each!(self, d => d.poll(queue, now))
    }
    fn scatter_gather(&self) -> bool {
        each!(self, d => d.scatter_gather())
    }
    fn accepts_sg(&self, sg: &[drivers::block::SgEntry]) -> bool {
        each!(self, d => d.accepts_sg(sg))
    }
}

impl Volumes for AnyDisk {
    fn volumes(&self) -> usize {
        each!(self, d => Volumes::volumes(d))
    }
    fn volume_geometry(&self, v: usize) -> Option<(u32, u64)> {
        each!(self, d => Volumes::volume_geometry(d, v))
    }
    fn submit_to(
        &mut self,
        v: usize,
        queue: u16,
        r: BlockRequest<DmaBuf>,
    ) -> Result<Token, (Error, BlockRequest<DmaBuf>)> {
        each!(self, d => Volumes::submit_to(d, v, queue, r))
    }
}
