"""Write ZBigFiles into ZODB in the exact format of wendelin.core, for tests and the demo.

Contract (the format itself is in shared/ZBIGFILE.md):

- Objects are pickled under wendelin.core's names,
  ``wendelin.bigfile.file_zodb.{ZBigFile,ZBlk0,ZBlk1,ZData}`` (and ``ZBlk``, the
  old alias of ZBlk0, for raw objects). To that end importing this module puts
  a stand-in module of that name in ``sys.modules`` that holds the classes
  below; it refuses to import where a real ``wendelin`` is importable, rather
  than shadow it. ZODB in this process therefore loads such records back into
  these classes.
- Persistent states are exactly wendelin.core's: ZBigFile ``(blksize, blktab)``
  with blktab a LOBTree {blk: ZBlk0 | ZBlk1}; ZBlk0 the block's bytes with
  trailing zeros stripped; ZBlk1 an IOBTree {offset in block: ZData} holding
  only the chunks that are not all zero; ZData the chunk's bytes, stripped.
- ``ZBigFile(blksize, py2str=True)`` stores block and chunk bytes as a Python 2
  ``str`` (opcodes SHORT_BINSTRING / BINSTRING), as Python 2 ZODB wrote them.
  zodbpickle on Python 3 can only write bytes as BINBYTES and a reducer can
  only emit calls, so for an object whose whole state is a `Py2Str` ZODB
  pickles the class as usual and the state pickle is written here (see
  `_ObjectWriter`, installed into ZODB.Connection at import). Every other
  record is left byte for byte as ZODB writes it.
- ZODB on Python 3 cannot load non-ASCII Python 2 str state back
  (StateLoadError; ASCII comes back as str). So objects holding Py2Str, and a
  py2str ZBigFile, refuse to become ghosts: the writer that made them can
  always read them. The py2str setting is not part of the format: a ZBigFile
  loaded from the database writes bytes.
- Nothing is committed here: the caller stores the ZBigFile in the database
  and commits.
"""

import importlib.util
import struct
import sys
import types

import ZODB.Connection
from BTrees.IOBTree import IOBTree
from BTrees.LOBTree import LOBTree
from persistent import Persistent

MODULE = 'wendelin.bigfile.file_zodb'
KINDS = ('ZBlk0', 'ZBlk1')


class Py2Str(bytes):
    """Bytes that ZODB stores as a Python 2 str, as Python 2 ZODB (protocol 2 or 3) does."""

    def pickle(self):
        """-> a whole pickle of self: PROTO 3, SHORT_BINSTRING or BINSTRING, STOP."""
        n = len(self)
        head = b'U' + bytes([n]) if n < 256 else b'T' + struct.pack('<i', n)
        return b'\x80\x03' + head + bytes(self) + b'.'


class _ObjectWriter(ZODB.Connection.ObjectWriter):
    """ZODB's record writer, except that a Py2Str state is pickled as a Python 2 str."""

    _NONE = b'\x80\x03N.'  # what ZODB writes for a state of None

    def _dump(self, classmeta, state):
        if type(state) is not Py2Str:
            return super()._dump(classmeta, state)
        record = super()._dump(classmeta, None)
        assert record.endswith(self._NONE), record
        return record[:-len(self._NONE)] + state.pickle()


# Connection makes an ObjectWriter per commit: the one place a record's bytes can be chosen.
ZODB.Connection.ObjectWriter = _ObjectWriter


class _Bytes(Persistent):
    """A persistent object whose whole state is .data, stored as given."""

    def __init__(self, data):
        self.data = data

    def __getstate__(self):
        return self.data

    def __setstate__(self, state):
        # Python 2 str state comes back from ZODB as str when it is ASCII.
        self.data = Py2Str(state.encode('ascii')) if isinstance(state, str) else state

    def _p_deactivate(self):
        # A ghost of Python 2 str state might not load back: see the module docstring.
        if not isinstance(self.__dict__.get('data'), Py2Str):
            super()._p_deactivate()

    def copy(self):
        return type(self)(self.data)


class ZData(_Bytes):
    """One chunk of a ZBlk1 block."""

    __module__ = MODULE


class ZBlk0(_Bytes):
    """A whole block in one object."""

    __module__ = MODULE

    def blkdata(self, blksize):
        return bytes(self.data).ljust(blksize, b'\0')


class ZBlk(ZBlk0):
    """ZBlk0 pickled under its old name, as old wendelin.core databases hold it."""

    __module__ = MODULE


class ZBlk1(Persistent):
    """A block split in chunks; .chunktab is the IOBTree {offset: ZData}."""

    __module__ = MODULE

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


class ZBigFile(Persistent):
    """A file of blksize-byte blocks; blocks missing from blktab are holes."""

    __module__ = MODULE
    _v_py2str = False

    def __init__(self, blksize, py2str=False):
        _check_blksize(blksize)
        self.blksize = blksize
        self.blktab = LOBTree()
        self._v_py2str = py2str

    def __getstate__(self):
        return (self.blksize, self.blktab)

    def __setstate__(self, state):
        self.blksize, self.blktab = state

    def _p_deactivate(self):
        # A ghost would forget py2str.
        if not self.__dict__.get('_v_py2str'):
            super()._p_deactivate()

    # writing

    def write_block(self, blk, data, kind='ZBlk0', chunk=4096):
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
        return Py2Str(data) if self._v_py2str else bytes(data)

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


def _register_module():
    """Put MODULE, holding our classes, into sys.modules (and its parent packages)."""
    top = sys.modules.get('wendelin')
    if (top is None and importlib.util.find_spec('wendelin') is not None) \
            or (top is not None and not getattr(top, '_zbig_standin', False)):
        raise ImportError('a real wendelin is importable here: zbig will not shadow it')
    parent = None
    for name in ('wendelin', 'wendelin.bigfile', MODULE):
        mod = sys.modules.get(name)
        if mod is None:
            mod = types.ModuleType(name, 'Stand-in registered by wcfs_lib.zbig.')
            mod._zbig_standin = True
            sys.modules[name] = mod
        if parent is not None:
            setattr(parent, name.rpartition('.')[2], mod)
        parent = mod
    for cls in (ZBigFile, ZBlk0, ZBlk, ZBlk1, ZData):
        setattr(parent, cls.__name__, cls)


_register_module()
