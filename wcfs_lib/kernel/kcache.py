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
- Nothing here raises: an OSError or a ctypes failure is logged, once per
  path and reason, and that notification is skipped; whoever called goes on
  with every other file (SPEC §3).

The size of a file whose data changed. A page fault past the size the
kernel holds for a file is SIGBUS, and a fault never asks wcfs for the size:
when head/at shows a tid at which head/data grew, the kernel must hold the
new size already, or a client mapping the grown blocks dies. The kernel takes
the size from every answer to a lookup or getattr, but refuses an answer to
a request sent before the last answer it took (its attr_version; a
notification counts too). So the lookup that finds the nodeid to notify may
be refused: an answer made from the old head (a getattr handled just before
the head moved, its reply or its caller late) that the kernel takes while
that lookup is in flight wins, and the kernel keeps the old size. Once the
notification is done, no answer to a request sent before it is taken: the
file is looked up again after it, and that answer, made from the new head,
is the one the kernel keeps.

How a nodeid is found, without trusting what a path inside the mount leads
to (DESIGN "Moving a head", step 4). Root can mount anything over any
directory or file of the mount (other users cannot: SPEC §3), and a path
through that mount leads to another filesystem (a wrong inode number), to a
server that refuses us (EACCES) or that is gone (ENOTCONN), or nowhere:

1. The path is looked up in a private copy of this one mount
   (open_tree(2) with OPEN_TREE_CLONE, not recursive, made for each lookup
   and closed after it): nothing mounted over its directories is in that
   copy, so the lookup always reaches wcfs's own node for that name, the one
   whose pages the kernel holds, also while it is overmounted. The copy
   holds no reference to the mount point, so it never makes an unmount
   busy. Making it needs CAP_SYS_ADMIN; without it (wcfs run by a user
   through fusermount3) the path is looked up through the mount point.
2. The answer counts only if its st_dev is this mount's, taken from
   /proc/self/mountinfo when the kernel first talks to wcfs (FUSE init).
3. When no answer counts, the nodeid of the last lookup of that path that
   counted is notified. That is safe: a nodeid names one inode of this mount
   for as long as the kernel holds it (libfuse hands out a nodeid again only
   after 2^32 others), and a notification for a nodeid the kernel forgot
   answers ENOENT, for an inode that had nothing cached. It also reaches the
   pages that matter in the usual case: a mount pins the inode it covers,
   and a process that has the file open pins its inode too. What it can
   miss (only without step 1) is a file the kernel forgot and looked up
   again under a new nodeid since the last lookup that counted.

Choices not taken: keeping a descriptor of each file open in wcfs (a stable
nodeid without any lookup) makes every unmount of the mount fail with EBUSY;
libfuse's high-level API never tells a handler the nodeid of its request,
so the kernel's own lookups cannot be reused.
"""

import ctypes
import ctypes.util
import errno
import logging
import os

from .. import locks, procfs

log = logging.getLogger('wcfs.kcache')

FUSE_CAP_AUTO_INVAL_DATA = 1 << 12
FUSE_CAP_EXPLICIT_INVAL_DATA = 1 << 25

SYS_open_tree = 428         # Linux 5.2; the same number on every architecture but alpha
OPEN_TREE_CLONE = 1
AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.syscall.restype = ctypes.c_long


class KernelCache:
    """Notifications to the kernel about one mount."""

    def __init__(self, libfuse, mountpoint):
        self.mountpoint = mountpoint
        self._lib = libfuse
        self._session = None
        self._dev = None            # (major, minor) of the mount, from FUSE init
        self._private = True        # may a private copy of the mount be made?
        self._lock = locks.lock('KernelCache._lock')   # guards _known and _problems
        self._known = {}            # relpath -> nodeid of its last lookup that counted
        self._problems = {}         # (what failed, relpath) -> the problem logged last
        libfuse.fuse_get_session.restype = ctypes.c_void_p
        libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
        libfuse.fuse_lowlevel_notify_inval_inode.argtypes = [
            ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64]
        libfuse.fuse_lowlevel_notify_inval_entry.argtypes = [
            ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]

    def bind(self):
        """Find the session and the mount's device; call from the FUSE init
        handler (mount(2) is done by then; /proc is no request to us)."""
        fuse = self._lib.fuse_get_context().contents.fuse
        self._session = self._lib.fuse_get_session(fuse)
        try:
            ours = [m for m in procfs.mounts() if m.mountpoint == self.mountpoint]
        except OSError as e:
            ours = []
            log.error('/proc/self/mountinfo: %s', e)
        if not ours:
            log.error('%s: not in /proc/self/mountinfo: no kernel cache notification '
                      'can be trusted; cached data may go stale', self.mountpoint)
            return
        self._dev = ours[-1].dev    # the last mount there is the one just made

    def invalidate_data(self, relpath, ranges):
        """Drop byte ranges [(start, stop), ...] of a file from the page cache.

        Its attributes (size, mtime) are dropped with them, and the kernel
        then holds the size that getattr answers now (see the module's
        docstring: the size of a file whose data changed).
        """
        if self._session is None or not ranges:
            return
        ino = self._ino(relpath)
        if ino is None:
            return
        for start, stop in ranges:
            self._notify(relpath, self._lib.fuse_lowlevel_notify_inval_inode,
                         ino, start, stop - start)
        self._ino(relpath)      # the new size, in an answer the kernel takes

    def forget_entry(self, parent_relpath, name):
        """Drop the kernel's directory entry `name` of a directory."""
        if self._session is None:
            return
        ino = self._ino(parent_relpath)
        if ino is not None:
            bname = name.encode()
            self._notify(parent_relpath + '/' + name, self._lib.fuse_lowlevel_notify_inval_entry,
                         ino, bname, len(bname))

    # ---- finding the nodeid (see the module's docstring) ----

    def _ino(self, relpath):
        """The nodeid to notify for relpath, or None when there is none."""
        try:
            st = self._lookup(relpath)
        except OSError as e:
            problem = 'cannot look it up: %s' % (e.strerror or e)
        else:
            dev = (os.major(st.st_dev), os.minor(st.st_dev))
            if dev == self._dev:
                with self._lock:
                    self._known[relpath] = st.st_ino
                    self._problems.pop(('lookup', relpath), None)
                return st.st_ino
            problem = 'it leads to device %d:%d, not to this mount' % dev
        with self._lock:
            ino = self._known.get(relpath)
        self._report('lookup', relpath, '%s; %s' % (
            problem, 'nothing to notify' if ino is None else
            'notifying inode %d of its last lookup' % ino))
        return ino

    def _lookup(self, relpath):
        """os.stat of relpath, in a private copy of the mount where wcfs may make one."""
        tree = self._private_tree()
        if tree is None:
            return os.stat(os.path.join(self.mountpoint, relpath), follow_symlinks=False)
        try:
            return os.stat(relpath, dir_fd=tree, follow_symlinks=False)
        finally:
            os.close(tree)

    def _private_tree(self):
        """A descriptor of a detached copy of this mount alone, or None."""
        if not self._private:
            return None
        fd = _libc.syscall(SYS_open_tree, AT_FDCWD, os.fsencode(self.mountpoint),
                           OPEN_TREE_CLONE | os.O_CLOEXEC)
        if fd >= 0:
            return fd
        e = ctypes.get_errno()
        self._private = False
        log.info('%s: no private copy of the mount (open_tree: %s): paths are looked up '
                 'through the mount point', self.mountpoint, os.strerror(e))
        return None

    # ---- notifying ----

    def _notify(self, relpath, call, *args):
        """call(session, *args), one of libfuse's notify calls, about relpath.
        ENOENT is no failure: the kernel holds nothing of that inode."""
        try:
            rc = call(self._session, *args)
            problem = None if rc >= 0 or -rc == errno.ENOENT else os.strerror(-rc)
        except (ctypes.ArgumentError, OSError) as e:
            problem = str(e)
        if problem is None:
            with self._lock:
                self._problems.pop(('notify', relpath), None)
        else:
            self._report('notify', relpath, '%s%r failed: %s' % (call.__name__, args, problem))

    def _report(self, what, relpath, problem):
        """Log a problem with relpath, once until it goes away or changes."""
        with self._lock:
            if self._problems.get((what, relpath)) == problem:
                return
            self._problems[(what, relpath)] = problem
        log.warning('kernel cache of %s/%s: %s', self.mountpoint, relpath, problem)
