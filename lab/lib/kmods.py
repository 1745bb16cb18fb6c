#!/usr/bin/env python3
"""Order kernel modules so that each comes after the modules it depends on.

usage: kmods.py MODULE_DIR NAME...   (MODULE_DIR = .../lib/modules/<version>)

Reads the "depends=" entry of each module's .modinfo ELF section, so no depmod
is needed on the host.  Prints the .ko paths (relative to MODULE_DIR), dependencies
first.  Names built into the kernel (modules.builtin) are skipped.
"""
import os
import subprocess
import sys


def norm(name):
    return name.replace("-", "_")


def modinfo_depends(path):
    # objcopy the .modinfo section out: it is a list of NUL-separated key=value strings.
    data = subprocess.run(["objcopy", "-O", "binary", "--only-section=.modinfo", path, "/dev/stdout"],
                          capture_output=True).stdout
    for item in data.split(b"\0"):
        if item.startswith(b"depends="):
            return [d for d in item[len(b"depends="):].decode().split(",") if d]
    return []


def main():
    mdir, wanted = sys.argv[1], sys.argv[2:]
    index = {}
    for dirpath, _, files in os.walk(os.path.join(mdir, "kernel")):
        for f in files:
            if f.endswith(".ko"):
                index[norm(f[:-3])] = os.path.relpath(os.path.join(dirpath, f), mdir)
    builtin = set()
    bfile = os.path.join(mdir, "modules.builtin")
    if os.path.exists(bfile):
        for line in open(bfile):
            builtin.add(norm(os.path.basename(line.strip())[:-3]))
    order, state = [], {}

    def visit(name, chain):
        n = norm(name)
        if state.get(n) == "done" or n in builtin:
            return
        if n not in index:
            sys.exit("kmods: module %s not found (needed by %s)" % (name, " <- ".join(chain) or "request"))
        if state.get(n) == "visiting":
            sys.exit("kmods: dependency cycle at %s" % n)
        state[n] = "visiting"
        for dep in modinfo_depends(os.path.join(mdir, index[n])):
            visit(dep, chain + [n])
        state[n] = "done"
        order.append(index[n])

    for w in wanted:
        visit(w, [])
    print("\n".join(order))


if __name__ == "__main__":
    main()
