"""ZBigFile: a file of blksize-byte blocks in a LOBTree {blk: ZBlk0 | ZBlk1}.

Its persistent state is wendelin.core's, the tuple (blksize, blktab). A block
number missing from blktab is a hole: it reads as zeros.
"""

from BTrees.LOBTree import LOBTree
from persistent import Persistent

from .blocks import CHUNK, FILE_MODULE, KINDS, ZBlk0, ZBlk1


class ZBigFile(Persistent):
    """A file of blksize-byte blocks; blocks missing from blktab are holes."""

    __module__ = FILE_MODULE
    # The type block and chunk bytes are stored as: see store_bytes_as().
    _v_bytes = bytes

    def __init__(self, blksize):
        _check_blksize(blksize)
        self.blksize = blksize
        self.blktab = LOBTree()

    def __getstate__(self):
        return (self.blksize, self.blktab)

    def __setstate__(self, state):
        self.blksize, self.blktab = state

    def _p_deactivate(self):
        # A ghost would forget store_bytes_as().
        if '_v_bytes' not in self.__dict__:
            super()._p_deactivate()

    def store_bytes_as(self, cls):
        """Store the bytes this file writes from now on as cls(data), a bytes subclass.

        For writers of test data that pickle such a class their own way
        (devtools.py2str: Python 2 str). Not part of the format: the setting
        lives in this object only, which therefore never becomes a ghost.
        """
        if not issubclass(cls, bytes):
            raise TypeError('store_bytes_as(%r): not a subclass of bytes' % (cls,))
        self._v_bytes = cls

    # writing

    def write_block(self, blk, data, kind='ZBlk0', chunk=CHUNK):
        """Set block blk to data (at most blksize bytes, zero padded), as a kind block.

        Like wendelin.core, a block that keeps its kind keeps its object: an
        existing ZBlk0 gets new state, an existing ZBlk1 is changed chunk by
        chunk (see ZBlk1.set_chunks); otherwise blk gets a new block object.
        """
        data = bytes(data)
        if blk < 0:
            raise ValueError('block %d: negative block number' % blk)
        if len(data) > self.blksize:
            raise ValueError('block %d: %d bytes is more than blksize %d'
                             % (blk, len(data), self.blksize))
        if kind not in KINDS:
            raise ValueError('block kind %r is not one of %s' % (kind, ', '.join(KINDS)))
        if chunk <= 0:
            raise ValueError('chunk size %d is not positive' % chunk)
        zblk = self.blktab.get(blk)
        if kind == 'ZBlk0':
            state = self._bytes(data.rstrip(b'\0'))
            if type(zblk) is ZBlk0:
                zblk.data = state
            else:
                self.blktab[blk] = ZBlk0(state)
            return
        if type(zblk) is not ZBlk1:
            zblk = self.blktab[blk] = ZBlk1()
        zblk.set_chunks(self._chunks(data, chunk))

    def write(self, offset, data, kind='ZBlk0'):
        """Write data at byte offset: read-modify-write of every block it touches."""
        if offset < 0:
            raise ValueError('offset %d is negative' % offset)
        bs = self.blksize
        end = offset + len(data)
        for blk in range(offset // bs, -(-end // bs)):
            start = blk * bs
            lo, hi = max(offset, start), min(end, start + bs)
            buf = bytearray(self.read_block(blk))
            buf[lo - start:hi - start] = data[lo - offset:hi - offset]
            self.write_block(blk, buf, kind)

    def delete_block(self, blk):
        """Make blk a hole."""
        self.blktab.pop(blk, None)

    def truncate(self, size):
        """Drop the blocks at or past size (a multiple of blksize); never grows the file.

        The size that results is that of what remains: trailing holes do not count.
        """
        if size < 0 or size % self.blksize:
            raise ValueError('size %d is not a multiple of blksize %d' % (size, self.blksize))
        for blk in list(self.blktab.keys(size // self.blksize)):
            del self.blktab[blk]

    def set_blksize(self, blksize, kind='ZBlk0'):
        """Change blksize: the same content laid into a new blktab of kind blocks.

        The content is zero padded to whole new blocks; all-zero blocks become
        holes, except the last one, which carries the size.
        """
        _check_blksize(blksize)
        data = self.read()
        self.blksize = blksize
        self.blktab = LOBTree()
        nblk = -(-len(data) // blksize)
        for blk in range(nblk):
            piece = data[blk * blksize:(blk + 1) * blksize]
            if piece.rstrip(b'\0') or blk == nblk - 1:
                self.write_block(blk, piece, kind)

    def replace_blktab(self):
        """Same content, in a new blktab of new block objects (each of its old kind)."""
        blktab = LOBTree()
        for blk, zblk in self.blktab.items():
            blktab[blk] = zblk.copy()
        self.blktab = blktab

    # reading, from the writer's own objects

    def read_block(self, blk):
        zblk = self.blktab.get(blk)
        if zblk is None:
            return bytes(self.blksize)
        return zblk.blkdata(self.blksize)

    def size(self):
        return (self.blktab.maxKey() + 1) * self.blksize if self.blktab else 0

    def read(self):
        return b''.join(self.read_block(blk) for blk in range(self.size() // self.blksize))

    # helpers

    def _bytes(self, data):
        return self._v_bytes(data)

    def _chunks(self, data, chunk):
        """-> {offset: chunk bytes, trailing zeros stripped} of the chunks that are not all zero."""
        chunks = {}
        for off in range(0, len(data), chunk):
            piece = data[off:off + chunk].rstrip(b'\0')
            if piece:
                chunks[off] = self._bytes(piece)
        return chunks


def _check_blksize(blksize):
    if blksize <= 0:
        raise ValueError('blksize %d is not positive' % blksize)
