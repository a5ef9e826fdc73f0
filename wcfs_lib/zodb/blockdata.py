"""A decoded block as it is kept: the bytes of its record, then implicit zeros.

A cold read copies a block's bytes as few times as it can: a ZBlk0's bytes
are served from the database record itself (no unpickled copy), its trailing
zeros are never materialised (a short block is its bytes, then implicit
zeros), and a read's reply (reply.py) copies from its address.
"""

import ctypes

class BlockData:
    """`length` bytes of `buf` from `start`, then zeros up to the block size.
    Never changed once made. buf: bytes, a bytearray, or a writable
    memoryview of bytes (a database row's own buffer, pqbinary.py)."""

    __slots__ = ('buf', 'start', 'length', '_pin')

    def __init__(self, buf, start=0, length=None):
        self.buf = buf
        self.start = start
        self.length = len(buf) - start if length is None else length
        self._pin = None        # the ctypes view of a bytearray, made once

    def __len__(self):
        return self.length

    def view(self):
        return memoryview(self.buf)[self.start:self.start + self.length]

    def address(self):
        """The address of the first byte (buf stays alive as long as self)."""
        buf = self.buf
        if isinstance(buf, bytes):
            return ctypes.cast(buf, ctypes.c_void_p).value + self.start
        if self._pin is None:
            # an exported bytearray cannot be resized, and a memoryview
            # keeps what it shows: the address holds
            self._pin = (ctypes.c_char * len(buf)).from_buffer(buf)
        return ctypes.addressof(self._pin) + self.start


HOLE = BlockData(b'')
