#!/usr/bin/env python3
"""Checks that a disk image holds Ferrite's self-test pattern.

The pattern is the one in images/ferrite-selftest/src/disktest.rs: the little-endian 32-bit
word at byte offset o is ((o/4) * 2654435761 mod 2^32) xor 0x5EED5EED.
    check_pattern.py IMAGE BYTES
"""
import sys

import array


def main(path, nbytes):
    with open(path, "rb") as f:
        data = f.read(nbytes)
    if len(data) < nbytes:
        print(f"{path}: only {len(data)} bytes, expected at least {nbytes}")
        return 1
    words = array.array("I")
    words.frombytes(data)
    if sys.byteorder != "little":
        words.byteswap()
    for i, w in enumerate(words):
        want = ((i * 2654435761) & 0xFFFFFFFF) ^ 0x5EED5EED
        if w != want:
            print(f"{path}: byte {4 * i}: {w:#010x}, expected {want:#010x}")
            return 1
    print(f"{path}: first {nbytes} bytes hold the pattern")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
