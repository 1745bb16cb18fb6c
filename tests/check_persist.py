#!/usr/bin/env python3
"""Host-side check of the lab's blk-persist test: the NVMe image file holds
the guest's data after the run.

lab/modes/test.sh prints "LAB-INFO blk-persist: seed S, bytes A..B, sha256 H"
and a guest writes persist_data S (lab/dom0/common.sh: the lines
"ferrite-persist-S-0", "ferrite-persist-S-1", ... cut to B-A bytes) at byte A
of its disk, which Ferrite serves from the NVMe whose image is this file.
Nothing writes there afterwards in MODE test (the self-test image's
destructive disk test runs before the product).
    check_persist.py LAB_LOG NVME_IMAGE
"""
import hashlib
import re
import sys


def persist_data(seed, n):
    out, i, size = [], 0, 0
    while size < n:
        line = f"ferrite-persist-{seed}-{i}\n".encode()
        out.append(line)
        size += len(line)
        i += 1
    return b"".join(out)[:n]


def main(log, image):
    m = None
    with open(log, errors="replace") as f:
        for line in f:
            m = re.search(r"blk-persist: seed ([0-9a-f]+), bytes (\d+)\.\.(\d+), sha256 ([0-9a-f]{64})", line) or m
    if not m:
        print(f"{log}: no blk-persist seed line")
        return 1
    seed, start, end, sha = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    want = persist_data(seed, end - start)
    if hashlib.sha256(want).hexdigest() != sha:
        print(f"the data for seed {seed} does not hash to {sha}: lab/dom0/common.sh and this script disagree")
        return 1
    with open(image, "rb") as f:
        f.seek(start)
        got = f.read(end - start)
    if got != want:
        bad = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
        print(f"{image}: bytes {start}..{end} differ from the guest's data (seed {seed}) at byte {start + bad}")
        return 1
    print(f"{image}: bytes {start}..{end} hold the guest's data (seed {seed}, sha256 {sha[:16]}...)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
