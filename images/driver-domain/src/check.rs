//! The product's boot check of a disk: read-only. Ferrite never writes to a
//! disk it serves except what guests write; at boot it only reads the first
//! and the last block of the controller's primary namespace (the controller
//! answered identify in bring-up).

use crate::pci_nvme::PvNvme;
use alloc::format;
use alloc::string::String;
use runtime::dev::DmaBuf;

/// How long each read may take.
const READ_TIMEOUT_NS: u64 = 10_000_000_000;

/// Reads LBA 0 and the last LBA on queue 0, one at a time, through the same
/// bounded read the partition scan uses; returns the last LBA read.
pub fn read_first_and_last(nvme: &mut PvNvme) -> Result<u64, String> {
    let info = nvme.info();
    let v = info.namespaces.iter().position(|n| n.nsid == info.nsid).ok_or("the primary namespace is not served")?;
    let last = info.blocks.checked_sub(1).ok_or("the disk has no blocks")?;
    for lba in [0, last] {
        let deadline = runtime::time::now() + READ_TIMEOUT_NS;
        block::scan::read_blocks(nvme, v, lba, 1, &mut DmaBuf::zeroed, &runtime::time::now, deadline)
            .map_err(|e| format!("read of LBA {lba}: {e}"))?;
    }
    Ok(last)
}
