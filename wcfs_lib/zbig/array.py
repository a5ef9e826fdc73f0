"""ZBigArray: an ndarray of any shape, dtype and order ('C' or 'F') whose
bytes are the header-less image of the array at offset 0 of a ZBigFile.

Its persistent state is wendelin.core's, exactly:
({'_dtype': numpy.dtype, '_shape': tuple of ints, '_order': 'C' | 'F',
'_stridev': tuple of ints, the strides in bytes}, {'zfile': ZBigFile}),
the second dict being the one slot, zfile.

As in wendelin.core, resize() changes the shape only: the file keeps its
blocks, so bytes past a shrunk array come back when it grows again; and an
assignment rewrites every block it covers, first byte to last, in the ZBlk
kind of the array (`kind`). Reading copies out of the blocks: a[...] and
numpy.asarray(a) are the whole array in memory.
"""

import math
import operator
import weakref

import numpy
from persistent import Persistent

from .blocks import KINDS
from .file import ZBigFile
from .index import is_scalar, region

ARRAY_MODULE = 'wendelin.bigarray.array_zodb'
BLKSIZE = 2 << 20
ORDERS = ('C', 'F')

# array -> the ZBlk kind it writes: volatile, but kept when the array
# becomes a ghost or is invalidated, which would clear a _v_ attribute.
_kinds = weakref.WeakKeyDictionary()


class ZBigArray(Persistent):
    """A persistent numpy array stored in a ZBigFile (.zfile)."""

    __module__ = ARRAY_MODULE
    # zfile is a slot and the rest a __dict__, as wendelin.core's ZBigArray
    # has them: the slot is the second dict of the state.
    __slots__ = ('zfile', '__dict__', '__weakref__')

    def __init__(self, shape, dtype, order='C', blksize=BLKSIZE, kind='ZBlk0'):
        self._layout(shape, dtype, order)
        self.zfile = ZBigFile(blksize)
        self.kind = kind

    def __setstate__(self, state):
        super().__setstate__(state)
        # wendelin.core's first ZBigArrays stored no order: theirs is C.
        self.__dict__.setdefault('_order', 'C')

    def _layout(self, shape, dtype, order):
        shape = _shape(shape)
        dtype = numpy.dtype(dtype)
        if dtype.hasobject:
            raise TypeError('dtype %s holds Python objects: they cannot live in a file' % dtype)
        if order not in ORDERS:
            raise ValueError('order %r is not one of %s' % (order, ', '.join(ORDERS)))
        axes = range(len(shape))
        items = [math.prod(shape[i + 1:] if order == 'C' else shape[:i]) for i in axes]
        self._dtype = dtype
        self._shape = shape
        self._order = order
        self._stridev = tuple(n * dtype.itemsize for n in items)

    # ndarray-like

    @property
    def dtype(self):
        return self._dtype

    @property
    def shape(self):
        return tuple(self._shape)

    @property
    def order(self):
        return self._order

    @property
    def strides(self):
        return tuple(self._stridev)

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def size(self):
        return math.prod(self._shape)

    @property
    def itemsize(self):
        return self._dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.itemsize

    def __len__(self):
        return self.shape[self._major_axis]

    @property
    def _major_axis(self):
        """The axis whose growth appends bytes at the end: the first in C order, the last in F.

        wendelin.core takes the axis of the largest stride: the same, except
        where a dimension is 0 or 1 and strides tie, when its append() can
        pick an axis whose growth moves the elements.
        """
        if not self._shape:
            raise ValueError('a 0-d array has no axis to grow')
        return 0 if self._order == 'C' else len(self._shape) - 1

    # the ZBlk kind of writes

    @property
    def kind(self):
        """'ZBlk0' or 'ZBlk1': the block kind assignments write (default ZBlk0,
        as wendelin.core's). Kept in this process only."""
        return _kinds.get(self, 'ZBlk0')

    @kind.setter
    def kind(self, kind):
        if kind not in KINDS:
            raise ValueError('block kind %r is not one of %s' % (kind, ', '.join(KINDS)))
        _kinds[self] = kind

    # reading and writing

    def __getitem__(self, idx):
        r = region(self.shape, self.dtype, self.strides, idx)
        view, _ = self._over_blocks(r)
        out = view.copy()
        return out[()] if is_scalar(self.ndim, idx) else out

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError('a ZBigArray is not in memory: it is an ndarray only as a copy')
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __setitem__(self, idx, values):
        r = region(self.shape, self.dtype, self.strides, idx)
        view, blocks = self._over_blocks(r)
        view[...] = values
        for blk, data in blocks:
            self.zfile.write_block(blk, data, self.kind)

    def _over_blocks(self, r):
        """-> (the ndarray of region r over a copy of the blocks it covers,
        [(blk, memoryview of that block in the copy)])."""
        bs = self.zfile.blksize
        first, end = r.lo // bs, -(-r.hi // bs)
        buf = bytearray(b''.join(self.zfile.read_block(blk) for blk in range(first, end)))
        view = numpy.ndarray(r.shape, self.dtype, buffer=buf, offset=r.offset - first * bs,
                             strides=r.strides)
        mem = memoryview(buf)
        return view, [(blk, mem[(blk - first) * bs:(blk - first + 1) * bs])
                      for blk in range(first, end)]

    def resize(self, new_shape, refcheck=True):
        """Change the shape in place; the bytes in zfile stay as they are.

        refcheck is numpy's argument, meaningless here: no memory moves.
        """
        self._layout(new_shape, self._dtype, self._order)

    def append(self, values):
        """Grow the major axis (first in C order, last in F order) by values'
        length along it, and put values there; on an error the shape is restored."""
        values = numpy.asarray(values)
        shape, m = self.shape, self._major_axis
        if values.ndim != len(shape) or values.shape[:m] + values.shape[m + 1:] != shape[:m] + shape[m + 1:]:
            raise ValueError('append: values of shape %s do not extend an array of shape %s '
                             'along axis %d' % (values.shape, shape, m))
        n = shape[m]
        grown = shape[:m] + (n + values.shape[m],) + shape[m + 1:]
        self.resize(grown)
        tail = tuple(slice(n, None) if i == m else slice(None) for i in range(len(shape)))
        try:
            self[tail] = values
        except BaseException:
            self.resize(shape)
            raise


def _shape(shape):
    """-> shape as a tuple of non-negative Python ints, as numpy takes it."""
    try:
        shape = (operator.index(shape),)
    except TypeError:
        shape = tuple(operator.index(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError('shape %s: negative dimensions are not allowed' % (shape,))
    return shape
