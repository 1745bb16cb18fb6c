#!/usr/bin/env python3
"""Shows that tests/check_disks.py catches a vbd that escaped its extent.

    check_disks_selftest.py [SCRATCH_DIR]

Builds fake run directories with the disks mode's images (from the mode
script's LAB-QEMU-NVME / LAB-NVME-FILL lines, as lab.sh does), writes the
guests' data as a correct Ferrite would, and as broken mappings would
(partition 1 served at partition 2's offset, partition 1 served as the whole
namespace, an extent one LBA off, a 4 KiB namespace addressed in 512-byte
units, the read-only namespace written, nvme1n2's writes landing on
nvme1n1); check_disks.py must pass the first and fail every other one.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mkimage  # noqa: E402
from check_persist import persist_data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODE = os.path.join(HERE, "..", "lab", "modes", "disks.sh")
MIB = 1 << 20
SEED = "0badcafe"


def images_txt():
    """images.txt lines as lab.sh writes them for the mode script."""
    spec = fills = None
    fills = {}
    for line in open(MODE):
        if line.startswith("# LAB-QEMU-NVME:"):
            spec = line.split(":", 1)[1].split()
        elif line.startswith("# LAB-NVME-FILL:"):
            w = line.split(":", 1)[1].split(None, 1)
            fills[w[0]] = w[1].strip()
    out = []
    for c, ctl in enumerate(spec):
        for n, ns in enumerate(ctl.split("+"), 1):
            size, _, lba = ns.partition("/")
            name = f"nvme{c}n{n}"
            if "+" in ctl or "/" in ctl:
                f = "nvme.img" if (c, n) == (0, 1) else f"nvme{c}n{n}.img"
            else:
                f = "nvme.img" if c == 0 else f"nvme{c}.img"
            out.append(f"{name} {f} {size} {lba or 512} {fills.get(name, '')}".strip())
    return out


def make_run(d, writes):
    """writes: (disk, byte offset, seed suffix)."""
    os.makedirs(d)
    files = {}
    with open(os.path.join(d, "images.txt"), "w") as f:
        for line in images_txt():
            f.write(line + "\n")
            w = line.split()
            a = mkimage.parser().parse_args([os.path.join(d, w[1]), "--size", w[2], "--lba", w[3]] + w[4:])
            files[w[0]] = (a.image, mkimage.build(a.size, a.lba, a.pattern, a.part))
    with open(os.path.join(d, "serial.log"), "w") as f:
        f.write(f"LAB-INFO disks-seed {SEED}\n")
    for disk, off, suffix in writes:
        data = persist_data(SEED + suffix, MIB) if suffix else b"\xff" * 4096
        files[disk][1][off:off + len(data)] = data
    for path, img in files.values():
        with open(path, "wb") as f:
            f.write(img)


def main():
    tmp = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="check-disks-")
    p1, p2 = 1 * MIB, 18 * MIB   # disks.sh's partitions, 16 MiB each
    good = [("nvme0n1", p1, "a1"), ("nvme0n1", p1 + 15 * MIB, "a2"),
            ("nvme0n1", p2, "b1"), ("nvme0n1", p2 + 15 * MIB, "b2"),
            ("nvme1n2", 0, "c1"), ("nvme1n2", 15 * MIB, "c2")]
    a_at = lambda base, size=16 * MIB: [("nvme0n1", base, "a1"), ("nvme0n1", base + size - MIB, "a2")]  # noqa: E731
    cases = [
        ("correct", good, 0),
        ("p1 served at p2's offset", good[2:] + a_at(p2), 1),
        ("p1 served as the whole namespace", good[2:] + a_at(0, 64 * MIB), 1),
        ("p1 one LBA late", good[2:] + a_at(p1 + 512), 1),
        ("p1 one LBA long (tail lands past its end)", good[2:] + [("nvme0n1", p1, "a1"), ("nvme0n1", p1 + 15 * MIB + 512, "a2")], 1),
        ("nvme1n2 addressed in 512-byte LBAs", good[:4] + [("nvme1n2", 0, "c1"), ("nvme1n2", 15 * MIB // 8, "c2")], 1),
        ("nvme1n2's writes land on nvme1n1", good[:4] + [("nvme1n1", 0, "c1"), ("nvme1n1", 15 * MIB, "c2")], 1),
        ("a write reached the read-only nvme1n1", good + [("nvme1n1", 0, None)], 1),
        ("a write in the gap between the partitions", good + [("nvme0n1", 17 * MIB, None)], 1),
        ("the backup GPT overwritten", good + [("nvme0n1", 64 * MIB - 4096, None)], 1),
    ]
    failures = 0
    for i, (name, writes, want_rc) in enumerate(cases):
        d = os.path.join(tmp, f"case{i}")
        make_run(d, writes)
        r = subprocess.run([sys.executable, os.path.join(HERE, "check_disks.py"), d], capture_output=True, text=True)
        ok = (r.returncode == 0) == (want_rc == 0)
        failures += not ok
        last = [line for line in r.stdout.splitlines() if "NOT at" in line or "differ" in line][:2]
        print(f"{'ok  ' if ok else 'BAD '} {name}: check_disks.py exit {r.returncode} {'; '.join(last)}")
        shutil.rmtree(d)
    print(f"check_disks_selftest: {len(cases) - failures}/{len(cases)} as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
