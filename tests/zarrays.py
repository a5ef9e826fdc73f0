"""A model of a ZBigArray, as wendelin.core's semantics make it: the bytes of
a file that only grows, and over them the ndarray of the current shape, dtype
and order at offset 0. resize() changes the shape only, so bytes past a
shrunk array come back when it grows again.
"""

import numpy


class Model:
    def __init__(self, shape, dtype, order):
        self.file = bytearray()
        self.shape, self.dtype, self.order = tuple(shape), numpy.dtype(dtype), order

    def array(self):
        """A copy of the array as it reads now."""
        return self._over_file().copy()

    def __setitem__(self, idx, values):
        self._over_file()[idx] = values

    def resize(self, shape):
        self.shape = tuple(shape)

    def append(self, values):
        """Grow the first axis in C order, the last in F, by values, and put them there."""
        values = numpy.asarray(values)
        m = 0 if self.order == 'C' else len(self.shape) - 1
        n = self.shape[m]
        self.resize(self.shape[:m] + (n + values.shape[m],) + self.shape[m + 1:])
        self[(slice(None),) * m + (slice(n, None),)] = values

    def _over_file(self):
        nbytes = int(numpy.prod(self.shape)) * self.dtype.itemsize
        if len(self.file) < nbytes:
            self.file.extend(bytes(nbytes - len(self.file)))
        return numpy.ndarray(self.shape, self.dtype, buffer=self.file, order=self.order)


def assert_reads(a, model):
    """a (anything numpy.asarray takes) reads as model's array: shape, dtype and elements."""
    got = numpy.asarray(a)
    want = model.array()
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    numpy.testing.assert_array_equal(got, want)
