//! Bare-metal pieces used when booted via PVH under plain QEMU: port I/O,
//! the isa-debug-exit device, TSC calibration against the PIT.

/// Writes a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    if super::platform() != super::Platform::Pvh {
        return; // ring 3 under Xen PV: `out` would kill the domain
    }
    // SAFETY: PVH runs in ring 0; the ports used (COM1, PIT, debug exit)
    // have no memory effects.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags)) };
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    if super::platform() != super::Platform::Pvh {
        return 0xFF;
    }
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes a 32-bit value to an I/O port.
pub fn outl(port: u16, val: u32) {
    if super::platform() != super::Platform::Pvh {
        return;
    }
    // SAFETY: as for `outb` (PCI configuration ports).
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags)) };
}

/// Reads a 32-bit value from an I/O port.
pub fn inl(port: u16) -> u32 {
    if super::platform() != super::Platform::Pvh {
        return u32::MAX;
    }
    let v: u32;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Port of QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Code the test harness reads as success: QEMU exits with (0x10 << 1) | 1 = 33.
pub const EXIT_SUCCESS: u8 = 0x10;
/// Code for failure: QEMU exits with 35.
pub const EXIT_FAILURE: u8 = 0x11;

/// Ends the QEMU run with `code` (isa-debug-exit); halts if the device is absent.
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT_PORT, code);
    loop {
        // SAFETY: PVH runs in ring 0; hlt with interrupts off just stops.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}

/// Measures TSC ticks per microsecond over 10 ms of PIT channel 2.
pub fn calibrate_tsc() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    let ticks = (PIT_HZ / 100) as u16; // 10 ms
                                       // Gate channel 2 on, speaker off; mode 0, lobyte/hibyte.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0b1011_0000);
    outb(0x42, ticks as u8);
    outb(0x42, (ticks >> 8) as u8);
    let start = super::time::rdtsc();
    // OUT2 (port 0x61 bit 5) goes high when the count reaches zero.
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 && spins < 50_000_000 {
        spins += 1;
    }
    let elapsed = super::time::rdtsc().wrapping_sub(start);
    (elapsed / 10_000).max(1)
}
