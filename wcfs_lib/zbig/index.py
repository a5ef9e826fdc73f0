"""Basic numpy indexing of an array whose bytes are not in memory.

region() tells which bytes of the array's image an index covers, and the
ndarray to lay over a buffer of those bytes; numpy itself interprets the
index (slices, ints, Ellipsis, None), on an array that has no memory of its
own and is never read.
"""

from collections import namedtuple

import numpy
from numpy.lib.stride_tricks import as_strided

# lo, hi: the bytes [lo, hi) of the image the index covers (lo == hi: none);
# shape, strides, offset: the ndarray it selects, offset counted from byte 0.
Region = namedtuple('Region', 'lo hi shape strides offset')


def basic(idx):
    """-> idx as a tuple of basic indices; IndexError for advanced ones."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    for i in idx:
        if not (i is None or i is Ellipsis or isinstance(i, slice)
                or (isinstance(i, (int, numpy.integer)) and not isinstance(i, (bool, numpy.bool_)))):
            raise IndexError('index %r: only basic indexing (ints, slices, ..., None) is supported'
                             % (i,))
    return idx


def region(shape, dtype, strides, idx):
    """-> the Region of an array (shape, dtype, strides) that idx selects."""
    idx = basic(idx)
    if Ellipsis not in idx:
        idx += (Ellipsis,)      # a view even when every axis gets an int: nothing is read
    base = numpy.zeros(1, dtype)
    view = as_strided(base, shape, strides, writeable=False)[idx]
    offset = view.__array_interface__['data'][0] - base.__array_interface__['data'][0]
    if view.size == 0:
        return Region(0, 0, view.shape, view.strides, 0)
    lo = offset + sum(s * (n - 1) for n, s in zip(view.shape, view.strides) if s < 0)
    hi = offset + sum(s * (n - 1) for n, s in zip(view.shape, view.strides) if s > 0)
    return Region(lo, hi + view.itemsize, view.shape, view.strides, offset)


def is_scalar(ndim, idx):
    """Whether idx takes one element (an int on each of ndim axes), as numpy returns a scalar then."""
    idx = basic(idx)
    return len(idx) == ndim and not any(i is None or i is Ellipsis or isinstance(i, slice)
                                        for i in idx)
