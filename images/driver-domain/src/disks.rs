//! The disks Ferrite serves, found at boot: every namespace of every NVMe
//! controller (`nvme<c>n<nsid>`, controllers in PCI address order) and every
//! GPT partition on them (`nvme<c>n<nsid>p<n>`, `partlabel=`, `partuuid=`).
//! Finding them only reads (identify, then LBA 0, LBA 1 and the GPT entry
//! array); nothing is written.

use crate::disk::AnyDisk;
use crate::pci_nvme::Controller;
use alloc::format;
use alloc::string::String;
use block::Registry;
use drivers::block::RamDisk;
use drivers::nvme::Namespace;
use log::{info, warn};
use runtime::dev::DmaBuf;

/// How long reading one namespace's partition table may take.
const SCAN_TIMEOUT_NS: u64 = 10_000_000_000;
/// Queues and depth of a RAM disk a vbd names.
const RAM_QUEUES: u16 = 1;
const RAM_DEPTH: usize = 64;
/// The largest RAM disk Ferrite makes (it lives in the 8 MiB heap).
const RAM_MAX_BYTES: u64 = 2 << 20;
/// Heap kept free beside RAM disks: blkback's disk buffers and the rest.
const HEAP_RESERVE: u64 = blkback::MAX_BUFFER_BYTES as u64 + (1 << 20);

fn text(field: &[u8]) -> String {
    String::from(core::str::from_utf8(field).unwrap_or("?").trim_end_matches(['\0', ' ']))
}

/// Registers every namespace and partition of `controllers`.
pub fn register(controllers: alloc::vec::Vec<Controller>) -> Registry<AnyDisk> {
    let mut reg = Registry::new();
    for (c, mut ctl) in controllers.into_iter().enumerate() {
        let info = ctl.nvme.info().clone();
        let (model, serial) = (text(&info.model), text(&info.serial));
        // Partitions first, while the controller is still ours alone.
        let mut found: alloc::vec::Vec<(String, alloc::vec::Vec<block::gpt::Partition>)> = alloc::vec::Vec::new();
        for (v, ns) in info.namespaces.iter().enumerate() {
            let Namespace { nsid, block_size, blocks, .. } = *ns;
            let name = format!("nvme{c}n{nsid}");
            let parts =
                match block::scan::partitions(&mut ctl.nvme, v, DmaBuf::zeroed, runtime::time::now, SCAN_TIMEOUT_NS) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!("{name}: partitions not offered: {e}");
                        alloc::vec::Vec::new()
                    }
                };
            info!("{name}: {blocks} blocks of {block_size} bytes, {} GPT partition(s)", parts.len());
            found.push((name, parts));
        }
        let d = reg.add_device(AnyDisk::Nvme(ctl.nvme));
        for (v, (name, parts)) in found.iter().enumerate() {
            reg.add_namespace(name, d, v, &model, &serial);
            reg.add_partitions(name, parts);
        }
    }
    reg
}

/// Makes the RAM disk a `ram:SIZE` target asks for (512-byte blocks), at
/// most [`RAM_MAX_BYTES`] and only while the heap keeps [`HEAP_RESERVE`]
/// free beside it.
pub fn ram_disk(bytes: u64) -> Option<AnyDisk> {
    let (_, free) = runtime::heap_usage();
    if bytes > RAM_MAX_BYTES || bytes.saturating_add(HEAP_RESERVE) > free as u64 {
        return None;
    }
    Some(AnyDisk::Ram(RamDisk::new(512, bytes / 512, RAM_QUEUES, RAM_DEPTH)))
}
