//! The unsafe pieces behind Ferrite's VT-d self-test on PVH (plain QEMU,
//! ring 0, low 4 GiB identity-mapped):
//!
//! - [`PhysPool`]: a reserved range of RAM handed out as zeroed 4 KiB frames
//!   for IOMMU structures (root/context/page tables, the invalidation
//!   queue), with word accesses bounded to the pool.
//! - [`read_firmware`]: copies firmware tables (ACPI RSDP/RSDT/DMAR) out of
//!   low memory.
//! - [`irq`]: an IDT, the local APIC and one MSI vector.
//!
//! The VT-d registers themselves are reached through `dev::mmio_identity`
//! (volatile 32-bit accesses, `drivers::hal::RegisterIo`); the register
//! logic is safe code in `iommu_core::mmio`.

use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicBool, Ordering};

const PAGE: u64 = 4096;

/// RAM frames reserved for the IOMMU, zeroed on allocation.
pub struct PhysPool {
    base: u64,
    frames: u64,
    used: Vec<bool>,
    allocated: u64,
}

impl PhysPool {
    /// Frames `[base, base + frames · 4 KiB)`.
    ///
    /// # Safety
    /// The range must be RAM, identity-mapped and writable, page aligned,
    /// and used by nothing else (not the heap, not the image) for the
    /// lifetime of the pool and of every device that may read it.
    pub unsafe fn new(base: u64, frames: u64) -> Self {
        assert!(base.is_multiple_of(PAGE) && base.checked_add(frames * PAGE).is_some_and(|e| e <= 1 << 32));
        PhysPool { base, frames, used: alloc::vec![false; frames as usize], allocated: 0 }
    }

    /// Claims `frames` frames of the free RAM above the heap that a PVH boot
    /// reports (`free_start..ram_top`, used by nothing else). Succeeds once
    /// per boot, so the pool's frames have a single owner.
    pub fn claim(boot: &super::PvhBoot, frames: u64) -> Option<Self> {
        static CLAIMED: AtomicBool = AtomicBool::new(false);
        let base = boot.free_start.checked_add(PAGE - 1)? & !(PAGE - 1);
        let end = base.checked_add(frames.checked_mul(PAGE)?)?;
        if end > boot.ram_top || end > 1 << 32 || CLAIMED.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: PvhBoot documents free_start..ram_top as free RAM inside
        // the identity map; the flag above hands it out once.
        Some(unsafe { PhysPool::new(base, frames) })
    }

    /// First byte of the pool.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Frames handed out.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Pool frames in all.
    pub fn capacity(&self) -> u64 {
        self.frames
    }

    fn slot(&self, pa: u64) -> Option<usize> {
        let i = pa.checked_sub(self.base)? / PAGE;
        (i < self.frames).then_some(i as usize)
    }

    /// A zeroed frame (physical address), or `None` when exhausted.
    pub fn alloc_zeroed(&mut self) -> Option<u64> {
        let i = self.used.iter().position(|u| !u)?;
        self.used[i] = true;
        self.allocated += 1;
        let pa = self.base + i as u64 * PAGE;
        // SAFETY: inside the pool (new's contract), a whole free frame.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, PAGE as usize) };
        fence(Ordering::SeqCst);
        Some(pa)
    }

    /// Returns a frame. Panics on a frame outside the pool or a double free
    /// (a bug in the core, which only frees frames it allocated).
    pub fn free(&mut self, pa: u64) {
        let i = self.slot(pa).filter(|_| pa.is_multiple_of(PAGE)).expect("PhysPool: free outside the pool");
        assert!(self.used[i], "PhysPool: double free of {pa:#x}");
        self.used[i] = false;
        self.allocated -= 1;
    }

    /// Reads the aligned word at `pa` of an allocated frame.
    pub fn read_u64(&self, pa: u64) -> Option<u64> {
        let i = self.slot(pa)?;
        if !pa.is_multiple_of(8) || !self.used[i] {
            return None;
        }
        // SAFETY: an allocated pool frame, aligned; volatile because the
        // IOMMU writes status words there.
        Some(unsafe { core::ptr::read_volatile(pa as *const u64) })
    }

    /// Writes the aligned word at `pa` of an allocated frame; false (and no
    /// write) outside the pool.
    pub fn write_u64(&mut self, pa: u64, v: u64) -> bool {
        match self.slot(pa) {
            Some(i) if pa.is_multiple_of(8) && self.used[i] => {
                // SAFETY: as in read_u64. The IOMMU reads these tables: the
                // store is volatile and fenced so it is visible before any
                // later register write that tells the unit to look.
                unsafe { core::ptr::write_volatile(pa as *mut u64, v) };
                fence(Ordering::Release);
                true
            }
            _ => false,
        }
    }
}

impl PhysPool {
    /// Writes the cache lines covering `[pa, pa + len)` back to memory, for
    /// a VT-d unit without page-walk coherency (ECAP.C = 0), which reads
    /// the tables from memory without snooping: CLFLUSH on every 64-byte
    /// line, between two full fences. Lines outside the allocated pool
    /// frames are skipped (the core only flushes tables it wrote).
    pub fn write_back(&self, pa: u64, len: u64) {
        const LINE: u64 = 64;
        let Some(end) = pa.checked_add(len.max(1)) else { return };
        // Earlier stores (the entries just written) are globally visible
        // before the flushes; CLFLUSH is ordered after older stores to the
        // same line anyway, the fence also covers the compiler.
        fence(Ordering::SeqCst);
        let mut line = pa & !(LINE - 1);
        // Bounded by len / 64 + 1 steps.
        while line < end {
            let owned = self.slot(line).is_some_and(|i| self.used[i]);
            if owned {
                // SAFETY: `line` lies in an allocated pool frame, which is
                // identity-mapped RAM (new's contract); CLFLUSH only writes
                // the line back and invalidates it, it changes no data.
                unsafe { core::arch::asm!("clflush [{}]", in(reg) line, options(nostack, preserves_flags)) };
            }
            match line.checked_add(LINE) {
                Some(next) => line = next,
                None => break,
            }
        }
        // The write-backs complete before the register write (or
        // invalidation descriptor) that makes the unit look.
        fence(Ordering::SeqCst);
    }
}

/// Lowest address [`read_firmware`] refuses: the q35 PCI/MMCONFIG holes
/// and the local APIC lie above it.
pub const FIRMWARE_READ_LIMIT: u64 = 0x8000_0000;

/// Copies `buf.len()` bytes of firmware tables at physical `addr`. Refused
/// (false) unless booted via PVH and the range lies in `[0xE0000, 2 GiB)`
/// (the BIOS area and RAM, where ACPI tables live; never device memory).
pub fn read_firmware(addr: u64, buf: &mut [u8]) -> bool {
    if super::platform() != super::Platform::Pvh {
        return false;
    }
    let Some(end) = addr.checked_add(buf.len() as u64) else { return false };
    if addr < 0xE0000 || end > FIRMWARE_READ_LIMIT {
        return false;
    }
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: PVH identity-maps the low 4 GiB; the range is the BIOS
        // area or RAM (checked above), so reads have no side effects; bytes
        // are copied out, no reference is formed.
        *b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
    }
    true
}

/// Interrupts on PVH: an IDT whose every vector but two ends the QEMU run
/// as a failure, the local APIC in xAPIC mode, and one MSI vector counted.
pub mod irq {
    use core::sync::atomic::{AtomicU32, Ordering};

    /// The vector MSIs are sent to.
    pub const MSI_VECTOR: u8 = 0x40;
    /// The APIC's spurious vector.
    pub const SPURIOUS_VECTOR: u8 = 0xFF;
    /// xAPIC register page.
    const APIC_BASE: u64 = 0xFEE0_0000;
    const APIC_ID: u64 = 0x20;
    const APIC_TPR: u64 = 0x80;
    const APIC_SVR: u64 = 0xF0;
    const IA32_APIC_BASE: u32 = 0x1B;

    /// MSIs taken on [`MSI_VECTOR`]; incremented by the handler.
    #[no_mangle]
    static FERRITE_MSI_COUNT: AtomicU32 = AtomicU32::new(0);

    core::arch::global_asm!(
        r#"
        .section .text.irq, "ax"
        .code64
        .global ferrite_msi_entry
    ferrite_msi_entry:
        push %rax
        lock incl FERRITE_MSI_COUNT(%rip)
        movabs $0xfee000b0, %rax    /* EOI */
        movl $0, (%rax)
        pop %rax
        iretq
        .global ferrite_spurious_entry
    ferrite_spurious_entry:
        iretq                        /* no EOI for spurious interrupts */
        .global ferrite_unexpected_entry
    ferrite_unexpected_entry:
        mov $0x11, %al               /* isa-debug-exit: failure */
        mov $0xf4, %dx
        out %al, %dx
    1:  cli
        hlt
        jmp 1b
        "#,
        options(att_syntax)
    );

    extern "C" {
        fn ferrite_msi_entry();
        fn ferrite_spurious_entry();
        fn ferrite_unexpected_entry();
    }

    /// Why interrupts cannot be set up.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IrqError {
        /// Not booted via PVH (ring 0).
        NotPvh,
        /// IA32_APIC_BASE says the APIC is off, in x2APIC mode, or elsewhere.
        Apic(u64),
    }

    static IDT: spin::Once<&'static [u64; 512]> = spin::Once::new();

    fn gate(handler: u64) -> (u64, u64) {
        // Interrupt gate (type 0xE, present, DPL 0), selector 0x08 (the PVH
        // GDT's 64-bit code segment), IST 0.
        let lo = (handler & 0xFFFF) | (0x08 << 16) | (0x8E00u64 << 32) | ((handler >> 16) & 0xFFFF) << 48;
        (lo, handler >> 32)
    }

    fn rdmsr(msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: ring 0 on PVH (checked by callers); IA32_APIC_BASE exists
        // on every x86-64 CPU with an APIC.
        unsafe {
            core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
        };
        (hi as u64) << 32 | lo as u64
    }

    fn apic_write(off: u64, v: u32) {
        // SAFETY: the xAPIC page at 0xFEE00000 is identity-mapped on PVH and
        // verified by `init` (IA32_APIC_BASE); aligned 32-bit register.
        unsafe { core::ptr::write_volatile((APIC_BASE + off) as *mut u32, v) }
    }

    fn apic_read(off: u64) -> u32 {
        // SAFETY: as in apic_write.
        unsafe { core::ptr::read_volatile((APIC_BASE + off) as *const u32) }
    }

    /// Loads the IDT, masks the 8259 PICs and software-enables the local
    /// APIC. Interrupts stay disabled (IF=0) until [`with_interrupts`].
    /// Returns the local APIC id (the MSI destination).
    pub fn init() -> Result<u8, IrqError> {
        if super::super::platform() != super::super::Platform::Pvh {
            return Err(IrqError::NotPvh);
        }
        let base = rdmsr(IA32_APIC_BASE);
        // Bit 11 enabled, bit 10 x2APIC (we use xAPIC MMIO), base 0xFEE00000.
        if base & (1 << 11) == 0 || base & (1 << 10) != 0 || base & 0xF_FFFF_F000 != APIC_BASE {
            return Err(IrqError::Apic(base));
        }
        let idt = IDT.call_once(|| {
            let t = alloc::boxed::Box::leak(alloc::boxed::Box::new([0u64; 512]));
            for v in 0..256usize {
                let h = match v as u8 {
                    MSI_VECTOR => ferrite_msi_entry as *const () as u64,
                    SPURIOUS_VECTOR => ferrite_spurious_entry as *const () as u64,
                    _ => ferrite_unexpected_entry as *const () as u64,
                };
                let (lo, hi) = gate(h);
                t[2 * v] = lo;
                t[2 * v + 1] = hi;
            }
            t
        });
        let mut desc = [0u8; 10];
        desc[..2].copy_from_slice(&(512u16 * 8 - 1).to_le_bytes());
        desc[2..].copy_from_slice(&(idt.as_ptr() as u64).to_le_bytes());
        // SAFETY: ring 0; the IDT is leaked ('static) and every gate points
        // at a handler above; the descriptor is read during the instruction.
        unsafe { core::arch::asm!("lidt [{}]", in(reg) desc.as_ptr(), options(readonly, nostack, preserves_flags)) };
        // Mask both 8259s: legacy IRQs would arrive on vectors 8..15, which
        // are exception vectors here.
        crate::pvh::outb(0x21, 0xFF);
        crate::pvh::outb(0xA1, 0xFF);
        apic_write(APIC_TPR, 0);
        apic_write(APIC_SVR, 0x100 | SPURIOUS_VECTOR as u32);
        Ok((apic_read(APIC_ID) >> 24) as u8)
    }

    /// MSIs counted on [`MSI_VECTOR`] so far.
    pub fn msi_count() -> u32 {
        FERRITE_MSI_COUNT.load(Ordering::Acquire)
    }

    /// The MSI address/data pair that delivers [`MSI_VECTOR`] to `apic_id`
    /// (fixed delivery, edge, physical destination).
    pub fn msi_message(apic_id: u8) -> (u64, u32) {
        (APIC_BASE | (apic_id as u64) << 12, MSI_VECTOR as u32)
    }

    /// Runs `f` with interrupts enabled (IF=1), then disables them again.
    /// Only after [`init`] succeeded: unexpected vectors end the run.
    pub fn with_interrupts<R>(f: impl FnOnce() -> R) -> R {
        assert!(IDT.is_completed(), "irq::init first");
        // SAFETY: ring 0 on PVH (init checked), IDT loaded with handlers for
        // every vector; the PICs are masked.
        unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
        let r = f();
        // SAFETY: as above.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        r
    }
}
