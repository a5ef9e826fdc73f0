"""Telling the kernel which parts of its caches went stale.

The kernel keeps pages of `head/data` in its page cache for every process of
the machine; wcfs only tells it which byte ranges changed
(FUSE_NOTIFY_INVAL_INODE) and which directory entries disappeared
(FUSE_NOTIFY_INVAL_ENTRY), through libfuse's low-level notify calls.

Rules (DESIGN "FUSE binding and kernel page cache control"):

- Call these only from a thread that is not serving a FUSE request and that
  holds no lock a request handler takes: a notification for a page that a
  read is serving waits for that read, and the stat done here is itself a
  request to this filesystem.
- The inode number to notify is the kernel's nodeid, which libfuse reports as
  `st_ino`; it changes when the kernel forgets an inode, so look it up again
  before every notification.
"""

import ctypes
import errno
import logging
import os

log = logging.getLogger('wcfs.kcache')

FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_EXPLICIT_INVAL_DATA = 1 << 25


class KernelCache:
    """Notifications to the kernel about one mount."""

    def __init__(self, libfuse, mountpoint):
        self.mountpoint = mountpoint
        self._lib = libfuse
        self._session = None
        libfuse.fuse_get_session.restype = ctypes.c_void_p
        libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
        libfuse.fuse_lowlevel_notify_inval_inode.argtypes = [
            ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64]
        libfuse.fuse_lowlevel_notify_inval_entry.argtypes = [
            ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]

    def bind(self):
        """Find the session; call from the FUSE init handler."""
        fuse = self._lib.fuse_get_context().contents.fuse
        self._session = self._lib.fuse_get_session(fuse)

    def _ino(self, relpath):
        try:
            return os.stat(os.path.join(self.mountpoint, relpath)).st_ino
        except FileNotFoundError:
            return None

    def invalidate_data(self, relpath, ranges):
        """Drop byte ranges [(start, stop), ...] of a file from the page cache.

        Its attributes (size, mtime) are dropped with them.
        """
        ino = self._ino(relpath)
        if ino is None or self._session is None:
            return
        for start, stop in ranges:
            self._check(self._lib.fuse_lowlevel_notify_inval_inode(
                self._session, ino, start, stop - start), relpath)

    def invalidate_attr(self, relpath):
        """Drop only the cached attributes of a file (size, mtime)."""
        ino = self._ino(relpath)
        if ino is not None and self._session is not None:
            self._check(self._lib.fuse_lowlevel_notify_inval_inode(
                self._session, ino, -1, 0), relpath)

    def forget_entry(self, parent_relpath, name):
        """Drop the kernel's directory entry `name` of a directory."""
        ino = self._ino(parent_relpath)
        if ino is None or self._session is None:
            return
        bname = name.encode()
        self._check(self._lib.fuse_lowlevel_notify_inval_entry(
            self._session, ino, bname, len(bname)), parent_relpath + '/' + name)

    @staticmethod
    def _check(rc, what):
        # ENOENT: the kernel holds nothing of that inode, nothing to drop.
        if rc < 0 and -rc != errno.ENOENT:
            log.warning('kernel cache notification for %s failed: %s', what, os.strerror(-rc))
