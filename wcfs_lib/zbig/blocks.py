"""The block objects of a ZBigFile: ZBlk0, its old name ZBlk, ZBlk1 and its ZData chunks.

Their persistent states are wendelin.core's (shared/ZBIGFILE.md): ZBlk0 and
ZData hold bytes with trailing zeros stripped, ZBlk1 holds the IOBTree
{offset in block: ZData} of the chunks that are not all zero.
"""

from BTrees.IOBTree import IOBTree
from persistent import Persistent

FILE_MODULE = 'wendelin.bigfile.file_zodb'
KINDS = ('ZBlk0', 'ZBlk1')
CHUNK = 4096        # the size wendelin.core writes ZBlk1 chunks in


class _Bytes(Persistent):
    """A persistent object whose whole state is .data, stored as given."""

    def __init__(self, data):
        self.data = data

    def __getstate__(self):
        return self.data

    def __setstate__(self, state):
        # ZODB on Python 3 loads a Python 2 str state as str when it is ASCII.
        self.data = state.encode('ascii') if isinstance(state, str) else state

    def _p_deactivate(self):
        # data of a bytes subclass was stored the way its writer chose
        # (devtools.py2str) and might not load back the same: keep it.
        if type(self.__dict__.get('data', b'')) is bytes:
            super()._p_deactivate()

    def copy(self):
        return type(self)(self.data)


class ZData(_Bytes):
    """One chunk of a ZBlk1 block."""

    __module__ = FILE_MODULE


class ZBlk0(_Bytes):
    """A whole block in one object."""

    __module__ = FILE_MODULE

    def blkdata(self, blksize):
        return bytes(self.data).ljust(blksize, b'\0')


class ZBlk(ZBlk0):
    """ZBlk0 pickled under its old name, as old wendelin.core databases hold it."""

    __module__ = FILE_MODULE


class ZBlk1(Persistent):
    """A block split in chunks; .chunktab is the IOBTree {offset: ZData}."""

    __module__ = FILE_MODULE

    def __init__(self):
        self.chunktab = IOBTree()

    def __getstate__(self):
        return self.chunktab

    def __setstate__(self, state):
        self.chunktab = state

    def blkdata(self, blksize):
        buf = bytearray(blksize)
        for off, zdata in self.chunktab.items():
            buf[off:off + len(zdata.data)] = zdata.data
        return bytes(buf)

    def set_chunks(self, chunks):
        """Make chunktab hold exactly chunks {offset: data}, changing only what differs.

        Like wendelin.core: a changed chunk's ZData gets new state, a chunk gone
        all zero is deleted, and the ZBlk1 itself is marked changed if any chunk was.
        """
        changed = False
        for off in [off for off in self.chunktab.keys() if off not in chunks]:
            del self.chunktab[off]
            changed = True
        for off, data in chunks.items():
            zdata = self.chunktab.get(off)
            if zdata is None:
                self.chunktab[off] = ZData(data)
            elif zdata.data != data:
                zdata.data = data
            else:
                continue
            changed = True
        if changed:
            self._p_changed = True

    def copy(self):
        zblk = ZBlk1()
        for off, zdata in self.chunktab.items():
            zblk.chunktab[off] = zdata.copy()
        return zblk


CLASSES = (ZBlk0, ZBlk, ZBlk1, ZData)
