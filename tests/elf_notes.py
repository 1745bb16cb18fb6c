#!/usr/bin/env python3
"""Checks the Xen ELF notes and load layout of a Ferrite image.

binutils prints Xen's notes as unknown types, so this reads them itself.
Exit 0 when every note Xen's PV builder and QEMU's PVH loader need is
present with the right value; prints each problem otherwise.
"""
import struct
import sys


def notes(data):
    (e_phoff,) = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(e_phnum):
        p_type, _flags, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            dpos = pos + 12 + ((namesz + 3) & ~3)
            yield name, ntype, data[dpos : dpos + descsz]
            pos = dpos + ((descsz + 3) & ~3)


def symbol(data, name):
    """Value of symbol `name` from .symtab, or None."""
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    for sh in secs:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = secs[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            st_name, _info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data, off)
            start = strtab[4] + st_name
            if data[start : data.index(b"\0", start)] == name:
                return st_value
    return None


def load_end(data):
    (e_phoff,) = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    end = 0
    for i in range(e_phnum):
        p_type, _f, _off, vaddr, _pa, _fsz, memsz = struct.unpack_from("<IIQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:
            end = max(end, vaddr + memsz)
    return end


def main(path):
    data = open(path, "rb").read()
    problems = []
    if data[:4] != b"\x7fELF" or data[4] != 2:
        print(f"{path}: not an ELF64 file")
        return 1
    (e_type,) = struct.unpack_from("<H", data, 0x10)
    if e_type != 2:
        problems.append(f"ELF type {e_type}, want ET_EXEC (2): loaders apply no relocations")
    xen = {t: d for n, t, d in notes(data) if n == b"Xen"}
    want_str = {6: b"Ferrite", 5: b"xen-3.0", 8: b"generic", 9: b"yes", 10: b"!writable_page_tables"}
    for t, v in want_str.items():
        got = xen.get(t, b"").rstrip(b"\0")
        if got != v:
            problems.append(f"note {t}: {got!r}, want {v!r}")
    for t in (3, 4):
        if xen.get(t) != bytes(8):
            problems.append(f"note {t} (VIRT_BASE/PADDR_OFFSET) must be 8 zero bytes, is {xen.get(t)!r}")
    for t, what in ((1, "ENTRY"), (2, "HYPERCALL_PAGE"), (18, "PHYS32_ENTRY")):
        d = xen.get(t)
        if d is None or len(d) != 8 or struct.unpack("<Q", d)[0] < 0x100000:
            problems.append(f"note {t} ({what}) missing or not an 8-byte address in the image: {d!r}")
    if 2 in xen and len(xen[2]) == 8 and struct.unpack("<Q", xen[2])[0] % 4096:
        problems.append("HYPERCALL_PAGE is not page aligned")
    image_end = symbol(data, b"__image_end")
    if image_end is None:
        problems.append("no __image_end symbol")
    elif load_end(data) > image_end:
        problems.append(f"loaded data ends at {load_end(data):#x}, past __image_end {image_end:#x}: the heap would overwrite it")
    for p in problems:
        print(f"{path}: {p}")
    if not problems:
        print(f"{path}: {len(xen)} Xen notes OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
