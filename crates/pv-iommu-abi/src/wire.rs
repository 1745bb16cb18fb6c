//! Wire layout of `xen/include/public/pv-iommu.h` (x86_64, little endian).
//!
//! Every structure is declared once through the `abi_struct!` macro: the macro emits
//! the `#[repr(C)]` type, compile-time assertions on its size, on the offset
//! of every field and on the absence of implicit padding (field sizes must add
//! up to the size, so every hole in the C layout is a named `padN` field), and
//! byte encoders/decoders that never panic.
//!
//! Padding is carried through decode/encode unchanged: Xen does not check it,
//! so neither does the decoder; senders built here always zero it.

use crate::types::{CtxNo, Dfn, DomId, Gfn, PciSbdf};

/// `__HYPERVISOR_iommu_op`.
pub const HYPERVISOR_IOMMU_OP: u32 = 43;

/// Sub-operation numbers (`enum pv_iommu_cmd`).
pub mod subop {
    /// Does nothing; probes the interface.
    pub const NOOP: u32 = 0;
    /// Fills [`super::Capabilities`].
    pub const QUERY_CAPABILITIES: u32 = 1;
    /// Sets the context count and page-table arena size ([`super::Init`]).
    pub const INIT: u32 = 2;
    /// Allocates a context ([`super::Alloc`]).
    pub const ALLOC_CONTEXT: u32 = 3;
    /// Frees a context ([`super::Free`]).
    pub const FREE_CONTEXT: u32 = 4;
    /// Moves a device to a context ([`super::ReattachDevice`]).
    pub const REATTACH_DEVICE: u32 = 5;
    /// Maps pages ([`super::MapPages`]).
    pub const MAP_PAGES: u32 = 6;
    /// Unmaps pages ([`super::UnmapPages`]).
    pub const UNMAP_PAGES: u32 = 7;
    /// Runs a sub-op on behalf of another domain ([`super::RemoteCmd`]).
    pub const REMOTE_CMD: u32 = 8;
    /// Nested translation: not implemented (-EOPNOTSUPP).
    pub const ALLOC_NESTED: u32 = 9;
    /// Nested translation: not implemented (-EOPNOTSUPP).
    pub const FLUSH_NESTED: u32 = 10;
    /// PASID: not implemented (-EOPNOTSUPP).
    pub const ATTACH_PASID: u32 = 11;
    /// PASID: not implemented (-EOPNOTSUPP).
    pub const DETACH_PASID: u32 = 12;
}

/// `cap_flags` bits of [`Capabilities`].
pub mod cap {
    /// The default context is an identity map of the domain.
    pub const DEFAULT_IDENTITY: u32 = 1 << 0;
    /// The `cache` map flag is honoured.
    pub const CACHE: u32 = 1 << 1;
    /// Nested translation is available.
    pub const NESTED: u32 = 1 << 2;
    /// PASIDs are available.
    pub const PASID: u32 = 1 << 3;
    /// Identity contexts can be allocated (`IOMMU_ALLOC_identity`).
    pub const IDENTITY: u32 = 1 << 4;
}

/// `alloc_flags` bits.
pub mod alloc_flags {
    /// `IOMMU_ALLOC_identity`: the new context is an identity map.
    pub const IDENTITY: u32 = 1 << 0;
    /// Every defined bit.
    pub const ALL: u32 = IDENTITY;
}

/// `free_flags` bits.
pub mod free_flags {
    /// `IOMMU_FREE_reattach_default`: move attached devices to context 0.
    pub const REATTACH_DEFAULT: u32 = 1 << 0;
    /// Every defined bit.
    pub const ALL: u32 = REATTACH_DEFAULT;
}

/// `map_flags` bits.
pub mod map_flags {
    /// Device may read.
    pub const READABLE: u32 = 1 << 0;
    /// Device may write.
    pub const WRITEABLE: u32 = 1 << 1;
    /// Cacheable mapping hint.
    pub const CACHE: u32 = 1 << 2;
    /// Every defined bit.
    pub const ALL: u32 = READABLE | WRITEABLE | CACHE;
}

/// Xen errno values used by the interface (`xen/include/public/errno.h`).
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i64 = 1;
    /// No such entry.
    pub const ENOENT: i64 = 2;
    /// Argument too big.
    pub const E2BIG: i64 = 7;
    /// Out of memory.
    pub const ENOMEM: i64 = 12;
    /// Permission denied.
    pub const EACCES: i64 = 13;
    /// Bad address.
    pub const EFAULT: i64 = 14;
    /// Busy.
    pub const EBUSY: i64 = 16;
    /// No such device / interface disabled.
    pub const ENODEV: i64 = 19;
    /// Invalid argument.
    pub const EINVAL: i64 = 22;
    /// No space left.
    pub const ENOSPC: i64 = 28;
    /// Function not implemented.
    pub const ENOSYS: i64 = 38;
    /// Hypercall continuation (never seen by a guest).
    pub const ERESTART: i64 = 85;
    /// Operation not supported.
    pub const EOPNOTSUPP: i64 = 95;
    /// Address in use.
    pub const EADDRINUSE: i64 = 98;
    /// Address not available.
    pub const EADDRNOTAVAIL: i64 = 99;
}

/// Why bytes could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiError {
    /// The sub-op number is not part of the interface.
    UnknownSubop(u32),
    /// The buffer is shorter than the structure.
    Truncated {
        /// Bytes the structure needs.
        need: usize,
        /// Bytes supplied.
        got: usize,
    },
}

/// A fixed-size little-endian field of an ABI structure.
pub trait Wire: Sized + Copy {
    /// Encoded size in bytes (equal to `size_of::<Self>()`).
    const SIZE: usize;
    /// Writes the field into `out`, which is exactly `SIZE` bytes.
    fn put(&self, out: &mut [u8]);
    /// Reads the field from `b`, which is exactly `SIZE` bytes.
    fn get(b: &[u8]) -> Self;
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; core::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
wire_int!(u8, u16, u32, u64);

/// Declares an ABI structure with its size and field offsets.
///
/// Offsets are asserted with `offset_of!`, the size with `size_of!`, and the
/// field sizes must sum to the size (no implicit padding). The slices taken
/// in `to_bytes`/`from_bytes` use those checked constant ranges, so they
/// cannot go out of bounds.
macro_rules! abi_struct {
    (
        $(#[$m:meta])*
        pub struct $name:ident : size $size:literal {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty = $off:literal, )*
        }
    ) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fm])* pub $f: $t, )*
        }

        const _: () = {
            assert!(core::mem::size_of::<$name>() == $size);
            $( assert!(core::mem::offset_of!($name, $f) == $off); )*
            $( assert!($off + <$t as Wire>::SIZE <= $size); )*
            assert!(0 $( + <$t as Wire>::SIZE )* == $size, "implicit padding");
        };

        impl $name {
            /// Size of the encoded structure in bytes.
            pub const SIZE: usize = $size;

            /// Encodes the structure as the C header lays it out.
            pub fn to_bytes(&self) -> [u8; $size] {
                let mut b = [0u8; $size];
                $( Wire::put(&self.$f, &mut b[$off..$off + <$t as Wire>::SIZE]); )*
                b
            }

            /// Decodes the structure from exactly its bytes.
            pub fn from_bytes(b: &[u8; $size]) -> Self {
                Self { $( $f: <$t as Wire>::get(&b[$off..$off + <$t as Wire>::SIZE]), )* }
            }

            /// Decodes from the first `SIZE` bytes of `b`; fails if shorter.
            pub fn parse(b: &[u8]) -> Result<Self, AbiError> {
                match b.get(..$size).and_then(|s| <&[u8; $size]>::try_from(s).ok()) {
                    Some(a) => Ok(Self::from_bytes(a)),
                    None => Err(AbiError::Truncated { need: $size, got: b.len() }),
                }
            }

            /// Encodes into the first `SIZE` bytes of `out`; fails if shorter.
            pub fn write_to(&self, out: &mut [u8]) -> Result<(), AbiError> {
                let got = out.len();
                match out.get_mut(..$size) {
                    Some(dst) => {
                        dst.copy_from_slice(&self.to_bytes());
                        Ok(())
                    }
                    None => Err(AbiError::Truncated { need: $size, got }),
                }
            }
        }

        impl Wire for $name {
            const SIZE: usize = $size;
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; $size];
                a.copy_from_slice(b);
                Self::from_bytes(&a)
            }
        }
    };
}

abi_struct! {
    /// `struct pv_iommu_capabilities` (output of `query_capabilities`).
    pub struct Capabilities : size 24 {
        /// Highest IOVA a context can map: `(1 << agaw) - 1`.
        pub max_iova_addr: u64 = 0,
        /// `cap::*` bits.
        pub cap_flags: u32 = 8,
        /// Supported page sizes as a bit mask (4K only on VT-d).
        pub pgsize_mask: u32 = 12,
        /// Highest PASID (0: none).
        pub max_pasid: u32 = 16,
        /// Contexts the domain may allocate (0 until `init`).
        pub max_ctx_no: u16 = 20,
        /// Padding.
        pub pad0: u16 = 22,
    }
}

abi_struct! {
    /// `struct pv_iommu_init`.
    pub struct Init : size 8 {
        /// Number of contexts wanted.
        pub max_ctx_no: u32 = 0,
        /// log2 of the page-table arena size in pages.
        pub arena_order: u32 = 4,
    }
}

abi_struct! {
    /// `struct pv_iommu_alloc`.
    pub struct Alloc : size 8 {
        /// Output: the new context number.
        pub ctx_no: u16 = 0,
        /// Padding.
        pub pad0: u16 = 2,
        /// `alloc_flags::*`.
        pub alloc_flags: u32 = 4,
    }
}

abi_struct! {
    /// `struct pv_iommu_free`.
    pub struct Free : size 8 {
        /// Context to free.
        pub ctx_no: u16 = 0,
        /// Padding.
        pub pad0: u16 = 2,
        /// `free_flags::*`.
        pub free_flags: u32 = 4,
    }
}

abi_struct! {
    /// `struct pv_iommu_map_pages`.
    pub struct MapPages : size 40 {
        /// Target context.
        pub ctx_no: u16 = 0,
        /// Padding.
        pub pad0: u16 = 2,
        /// Padding.
        pub pad1: u32 = 4,
        /// First guest frame.
        pub gfn: u64 = 8,
        /// First device frame.
        pub dfn: u64 = 16,
        /// `map_flags::*`.
        pub map_flags: u32 = 24,
        /// Page size in bytes (4096).
        pub pgsize: u32 = 28,
        /// Number of pages.
        pub nr_pages: u32 = 32,
        /// In/out: pages already mapped (progress; zero on first issue).
        pub mapped: u32 = 36,
    }
}

abi_struct! {
    /// `struct pv_iommu_unmap_pages`.
    pub struct UnmapPages : size 32 {
        /// Target context.
        pub ctx_no: u16 = 0,
        /// Padding.
        pub pad0: u16 = 2,
        /// Padding.
        pub pad1: u32 = 4,
        /// First device frame.
        pub dfn: u64 = 8,
        /// Page size in bytes (4096).
        pub pgsize: u32 = 16,
        /// Number of pages.
        pub nr_pages: u32 = 20,
        /// In/out: pages already unmapped (progress; zero on first issue).
        pub unmapped: u32 = 24,
        /// Padding.
        pub pad2: u32 = 28,
    }
}

abi_struct! {
    /// `struct physdev_pci_device` (machine SBDF).
    pub struct PhysdevPciDevice : size 4 {
        /// PCI segment.
        pub seg: u16 = 0,
        /// Bus.
        pub bus: u8 = 2,
        /// Device/function.
        pub devfn: u8 = 3,
    }
}

abi_struct! {
    /// `struct pv_iommu_reattach_device`.
    pub struct ReattachDevice : size 12 {
        /// Destination context.
        pub ctx_no: u16 = 0,
        /// Device (machine SBDF).
        pub dev: PhysdevPciDevice = 2,
        /// Padding.
        pub pad0: u16 = 6,
        /// PASID (must be 0: PASIDs are not supported).
        pub pasid: u32 = 8,
    }
}

abi_struct! {
    /// `struct pv_iommu_remote_cmd`.
    pub struct RemoteCmd : size 16 {
        /// Domain the command acts on.
        pub domid: u16 = 0,
        /// Inner sub-op.
        pub subop: u16 = 2,
        /// Padding.
        pub pad0: u32 = 4,
        /// Guest handle (virtual address) of the inner argument.
        pub arg: u64 = 8,
    }
}

impl From<PciSbdf> for PhysdevPciDevice {
    fn from(d: PciSbdf) -> Self {
        PhysdevPciDevice { seg: d.seg, bus: d.bus, devfn: d.devfn }
    }
}

impl From<PhysdevPciDevice> for PciSbdf {
    fn from(d: PhysdevPciDevice) -> Self {
        PciSbdf { seg: d.seg, bus: d.bus, devfn: d.devfn }
    }
}

impl MapPages {
    /// Typed constructor with padding and progress zeroed.
    pub fn new(ctx: CtxNo, gfn: Gfn, dfn: Dfn, map_flags: u32, pgsize: u32, nr_pages: u32) -> Self {
        MapPages { ctx_no: ctx.0, gfn: gfn.0, dfn: dfn.0, map_flags, pgsize, nr_pages, ..Default::default() }
    }
}

impl UnmapPages {
    /// Typed constructor with padding and progress zeroed.
    pub fn new(ctx: CtxNo, dfn: Dfn, pgsize: u32, nr_pages: u32) -> Self {
        UnmapPages { ctx_no: ctx.0, dfn: dfn.0, pgsize, nr_pages, ..Default::default() }
    }
}

impl RemoteCmd {
    /// The target domain.
    pub fn target(&self) -> DomId {
        DomId(self.domid)
    }
}

/// A decoded hypercall argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `noop` (argument ignored).
    Noop,
    /// `query_capabilities`; the argument buffer receives [`Capabilities`].
    QueryCapabilities,
    /// `init`.
    Init(Init),
    /// `alloc_context`.
    AllocContext(Alloc),
    /// `free_context`.
    FreeContext(Free),
    /// `reattach_device`.
    ReattachDevice(ReattachDevice),
    /// `map_pages`.
    MapPages(MapPages),
    /// `unmap_pages`.
    UnmapPages(UnmapPages),
    /// `remote_cmd` (inner argument still behind the guest handle).
    RemoteCmd(RemoteCmd),
    /// A defined sub-op this interface version does not implement (9..=12).
    Unsupported(u32),
}

/// Bytes the argument of `subop` occupies (0 when it takes none).
pub fn arg_size(subop: u32) -> Result<usize, AbiError> {
    Ok(match subop {
        subop::NOOP => 0,
        subop::QUERY_CAPABILITIES => Capabilities::SIZE,
        subop::INIT => Init::SIZE,
        subop::ALLOC_CONTEXT => Alloc::SIZE,
        subop::FREE_CONTEXT => Free::SIZE,
        subop::REATTACH_DEVICE => ReattachDevice::SIZE,
        subop::MAP_PAGES => MapPages::SIZE,
        subop::UNMAP_PAGES => UnmapPages::SIZE,
        subop::REMOTE_CMD => RemoteCmd::SIZE,
        subop::ALLOC_NESTED..=subop::DETACH_PASID => 0,
        other => return Err(AbiError::UnknownSubop(other)),
    })
}

/// Decodes the argument of `subop` from `bytes` (a copy of guest memory).
///
/// Total over all inputs: never panics, never allocates. Extra bytes past
/// the structure are ignored; a short buffer is [`AbiError::Truncated`].
pub fn decode(subop: u32, bytes: &[u8]) -> Result<Op, AbiError> {
    let need = arg_size(subop)?;
    if bytes.len() < need {
        return Err(AbiError::Truncated { need, got: bytes.len() });
    }
    Ok(match subop {
        subop::NOOP => Op::Noop,
        subop::QUERY_CAPABILITIES => Op::QueryCapabilities,
        subop::INIT => Op::Init(Init::parse(bytes)?),
        subop::ALLOC_CONTEXT => Op::AllocContext(Alloc::parse(bytes)?),
        subop::FREE_CONTEXT => Op::FreeContext(Free::parse(bytes)?),
        subop::REATTACH_DEVICE => Op::ReattachDevice(ReattachDevice::parse(bytes)?),
        subop::MAP_PAGES => Op::MapPages(MapPages::parse(bytes)?),
        subop::UNMAP_PAGES => Op::UnmapPages(UnmapPages::parse(bytes)?),
        subop::REMOTE_CMD => Op::RemoteCmd(RemoteCmd::parse(bytes)?),
        other => Op::Unsupported(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_capabilities() {
        let c = Capabilities {
            max_iova_addr: (1 << 48) - 1,
            cap_flags: cap::DEFAULT_IDENTITY | cap::IDENTITY,
            pgsize_mask: 0x1000,
            max_pasid: 0x0102_0304,
            max_ctx_no: 0xabcd,
            pad0: 0,
        };
        let golden: [u8; 24] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, // max_iova_addr
            0x11, 0x00, 0x00, 0x00, // cap_flags
            0x00, 0x10, 0x00, 0x00, // pgsize_mask
            0x04, 0x03, 0x02, 0x01, // max_pasid
            0xcd, 0xab, // max_ctx_no
            0x00, 0x00, // pad0
        ];
        assert_eq!(c.to_bytes(), golden);
        assert_eq!(Capabilities::from_bytes(&golden), c);
    }

    #[test]
    fn golden_init() {
        let i = Init { max_ctx_no: 128, arena_order: 12 };
        let golden = [0x80, 0, 0, 0, 0x0c, 0, 0, 0];
        assert_eq!(i.to_bytes(), golden);
        assert_eq!(Init::from_bytes(&golden), i);
    }

    #[test]
    fn golden_alloc_and_free() {
        let a = Alloc { ctx_no: 0x0102, pad0: 0, alloc_flags: alloc_flags::IDENTITY };
        let golden = [0x02, 0x01, 0, 0, 0x01, 0, 0, 0];
        assert_eq!(a.to_bytes(), golden);
        assert_eq!(Alloc::from_bytes(&golden), a);
        let f = Free { ctx_no: 7, pad0: 0, free_flags: free_flags::REATTACH_DEFAULT };
        let golden = [0x07, 0, 0, 0, 0x01, 0, 0, 0];
        assert_eq!(f.to_bytes(), golden);
        assert_eq!(Free::from_bytes(&golden), f);
    }

    #[test]
    fn golden_map_pages() {
        let m = MapPages {
            ctx_no: 0x0203,
            gfn: 0x1122_3344_5566_7788,
            dfn: 0x0000_0000_000f_ee01,
            map_flags: map_flags::READABLE | map_flags::WRITEABLE,
            pgsize: 4096,
            nr_pages: 0x300,
            mapped: 0x100,
            ..Default::default()
        };
        let golden: [u8; 40] = [
            0x03, 0x02, 0, 0, 0, 0, 0, 0, // ctx_no, pad0, pad1
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // gfn @8
            0x01, 0xee, 0x0f, 0, 0, 0, 0, 0, // dfn @16
            0x03, 0, 0, 0, // map_flags @24
            0x00, 0x10, 0, 0, // pgsize @28
            0x00, 0x03, 0, 0, // nr_pages @32
            0x00, 0x01, 0, 0, // mapped @36
        ];
        assert_eq!(m.to_bytes(), golden);
        assert_eq!(MapPages::from_bytes(&golden), m);
    }

    #[test]
    fn golden_unmap_pages() {
        let u =
            UnmapPages { ctx_no: 9, dfn: 0xdead_beef, pgsize: 4096, nr_pages: 17, unmapped: 3, ..Default::default() };
        let golden: [u8; 32] = [
            0x09, 0, 0, 0, 0, 0, 0, 0, // ctx_no, pads
            0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0, // dfn @8
            0x00, 0x10, 0, 0, // pgsize @16
            0x11, 0, 0, 0, // nr_pages @20
            0x03, 0, 0, 0, // unmapped @24
            0, 0, 0, 0, // pad2 @28
        ];
        assert_eq!(u.to_bytes(), golden);
        assert_eq!(UnmapPages::from_bytes(&golden), u);
    }

    #[test]
    fn golden_reattach_device() {
        let r = ReattachDevice {
            ctx_no: 5,
            dev: PhysdevPciDevice { seg: 0x0001, bus: 0x3a, devfn: 0x10 },
            pad0: 0,
            pasid: 0,
        };
        let golden: [u8; 12] = [0x05, 0x00, 0x01, 0x00, 0x3a, 0x10, 0, 0, 0, 0, 0, 0];
        assert_eq!(r.to_bytes(), golden);
        assert_eq!(ReattachDevice::from_bytes(&golden), r);
        assert_eq!(PhysdevPciDevice::from_bytes(&[1, 0, 0x3a, 0x10]), r.dev);
    }

    #[test]
    fn golden_remote_cmd() {
        let r = RemoteCmd { domid: 0x7ff0, subop: subop::MAP_PAGES as u16, pad0: 0, arg: 0xffff_8000_0012_3000 };
        let golden: [u8; 16] = [0xf0, 0x7f, 0x06, 0x00, 0, 0, 0, 0, 0x00, 0x30, 0x12, 0x00, 0x00, 0x80, 0xff, 0xff];
        assert_eq!(r.to_bytes(), golden);
        assert_eq!(RemoteCmd::from_bytes(&golden), r);
    }

    #[test]
    fn decode_every_subop() {
        assert_eq!(decode(subop::NOOP, &[]), Ok(Op::Noop));
        assert_eq!(decode(subop::QUERY_CAPABILITIES, &[0; 24]), Ok(Op::QueryCapabilities));
        assert_eq!(
            decode(subop::INIT, &Init { max_ctx_no: 4, arena_order: 3 }.to_bytes()),
            Ok(Op::Init(Init { max_ctx_no: 4, arena_order: 3 }))
        );
        for s in subop::ALLOC_NESTED..=subop::DETACH_PASID {
            assert_eq!(decode(s, &[]), Ok(Op::Unsupported(s)));
        }
        assert_eq!(decode(13, &[0; 64]), Err(AbiError::UnknownSubop(13)));
        assert_eq!(decode(subop::MAP_PAGES, &[0; 39]), Err(AbiError::Truncated { need: 40, got: 39 }));
        // Trailing bytes are ignored.
        let mut long = [0u8; 48];
        long[..40].copy_from_slice(&MapPages::new(CtxNo(1), Gfn(2), Dfn(3), 3, 4096, 1).to_bytes());
        assert_eq!(
            decode(subop::MAP_PAGES, &long),
            Ok(Op::MapPages(MapPages::new(CtxNo(1), Gfn(2), Dfn(3), 3, 4096, 1)))
        );
    }

    #[test]
    fn write_to_short_buffer_fails() {
        let mut small = [0u8; 7];
        assert_eq!(Init::default().write_to(&mut small), Err(AbiError::Truncated { need: 8, got: 7 }));
    }

    proptest! {
        #[test]
        fn decode_never_panics(subop in any::<u32>(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(subop, &bytes);
        }

        #[test]
        fn map_pages_roundtrip(b in proptest::array::uniform32(any::<u8>()), tail in any::<[u8; 8]>()) {
            let mut all = [0u8; 40];
            all[..32].copy_from_slice(&b);
            all[32..].copy_from_slice(&tail);
            let m = MapPages::from_bytes(&all);
            prop_assert_eq!(m.to_bytes(), all);
        }
    }
}
