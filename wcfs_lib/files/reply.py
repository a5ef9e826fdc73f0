"""A read's reply, made of pieces of decoded blocks (blockdata.py), copied
once, straight into libfuse's buffer (fs_binding.FUSE), rather than sliced
and joined into bytes that mfusepy would copy again. ctypes.memmove and
memset run without the GIL, so the copy overlaps the loads of other threads.
"""

import ctypes

_memmove = ctypes.memmove
_memset = ctypes.memset


class Reply:
    """The bytes of one read: pieces [lo, hi) of blocks, in order."""

    __slots__ = ('parts', 'size')

    def __init__(self):
        self.parts = []
        self.size = 0

    def add(self, block, lo, hi):
        self.parts.append((block, lo, hi))
        self.size += hi - lo

    def __len__(self):
        return self.size

    def copy_to(self, addr):
        """Write the reply at the C address `addr` (room for len(self) bytes)."""
        pos = addr
        for block, lo, hi in self.parts:
            n = max(0, min(hi, block.length) - lo)
            if n:
                _memmove(pos, block.address() + lo, n)
            if hi - lo > n:
                _memset(pos + n, 0, hi - lo - n)
            pos += hi - lo
