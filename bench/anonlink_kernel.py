#!/usr/bin/env python3
"""Times anonlink's dice_coefficient_accelerated (k=None) on the kernel benchmark's data.

Usage: anonlink_kernel.py DIR [THRESHOLD]
DIR holds a.bin and b.bin (raw 128-byte records) written by
`kernel_bench --write-data DIR`. Prints pairs/s (anonlink's kernel is single-threaded C++) and
the number of kept pairs, which must equal the Rust kernel's count on the same data.
"""
import sys
import time

from bitarray import bitarray
from anonlink.similarities import dice_coefficient_accelerated

SIZE = 128


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    records = []
    for i in range(len(data) // SIZE):
        ba = bitarray()
        ba.frombytes(data[i * SIZE:(i + 1) * SIZE])
        records.append(ba)
    return records


def main():
    directory = sys.argv[1]
    threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 0.8
    a = load(f"{directory}/a.bin")
    b = load(f"{directory}/b.bin")
    start = time.perf_counter()
    sims, (ia, ib) = dice_coefficient_accelerated((a, b), threshold, k=None)
    elapsed = time.perf_counter() - start
    pairs = len(a) * len(b)
    print(f"anonlink dice_coefficient_accelerated  1 thread  {pairs / elapsed / 1e6:8.1f} M pairs/s per core"
          f"  ({len(sims)} kept, {len(a)} x {len(b)})")


if __name__ == "__main__":
    main()
