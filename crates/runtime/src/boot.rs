//! Entry points and Xen ELF notes.
//!
//! One image, two ways in:
//! - `_start`: Xen x86-64 PV. Long mode, ring 3, `rsi` = virtual address of
//!   `start_info`, a Xen-built 1:1 mapping from VIRT_BASE (0), events masked.
//! - `pvh_start32`: PVH (QEMU `-kernel`, or Xen HVM). 32-bit protected mode,
//!   paging off, `ebx` = physical address of `hvm_start_info`, no stack. We
//!   build a 4 GiB identity map with 2 MiB pages, enter long mode and join
//!   the common Rust code.
//!
//! Note numbers are from `xen/include/public/elfnote.h`.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    /* GUEST_OS (6) */
    .long 4, 8, 6
    .ascii "Xen\0"
    .ascii "Ferrite\0"
    /* GUEST_VERSION (7) */
    .long 4, 4, 7
    .ascii "Xen\0"
    .ascii "0.1\0"
    /* XEN_VERSION (5) */
    .long 4, 8, 5
    .ascii "Xen\0"
    .ascii "xen-3.0\0"
    /* LOADER (8) */
    .long 4, 8, 8
    .ascii "Xen\0"
    .ascii "generic\0"
    /* VIRT_BASE (3) = 0: virtual addresses equal pseudo-physical ones */
    .long 4, 8, 3
    .ascii "Xen\0"
    .quad 0
    /* PADDR_OFFSET (4) = 0 */
    .long 4, 8, 4
    .ascii "Xen\0"
    .quad 0
    /* ENTRY (1) */
    .long 4, 8, 1
    .ascii "Xen\0"
    .quad _start
    /* HYPERCALL_PAGE (2) */
    .long 4, 8, 2
    .ascii "Xen\0"
    .quad hypercall_page
    /* FEATURES (10) */
    .long 4, 24, 10
    .ascii "Xen\0"
    .ascii "!writable_page_tables\0\0\0"
    /* PAE_MODE (9) */
    .long 4, 4, 9
    .ascii "Xen\0"
    .ascii "yes\0"
    /* PHYS32_ENTRY (18), 8-byte value */
    .long 4, 8, 18
    .ascii "Xen\0"
    .quad pvh_start32

    .section .text.boot, "ax"
    .code64
    .global _start
_start:
    /* Xen PV: rsi = start_info, rsp = top of Xen's small boot stack. */
    mov %rsp, %rdx
    lea __boot_stack_top(%rip), %rsp
    mov %rsi, %rdi
    mov %rdx, %rsi
    call ferrite_pv_start
1:  jmp 1b

    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %edi
    /* Page directories: 2048 entries of 2 MiB pages cover 0..4 GiB. */
    mov $__pvh_pd, %edx
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              /* present | writable | page size */
    mov %eax, (%edx,%ecx,8)
    movl $0, 4(%edx,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jb 2b
    mov %cr4, %eax
    or $0x20, %eax              /* CR4.PAE */
    mov %eax, %cr4
    mov $__pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* IA32_EFER */
    rdmsr
    or $0x100, %eax             /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    lgdt __pvh_gdt_desc
    ljmp $0x08, $3f
    .code64
3:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    lea __boot_stack_top(%rip), %rsp
    mov %edi, %edi
    call ferrite_pvh_start
4:  hlt
    jmp 4b

    /* Filled in by Xen (HYPERCALL_PAGE note): 128 stubs of 32 bytes. */
    .balign 4096
    .global hypercall_page
hypercall_page:
    .fill 4096, 1, 0xcc

    .section .data.pvh, "aw"
    .balign 4096
__pvh_pml4:
    .quad __pvh_pdpt + 0x3
    .fill 511, 8, 0
__pvh_pdpt:
    .quad __pvh_pd + 0x3
    .quad __pvh_pd + 0x1003
    .quad __pvh_pd + 0x2003
    .quad __pvh_pd + 0x3003
    .fill 508, 8, 0
    .balign 8
__pvh_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
__pvh_gdt_desc:
    .word 23
    .long __pvh_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
__pvh_pd:
    .skip 4 * 4096
__boot_stack:
    .skip 64 * 1024
__boot_stack_top:
    "#,
    options(att_syntax)
);
