#!/usr/bin/env python3
"""What one append plus fdatasync costs on this disk, by size: the median and the worst of 20.

Why the write-ahead log fills its segment with zeros only 256 KiB ahead (storage/src/wal.rs,
PREALLOCATE_STEP): the sync after an extension writes the zeros too.

    python3 scripts/sync-cost.py [DIR]     # DIR defaults to the current directory
"""
import os
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "."
path = os.path.join(directory, "sync-cost.tmp")
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
try:
    for size in [4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]:
        took, pos = [], 0
        for _ in range(20):
            os.pwrite(fd, b"\0" * size, pos)
            pos += size
            start = time.perf_counter()
            os.fdatasync(fd)
            took.append((time.perf_counter() - start) * 1000)
        took.sort()
        print(f"{size // 1024:>5} KiB: median {took[len(took) // 2]:.2f} ms, worst {took[-1]:.2f} ms")
finally:
    os.close(fd)
    os.unlink(path)
