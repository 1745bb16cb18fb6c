#!/usr/bin/env python3
"""Extract the uncompressed ELF kernel (vmlinux) from an x86 bzImage.

usage: vmlinux.py BZIMAGE OUT

Follows the x86 boot protocol (Documentation/x86/boot.rst): setup_sects at 0x1f1,
payload_offset/payload_length at 0x248/0x24c (protocol >= 2.08), the payload
offset counted from the protected-mode code at (setup_sects + 1) * 512.
Handles the xz, gzip and zstd payloads Debian kernels use.
"""
import gzip
import lzma
import struct
import subprocess
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    img = open(src, "rb").read()
    if img[0x202:0x206] != b"HdrS":
        sys.exit("vmlinux.py: %s is not a bzImage" % src)
    setup_sects = img[0x1f1] or 4
    pm_start = (setup_sects + 1) * 512
    off, length = struct.unpack_from("<II", img, 0x248)
    payload = img[pm_start + off: pm_start + off + length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        data = gzip.GzipFile(fileobj=__import__("io").BytesIO(payload)).read()
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        data = subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=True).stdout
    else:
        sys.exit("vmlinux.py: unknown payload compression %r" % payload[:6])
    if not data.startswith(b"\x7fELF"):
        sys.exit("vmlinux.py: payload is not an ELF file")
    open(out, "wb").write(data)
    print("vmlinux: %d bytes" % len(data))


if __name__ == "__main__":
    main()
