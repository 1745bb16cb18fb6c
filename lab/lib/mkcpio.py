#!/usr/bin/env python3
"""Write a cpio archive in the "newc" format that Linux's initramfs unpacker reads.

usage: mkcpio.py SRC_DIR OUT_FILE [--gzip]

Every entry is owned by root; modes, symlinks and file contents come from SRC_DIR.
Entries are sorted so that the same tree always gives the same bytes.
"""
import gzip
import os
import stat
import sys

MAGIC = b"070701"


def header(ino, mode, nlink, size, name):
    # newc: 13 fields of 8 hex digits after the 6-byte magic, then the NUL-terminated name,
    # padded so that name and data each start on a 4-byte boundary.
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    hdr = MAGIC + b"".join(b"%08x" % f for f in fields) + name + b"\0"
    return hdr + b"\0" * ((-len(hdr)) % 4)


def entries(src):
    yield "."
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        for n in sorted(dirnames + filenames):
            yield os.path.normpath(os.path.join(rel, n))


def main():
    src, out = sys.argv[1], sys.argv[2]
    compress = "--gzip" in sys.argv[3:]
    opener = (lambda p: gzip.open(p, "wb", compresslevel=6)) if compress else (lambda p: open(p, "wb"))
    with opener(out) as f:
        ino = 1
        for rel in entries(src):
            path = os.path.join(src, rel)
            st = os.lstat(path)
            name = rel.encode()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as g:
                    data = g.read()
            elif stat.S_ISDIR(st.st_mode):
                data = b""
            else:
                continue  # device nodes etc. come from devtmpfs at run time
            nlink = 2 if stat.S_ISDIR(st.st_mode) else 1
            f.write(header(ino, st.st_mode, nlink, len(data), name))
            f.write(data)
            f.write(b"\0" * ((-len(data)) % 4))
            ino += 1
        f.write(header(0, 0, 1, 0, b"TRAILER!!!"))


if __name__ == "__main__":
    main()
