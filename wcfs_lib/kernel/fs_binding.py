"""mfusepy on libfuse3: the one place that imports it.

mfusepy picks libfuse2 when both are installed unless FUSE_LIBRARY_NAME says
otherwise, and libfuse2 has neither poll nor explicit data invalidation.
"""

import ctypes
import os

os.environ.setdefault('FUSE_LIBRARY_NAME', 'fuse3')

import mfusepy as fuse  # noqa: E402  (FUSE_LIBRARY_NAME must be set first)

libfuse = fuse._libfuse

if fuse.fuse_version_major != 3:
    raise ImportError('wcfs needs libfuse 3, mfusepy loaded libfuse %d' % fuse.fuse_version_major)


class FUSE(fuse.FUSE):
    """mfusepy's FUSE, except that a read handler may answer with an object
    that writes itself into libfuse's buffer (`copy_to(address)`, and len()),
    such as reply.Reply: the bytes of a block are then copied once on
    their way to the kernel, not sliced, joined and copied again."""

    def read(self, path, buf, size, offset, fip):
        fh = fip.contents if self.raw_fi else fip.contents.fh
        name = None if path is None else path.decode(self.encoding, self.errors)
        ret = self.operations.read(name, size, offset, fh)
        n = len(ret) if ret else 0
        if n > size:
            raise RuntimeError('read of %d bytes answered with %d' % (size, n))
        if n:
            copy_to = getattr(ret, 'copy_to', None)
            if copy_to is not None:
                copy_to(ctypes.cast(buf, ctypes.c_void_p).value)
            else:
                ctypes.memmove(buf, ret, n)
        return n


libfuse.fuse_notify_poll.argtypes = [ctypes.c_void_p]
libfuse.fuse_pollhandle_destroy.argtypes = [ctypes.c_void_p]


class PollHandles:
    """What a channel (the model, which imports nothing of the kernel side)
    needs of libfuse: waking a poll(2) and telling an interrupted read."""

    @staticmethod
    def notify(ph):
        """Wake the poll that left `ph`, and give the handle back."""
        libfuse.fuse_notify_poll(ph)
        libfuse.fuse_pollhandle_destroy(ph)

    @staticmethod
    def release(ph):
        libfuse.fuse_pollhandle_destroy(ph)

    @staticmethod
    def interrupted():
        """Whether the request this thread serves was interrupted (a signal)."""
        return bool(libfuse.fuse_interrupted())
