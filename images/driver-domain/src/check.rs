//! The product's boot check of a disk: read-only. Ferrite never writes to a
//! disk it serves except what guests write; at boot it only reads the first
//! and the last block (the controller answered identify in bring-up).

use alloc::format;
use alloc::string::String;
use drivers::block::{BlockDevice, BlockRequest};
use runtime::dev::DmaBuf;

/// How long each read may take.
const READ_TIMEOUT_NS: u64 = 10_000_000_000;

/// Reads LBA 0 and the last LBA on queue 0, one at a time; returns the last
/// LBA read.
pub fn read_first_and_last<D: BlockDevice<Buffer = DmaBuf>>(dev: &mut D) -> Result<u64, String> {
    let cap = dev.capacity();
    let last = cap.checked_sub(1).ok_or("the disk has no blocks")?;
    for lba in [0, last] {
        let buffer = DmaBuf::zeroed(dev.block_size() as usize).ok_or("out of memory for a block buffer")?;
        dev.submit(0, BlockRequest::Read { lba, buffer }).map_err(|(e, _)| format!("read of LBA {lba}: {e:?}"))?;
        let deadline = runtime::time::now() + READ_TIMEOUT_NS;
        loop {
            let now = runtime::time::now();
            if let Some(c) = dev.poll(0, now) {
                c.result.map_err(|e| format!("read of LBA {lba}: {e:?}"))?;
                break;
            }
            if now > deadline {
                return Err(format!("read of LBA {lba}: no completion within 10 s"));
            }
        }
    }
    Ok(last)
}
