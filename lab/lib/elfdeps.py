#!/usr/bin/env python3
"""Resolve the shared-library closure of ELF programs inside an extracted package tree.

usage: elfdeps.py ROOT PROGRAM...   (program paths relative to ROOT)

Prints one line per resolved library ("lib <path relative to ROOT>") and one per
soname that no library directory in ROOT holds ("missing <soname>").
Uses `objdump -p` (binutils) to read DT_NEEDED and DT_RUNPATH.
"""
import os
import subprocess
import sys

LIB_DIRS = [
    "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib",
    "usr/lib/xen-4.17/lib/x86_64-linux-gnu",
]


def dynamic_info(path):
    out = subprocess.run(["objdump", "-p", path], capture_output=True, text=True).stdout
    needed, runpath = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "NEEDED":
            needed.append(parts[1])
        elif len(parts) == 2 and parts[0] in ("RUNPATH", "RPATH"):
            runpath += [p.lstrip("/") for p in parts[1].split(":")]
    return needed, runpath


def find(root, soname, extra_dirs):
    for d in extra_dirs + LIB_DIRS:
        p = os.path.join(root, d, soname)
        if os.path.lexists(p):
            return os.path.join(d, soname)
    return None


def main():
    root, progs = sys.argv[1], sys.argv[2:]
    todo = list(progs)
    seen, libs, missing = set(), [], set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        needed, runpath = dynamic_info(os.path.join(root, rel))
        for so in needed:
            hit = find(root, so, runpath)
            if hit is None:
                missing.add(so)
            elif hit not in seen:
                libs.append(hit)
                todo.append(hit)
    for lib in sorted(set(libs)):
        print("lib", lib)
    for so in sorted(missing):
        print("missing", so)


if __name__ == "__main__":
    main()
