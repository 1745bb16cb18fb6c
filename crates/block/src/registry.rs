//! The disks Ferrite found, and the one lookup that turns a vbd's target
//! into a [`View`] (STYLE.md §12).
//!
//! Every namespace is a disk (`nvme0n1`), and so is every GPT partition on
//! it (`nvme0n1p2`, also reachable as `partlabel=` / `partuuid=`). Opening a
//! disk claims its extent: a writable claim excludes every overlapping claim
//! (a namespace and its partitions overlap), read-only claims share. Claims
//! end when the view is dropped.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use drivers::block::Volumes;

use crate::gpt::{Guid, Partition};
use crate::target::{self, Target, TargetError};
use crate::view::{Extent, Shared, View};

/// A disk that can be served: a namespace or a partition of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// `nvme0n1`, `nvme0n1p2`, `ram0`.
    pub name: String,
    /// Index of the device in the registry.
    pub device: usize,
    /// The namespace (volume) of that device.
    pub volume: usize,
    pub extent: Extent,
    /// Bytes per block of the device.
    pub lba_size: u32,
    pub model: String,
    pub serial: String,
    /// GPT name and unique GUID, for partitions.
    pub label: Option<String>,
    pub uuid: Option<Guid>,
}

/// Why a target could not be opened: the text goes into the backend's
/// `hotplug-error` node, where `xl` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    Target(TargetError),
    /// Nothing by that name; the known names follow.
    NotFound {
        target: String,
        known: String,
    },
    /// Two partitions carry that label.
    Ambiguous(String),
    /// Overlaps a disk opened writable, or is asked writable while others use it.
    InUse {
        target: String,
        by: String,
    },
    /// A RAM disk could not be made (memory).
    NoMemory,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Target(e) => write!(f, "{e}"),
            OpenError::NotFound { target, known } => write!(f, "no disk '{target}' (disks: {known})"),
            OpenError::Ambiguous(l) => write!(f, "several partitions are labelled '{l}'"),
            OpenError::InUse { target, by } => write!(f, "'{target}' overlaps a disk in use by {by}"),
            OpenError::NoMemory => f.write_str("not enough memory for the RAM disk"),
        }
    }
}

impl From<TargetError> for OpenError {
    fn from(e: TargetError) -> Self {
        OpenError::Target(e)
    }
}

struct ClaimEntry {
    id: u64,
    device: usize,
    volume: usize,
    extent: Extent,
    writable: bool,
    holder: String,
}

#[derive(Default)]
struct ClaimTable {
    entries: Vec<ClaimEntry>,
    next: u64,
}

/// A held claim; dropping it releases the extent.
pub struct Claim {
    table: Rc<RefCell<ClaimTable>>,
    id: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.try_borrow_mut() {
            t.entries.retain(|e| e.id != self.id);
        }
    }
}

/// Every disk Ferrite may serve.
pub struct Registry<D: Volumes> {
    /// By index; a RAM disk's slot empties when its last view is gone.
    devices: Vec<Option<Rc<RefCell<Shared<D>>>>>,
    /// Indices of RAM-disk devices (made by `open`, freed by `prune`).
    ram_devices: Vec<usize>,
    disks: Vec<Disk>,
    claims: Rc<RefCell<ClaimTable>>,
    rams: u32,
}

impl<D: Volumes> Default for Registry<D> {
    fn default() -> Self {
        Registry { devices: Vec::new(), ram_devices: Vec::new(), disks: Vec::new(), claims: Rc::default(), rams: 0 }
    }
}

impl<D: Volumes> Registry<D>
where
    D::Buffer: AsRef<[u8]>,
{
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device (a controller); its namespaces are added with
    /// [`Registry::add_namespace`]. Returns its index.
    pub fn add_device(&mut self, dev: D) -> usize {
        self.devices.push(Some(Shared::new(dev)));
        self.devices.len() - 1
    }

    /// Adds volume `volume` of device `device` as disk `name` (`nvme0n1`);
    /// false if the device has no such volume.
    pub fn add_namespace(&mut self, name: &str, device: usize, volume: usize, model: &str, serial: &str) -> bool {
        let Some(geometry) = self.device(device).and_then(|d| d.borrow().device().volume_geometry(volume)) else {
            return false;
        };
        let (lba_size, blocks) = geometry;
        self.disks.push(Disk {
            name: name.to_string(),
            device,
            volume,
            extent: Extent::new(0, blocks),
            lba_size,
            model: model.to_string(),
            serial: serial.to_string(),
            label: None,
            uuid: None,
        });
        true
    }

    /// Adds the GPT partitions of the namespace disk `namespace` (named
    /// `<namespace>p<n>`); partitions past its end are skipped.
    pub fn add_partitions(&mut self, namespace: &str, parts: &[Partition]) {
        let Some(base) = self.disks.iter().find(|d| d.name == namespace && d.uuid.is_none()).cloned() else {
            return;
        };
        for p in parts {
            let extent = Extent::new(p.first_lba, p.blocks());
            if extent.end() > base.extent.end() {
                continue;
            }
            self.disks.push(Disk {
                name: format!("{}p{}", base.name, p.number),
                extent,
                label: Some(p.name.clone()),
                uuid: Some(p.guid),
                ..base.clone()
            });
        }
    }

    /// Every disk, namespaces first in the order added, then partitions.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// Device slots (`device(i)` for `i` below this; freed RAM disks are `None`).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The shared device with index `i`.
    pub fn device(&self, i: usize) -> Option<&Rc<RefCell<Shared<D>>>> {
        self.devices.get(i).and_then(Option::as_ref)
    }

    /// Holders of claims overlapping `disk`, with `(holder, writable)`.
    pub fn users(&self, disk: &Disk) -> Vec<(String, bool)> {
        let t = self.claims.borrow();
        t.entries
            .iter()
            .filter(|c| (c.device, c.volume) == (disk.device, disk.volume) && c.extent == disk.extent)
            .map(|c| (c.holder.clone(), c.writable))
            .collect()
    }

    /// One line per disk for `data/ferrite/disks`: name, size, LBA size,
    /// model/serial, and who uses it (`vbd <holder> rw|ro`, or `-`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for d in &self.disks {
            let users: Vec<String> = self
                .users(d)
                .into_iter()
                .map(|(h, w)| format!("{}:{}", escape(&h), if w { "rw" } else { "ro" }))
                .collect();
            let bytes = d.extent.blocks.saturating_mul(u64::from(d.lba_size));
            out.push_str(&format!(
                "{} bytes={} lba={} model={} serial={}{} used-by={}\n",
                d.name,
                bytes,
                d.lba_size,
                escape(&d.model),
                escape(&d.serial),
                d.label.as_ref().map(|l| format!(" partlabel={}", escape(l))).unwrap_or_default(),
                if users.is_empty() { "-".to_string() } else { users.join(",") }
            ));
        }
        out
    }

    /// Resolves `params` to a disk and opens a view of it for `holder`
    /// (e.g. `vbd 3/51712`). `make_ram` builds a RAM disk of a byte size for
    /// `ram:` targets.
    pub fn open(
        &mut self,
        params: &str,
        readonly: bool,
        holder: &str,
        make_ram: impl FnOnce(u64) -> Option<D>,
    ) -> Result<View<D>, OpenError> {
        let target = target::parse(params)?;
        self.prune();
        let disk = match &target {
            Target::Ram { bytes } => {
                let dev = make_ram(*bytes).ok_or(OpenError::NoMemory)?;
                let name = format!("ram{}", self.rams);
                self.rams += 1;
                let i = self.add_device(dev);
                self.ram_devices.push(i);
                self.add_namespace(&name, i, 0, "RAM disk", "-");
                self.disks.iter().find(|d| d.device == i).cloned().ok_or(OpenError::NoMemory)?
            }
            _ => self.find(&target)?,
        };
        let claim = self.claim(&disk, !readonly, holder, &target)?;
        let shared = self.device(disk.device).ok_or(OpenError::NoMemory)?;
        let mut view = View::new(shared, disk.volume, disk.extent, readonly).ok_or(OpenError::NoMemory)?;
        view.hold(claim);
        Ok(view)
    }

    /// Frees every RAM disk no view uses any more (its memory, its entry in
    /// [`Registry::disks`]). `open` does this first; call it before
    /// [`Registry::describe`] to list only what exists.
    pub fn prune(&mut self) {
        let devices = &mut self.devices;
        let disks = &mut self.disks;
        self.ram_devices.retain(|&i| {
            let unused = devices.get(i).and_then(Option::as_ref).is_some_and(|d| Rc::strong_count(d) == 1);
            if unused {
                devices[i] = None;
                disks.retain(|d| d.device != i);
            }
            !unused
        });
    }

    fn find(&self, t: &Target) -> Result<Disk, OpenError> {
        let hits: Vec<&Disk> = match t {
            Target::Nvme { .. } => {
                let name = t.to_string();
                self.disks.iter().filter(|d| d.name == name).collect()
            }
            Target::PartLabel(l) => self.disks.iter().filter(|d| d.label.as_deref() == Some(l.as_str())).collect(),
            Target::PartUuid(u) => self.disks.iter().filter(|d| d.uuid == Some(*u)).collect(),
            Target::Ram { .. } => Vec::new(),
        };
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(OpenError::NotFound {
                target: t.to_string(),
                known: if self.disks.is_empty() {
                    "none".to_string()
                } else {
                    self.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                },
            }),
            _ => Err(OpenError::Ambiguous(t.to_string())),
        }
    }

    fn claim(&self, disk: &Disk, writable: bool, holder: &str, t: &Target) -> Result<Claim, OpenError> {
        let mut table = self.claims.borrow_mut();
        let clash = table.entries.iter().find(|c| {
            (c.device, c.volume) == (disk.device, disk.volume)
                && c.extent.overlaps(&disk.extent)
                && (writable || c.writable)
        });
        if let Some(c) = clash {
            return Err(OpenError::InUse { target: t.to_string(), by: c.holder.clone() });
        }
        let id = table.next;
        table.next += 1;
        table.entries.push(ClaimEntry {
            id,
            device: disk.device,
            volume: disk.volume,
            extent: disk.extent,
            writable,
            holder: holder.to_string(),
        });
        Ok(Claim { table: self.claims.clone(), id })
    }
}

/// Device and guest strings as printable ASCII: anything else as `\xNN`,
/// spaces as `_` (a line per disk, fields split at spaces).
pub fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.trim().bytes().take(64) {
        match b {
            b' ' => out.push('_'),
            0x21..=0x7e if b != b'\\' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt;
    use alloc::vec;
    use drivers::block::{BlockDevice, BlockRequest, RamDisk};

    type Ram = RamDisk<Vec<u8>>;

    fn registry() -> Registry<Ram> {
        let mut r = Registry::new();
        let d = r.add_device(RamDisk::new(512, 1000, 1, 8));
        assert!(r.add_namespace("nvme0n1", d, 0, "QEMU NVMe Ctrl", "ferrite-nvme0"));
        assert!(!r.add_namespace("nvme0n2", d, 1, "QEMU NVMe Ctrl", "ferrite-nvme0"), "a RAM disk has one volume");
        let img = gpt::build(512, 1000, &[("a", Guid([1; 16]), 40, 99), ("b", Guid([2; 16]), 100, 199)]);
        let h = gpt::parse_header(&img[..512], &img[512..1024], 1000).unwrap().unwrap();
        let parts = gpt::parse_entries(&h, &img[1024..]).unwrap();
        r.add_partitions("nvme0n1", &parts);
        let d = r.add_device(RamDisk::new(4096, 100, 1, 8));
        r.add_namespace("nvme1n1", d, 0, "QEMU NVMe Ctrl", "ferrite-nvme1");
        r
    }

    fn no_ram(_: u64) -> Option<Ram> {
        None
    }

    #[test]
    fn lookup_by_every_name() {
        let mut r = registry();
        let names: Vec<&str> = r.disks().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "nvme0n1p1", "nvme0n1p2", "nvme1n1"]);
        let v = r.open("nvme0n1p2", false, "vbd 1/51712", no_ram).unwrap();
        assert_eq!(v.extent(), Extent::new(100, 100));
        drop(v);
        let v = r.open("partlabel=a", true, "vbd 1/51712", no_ram).unwrap();
        assert_eq!(v.extent(), Extent::new(40, 60));
        let v2 = r.open(&format!("partuuid={}", Guid([2; 16])), true, "vbd 2/51712", no_ram).unwrap();
        assert_eq!(v2.extent(), Extent::new(100, 100));
        let v3 = r.open("/dev/nvme1n1", false, "vbd 3/51712", no_ram).unwrap();
        assert_eq!(v3.block_size(), 4096);
    }

    #[test]
    fn unknown_targets_say_what_exists() {
        let mut r = registry();
        let e = r.open("nvme0n1p7", false, "vbd 1/1", no_ram).err().unwrap();
        assert_eq!(e.to_string(), "no disk 'nvme0n1p7' (disks: nvme0n1, nvme0n1p1, nvme0n1p2, nvme1n1)");
        assert!(matches!(r.open("bogus", false, "vbd 1/1", no_ram), Err(OpenError::Target(TargetError::Unknown))));
        assert!(matches!(r.open("ram:4M", false, "vbd 1/1", no_ram), Err(OpenError::NoMemory)));
    }

    /// No disk found and none named: nothing is served, and the refusal says so.
    #[test]
    fn no_disks_serve_nothing_and_say_so() {
        let mut r: Registry<Ram> = Registry::new();
        assert_eq!(r.describe(), "");
        let e = r.open("nvme0n1", false, "vbd 1/51712", no_ram).err().unwrap();
        assert_eq!(e.to_string(), "no disk 'nvme0n1' (disks: none)");
        assert!(r.disks().is_empty(), "no RAM disk appears unless one is named");
    }

    #[test]
    fn one_writer_or_many_readers() {
        let mut r = registry();
        let w = r.open("nvme0n1p1", false, "vbd 1/51712", no_ram).unwrap();
        // the namespace overlaps the partition: neither writable nor readable now
        let e = r.open("nvme0n1", false, "vbd 2/51712", no_ram).err().unwrap();
        assert_eq!(e, OpenError::InUse { target: "nvme0n1".into(), by: "vbd 1/51712".into() });
        assert!(r.open("nvme0n1", true, "vbd 2/51712", no_ram).is_err());
        assert!(r.open("nvme0n1p1", true, "vbd 2/51712", no_ram).is_err());
        // a disjoint partition is fine
        let other = r.open("nvme0n1p2", false, "vbd 3/51712", no_ram).unwrap();
        drop(w);
        drop(other);
        // readers share, and keep writers out
        let r1 = r.open("nvme0n1", true, "vbd 4/51712", no_ram).unwrap();
        let r2 = r.open("nvme0n1p1", true, "vbd 5/51712", no_ram).unwrap();
        assert!(r.open("nvme0n1p2", false, "vbd 6/51712", no_ram).is_err());
        let listing = r.describe();
        assert!(
            listing.starts_with(
                "nvme0n1 bytes=512000 lba=512 model=QEMU_NVMe_Ctrl serial=ferrite-nvme0 used-by=vbd_4/51712:ro\n"
            ),
            "{listing}"
        );
        drop((r1, r2));
        assert!(r.open("nvme0n1", false, "vbd 7/51712", no_ram).is_ok());
    }

    #[test]
    fn ram_targets_make_a_disk_each() {
        let mut r: Registry<Ram> = Registry::new();
        let mut v = r.open("ram:64K", false, "vbd 1/1", |b| Some(RamDisk::new(512, b / 512, 1, 8))).unwrap();
        assert_eq!(v.capacity(), 128);
        let t = v.submit(0, BlockRequest::Write { lba: 127, buffer: vec![1; 512], fua: false }).unwrap();
        assert_eq!(v.poll(0, 0).unwrap().token, t);
        assert_eq!(r.disks()[0].name, "ram0");
        // Its memory goes with its last view; the next one is a new disk.
        drop(v);
        r.prune();
        assert!(r.disks().is_empty() && r.device(0).is_none());
        let w = r.open("ram:4K", false, "vbd 2/1", |b| Some(RamDisk::new(512, b / 512, 1, 8))).unwrap();
        assert_eq!((r.disks().len(), r.disks()[0].name.as_str(), w.capacity()), (1, "ram1", 8));
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(" QEMU NVMe\n\\x "), "QEMU_NVMe\\x0a\\x5cx");
    }
}
