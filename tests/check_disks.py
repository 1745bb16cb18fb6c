#!/usr/bin/env python3
"""Host-side check of the lab's MODE disks (lab/modes/disks.sh), after QEMU exits.

    check_disks.py RUN_DIR

RUN_DIR holds serial.log, images.txt ("DISK FILE SIZE LBA FILL-ARGS...", written
by lab.sh) and the NVMe images.  What an untouched image holds is rebuilt with
tests/mkimage.py from images.txt; the seed comes from dom0's console line
"LAB-INFO disks-seed S" (only dom0 writes the serial log).  The layout below is
disks.sh's:

- each writer guest wrote persist_data(S + L + k) (1 MiB, lab/dom0/common.sh)
  at the first (k=1) and the last (k=2) MiB of its disk: dA = partition 1 of
  nvme0n1 (disks-alpha), dB = partition 2 (disks-beta), dC = nvme1n2 (whole
  namespace, 4 KiB LBAs); the extents come from the GPT arguments in images.txt;
- those 2 MiB must hold exactly that data, at exactly those offsets;
- every other byte of every image must equal the untouched image (background
  pattern, MBR, both GPTs, the gap between the partitions, the unwritten parts
  of each partition, the read-only nvme1n1), except the rest of nvme1n2, where
  dC made its ext4 (its whole disk is dC's to write).

A vbd that escaped its extent (another partition's offset, the whole
namespace, an off-by-one LBA, the wrong namespace) leaves the guest's data
away from where it is expected and changes bytes that must not change: both
are reported, with where the data was found instead.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mkimage  # noqa: E402
from check_persist import persist_data  # noqa: E402

MIB = 1 << 20
UNIT = 512


def describe(off, disk, parts):
    for label, _guid, first, last, lba in parts.get(disk, []):
        if first * lba <= off < (last + 1) * lba:
            return f"{disk} partition {label} +{off - first * lba}"
    return f"{disk} outside every partition"


def find(img, needle):
    """Offsets (512-aligned) where needle's first 512 bytes occur."""
    out, i = [], img.find(needle[:UNIT])
    while i >= 0 and len(out) < 4:
        if i % UNIT == 0:
            out.append(i)
        i = img.find(needle[:UNIT], i + 1)
    return out


def main(run):
    seed = None
    with open(os.path.join(run, "serial.log"), errors="replace") as f:
        for line in f:
            m = re.match(r"^LAB-INFO disks-seed ([0-9a-f]{8})\s*$", line)
            seed = m.group(1) if m else seed
    if not seed:
        print(f"{run}/serial.log: no 'LAB-INFO disks-seed' line")
        return 1
    disks, parts = {}, {}
    with open(os.path.join(run, "images.txt")) as f:
        for line in f:
            w = line.split()
            if len(w) < 4:
                continue
            a = mkimage.parser().parse_args([os.path.join(run, w[1]), "--size", w[2], "--lba", w[3]] + w[4:])
            disks[w[0]] = a
            parts[w[0]] = [mkimage.parse_part(p, a.lba) + (a.lba,) for p in a.part]
    want_disks = {"nvme0n1": (64 * MIB, 512), "nvme1n1": (32 * MIB, 512), "nvme1n2": (16 * MIB, 4096)}
    for d, (size, lba) in want_disks.items():
        if d not in disks or (disks[d].size, disks[d].lba) != (size, lba):
            print(f"images.txt does not describe {d} as {size} bytes / LBA {lba}: not the disks mode's layout")
            return 1
    if len(parts["nvme0n1"]) != 2:
        print("images.txt: nvme0n1 has no two-partition GPT")
        return 1
    # (guest, disk, extent start, extent bytes, letter)
    p1, p2 = parts["nvme0n1"]
    writers = [("dA", "nvme0n1", p1[2] * 512, (p1[3] - p1[2] + 1) * 512, "a"),
               ("dB", "nvme0n1", p2[2] * 512, (p2[3] - p2[2] + 1) * 512, "b"),
               ("dC", "nvme1n2", 0, 16 * MIB, "c")]
    scratch = {"nvme1n2": [(0, 16 * MIB)]}
    bad = 0
    for disk, a in sorted(disks.items()):
        with open(a.image, "rb") as f:
            got = bytearray(f.read())
        want = mkimage.build(a.size, a.lba, a.pattern, a.part)
        if len(got) != len(want):
            print(f"{disk}: image is {len(got)} bytes, expected {len(want)}")
            bad += 1
            continue
        regions = []
        for g, d, start, length, letter in writers:
            if d != disk:
                continue
            for k, off in ((1, start), (2, start + length - MIB)):
                data = persist_data(f"{seed}{letter}{k}", MIB)
                regions.append((f"{g} region {seed}{letter}{k}", off, data))
        # Scratch areas: whatever the guest left there is accepted (copied over).
        for lo, hi in scratch.get(disk, []):
            want[lo:hi] = got[lo:hi]
        for name, off, data in regions:
            if bytes(got[off:off + len(data)]) == data:
                print(f"{disk}: {name}: the guest's 1 MiB is at {off} ({describe(off, disk, parts)})")
            else:
                seen = find(bytes(got), data)
                print(f"{disk}: {name}: NOT at {off} ({describe(off, disk, parts)}); its first 512 bytes are at "
                      f"{', '.join(f'{s} ({describe(s, disk, parts)})' for s in seen) or 'no offset of this image'}")
                bad += 1
            want[off:off + len(data)] = data
        if got == want:
            if scratch.get(disk):
                print(f"{disk}: the rest of the namespace is the guest's own (its filesystem): not compared")
            else:
                kept = a.size - sum(len(x[2]) for x in regions)
                print(f"{disk}: every other byte is untouched ({kept} bytes: background, MBR, GPTs, gaps)")
            continue
        diff = [u for u in range(a.size // UNIT) if got[u * UNIT:(u + 1) * UNIT] != want[u * UNIT:(u + 1) * UNIT]]
        bad += 1
        print(f"{disk}: {len(diff)} 512-byte unit(s) differ from what must be there; first at "
              f"{', '.join(f'{u * UNIT} ({describe(u * UNIT, disk, parts)})' for u in diff[:6])}")
    print(f"check_disks: {'PASS' if not bad else 'FAIL'} (seed {seed}, {len(disks)} images)")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
