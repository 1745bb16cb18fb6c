#!/usr/bin/env python3
"""Disk images for the lab: a background pattern and a GPT written by the host.

    mkimage.py IMAGE --size SIZE [--lba 512|4096] [--pattern KEY]
               [--part LABEL:GUID:START:LENGTH ...]

SIZE, START and LENGTH take a K/M/G suffix (powers of 1024) and must be whole
LBAs.  The image file is (re)written to exactly SIZE bytes:

- background: with --pattern KEY, every 512-byte unit u (byte offset 512*u,
  whatever the LBA size) is sha256("ferrite-bg:KEY:u") repeated 16 times, so
  every unit differs from every other and from any other image's (use the
  disk's name as KEY); "unchanged" is checkable byte for byte.  Without
  --pattern the background is zero.
- with --part (in partition-number order): a protective MBR in LBA 0, the
  primary GPT header in LBA 1, a 128-entry array (128 bytes each) from LBA 2,
  and the backup array and header at the end of the disk; header and array
  CRC32s as UEFI 2.10 §5.3 says.  Partitions get the "Linux filesystem data"
  type GUID, the unique GUID given and the name LABEL.  The disk GUID is
  derived from the first partition's GUID.  Whole LBAs holding the MBR, the
  headers and the arrays replace the background (zero-padded).

The check scripts import build() to know what an untouched image holds.
"""
import argparse
import hashlib
import struct
import sys
import uuid
import zlib

LINUX_FS = "0fc63daf-8483-4772-8e79-3d69d8477de4"
ENTRIES = 128
ENTRY_SIZE = 128
UNIT = 512


def size_arg(s):
    s = s.strip()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mult > 1 else s) * mult


def background(key, nbytes):
    """The pattern of the first nbytes of a disk with pattern KEY."""
    out = bytearray(nbytes)
    pre = f"ferrite-bg:{key}:".encode()
    for u in range(nbytes // UNIT):
        out[u * UNIT:(u + 1) * UNIT] = hashlib.sha256(pre + str(u).encode()).digest() * (UNIT // 32)
    return out


def parse_part(spec, lba):
    label, guid, start, length = spec.split(":")
    start, length = size_arg(start), size_arg(length)
    if start % lba or length % lba or length <= 0:
        raise ValueError(f"partition {spec}: START and LENGTH must be whole {lba}-byte LBAs")
    return label, uuid.UUID(guid), start // lba, (start + length) // lba - 1


def gpt_blocks(size, lba, parts):
    """{lba_number: block bytes} of the MBR, both headers and both arrays."""
    blocks = size // lba
    array_blocks = -(-ENTRIES * ENTRY_SIZE // lba)
    first_usable = 2 + array_blocks
    last_usable = blocks - 2 - array_blocks
    array = bytearray(ENTRIES * ENTRY_SIZE)
    for i, (label, guid, first, last) in enumerate(parts):
        if first < first_usable or last > last_usable:
            raise ValueError(f"partition {label}: LBAs {first}..{last} outside {first_usable}..{last_usable}")
        name = label.encode("utf-16-le")[:72].ljust(72, b"\0")
        struct.pack_into("<16s16sQQQ72s", array, i * ENTRY_SIZE, uuid.UUID(LINUX_FS).bytes_le, guid.bytes_le,
                         first, last, 0, name)
    array_crc = zlib.crc32(array) & 0xFFFFFFFF
    disk_guid = uuid.UUID(bytes=hashlib.sha256(b"disk:" + parts[0][1].bytes).digest()[:16])

    def header(my, alt, entries_lba):
        h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, 0, 0, my, alt,
                                  first_usable, last_usable, disk_guid.bytes_le, entries_lba, ENTRIES,
                                  ENTRY_SIZE, array_crc))
        struct.pack_into("<I", h, 16, zlib.crc32(h) & 0xFFFFFFFF)
        return bytes(h).ljust(lba, b"\0")

    mbr = bytearray(lba)
    struct.pack_into("<BBBBBBBBII", mbr, 446, 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, min(blocks - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    out = {0: bytes(mbr), 1: header(1, blocks - 1, 2), blocks - 1: header(blocks - 1, 1, blocks - 1 - array_blocks)}
    arr = bytes(array).ljust(array_blocks * lba, b"\0")
    for k in range(array_blocks):
        out[2 + k] = arr[k * lba:(k + 1) * lba]
        out[blocks - 1 - array_blocks + k] = arr[k * lba:(k + 1) * lba]
    return out


def build(size, lba=512, pattern=None, parts=()):
    """The image's bytes as mkimage.py writes them (parts: LABEL:GUID:START:LENGTH strings)."""
    if size % lba or lba not in (512, 1024, 2048, 4096):
        raise ValueError(f"size {size} / LBA {lba}")
    img = background(pattern, size) if pattern else bytearray(size)
    if parts:
        for n, blk in gpt_blocks(size, lba, [parse_part(p, lba) for p in parts]).items():
            img[n * lba:(n + 1) * lba] = blk
    return img


def parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("--size", required=True, type=size_arg)
    ap.add_argument("--lba", type=int, default=512)
    ap.add_argument("--pattern", metavar="KEY")
    ap.add_argument("--part", action="append", default=[], metavar="LABEL:GUID:START:LENGTH")
    return ap


def from_args(argv):
    a = parser().parse_args(argv)
    return a, build(a.size, a.lba, a.pattern, a.part)


def main(argv):
    a, img = from_args(argv)
    with open(a.image, "wb") as f:
        f.write(img)
    print(f"{a.image}: {a.size} bytes, LBA {a.lba}, background {a.pattern or 'zero'}, "
          f"{len(a.part)} GPT partition(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
