"""The mount point: checks before mounting, stale mounts, unmounting."""

import ctypes
import ctypes.util
import errno
import logging
import os
import subprocess

from .. import procfs

log = logging.getLogger('wcfs.mount')

MNT_DETACH = 2
FUSECTL = '/sys/fs/fuse/connections'
# The kernel's queue of background requests (every page-cache read of a FUSE
# file is one): by default 12 in flight for all users, so the reads of one
# user whose loads wait held everyone's behind them in the kernel's FIFO.
# Let them through to wcfs, where loads take turns per uid (blockcache.py).
# Each takes a FUSE thread, beside the channels' blocked reads: server.py's
# MAX_THREADS (2400) less MAX_CHANNELS (2200), less a few.
MAX_BACKGROUND = 192
CONGESTION_THRESHOLD = MAX_BACKGROUND * 3 // 4     # the kernel's own ratio

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)


class MountError(Exception):
    """The mount point cannot be used; a one-line reason."""


def is_mounted(path):
    """Is `path` itself a mount point (per /proc/self/mountinfo)?"""
    return mount_at(path) is not None


def mount_at(path):
    """The topmost mount at `path` (a MountEntry), or None when it is not a mount point."""
    path = os.path.realpath(path)
    found = [m for m in procfs.mounts() if m.mountpoint == path]
    return found[-1] if found else None


def is_wcfs_mount(entry):
    """Is this mount a wcfs? (Our mounts show fstype fuse.wcfs, source wcfs;
    `-o fsname=` may change the source, not the type.)"""
    return entry.fstype == 'fuse.wcfs' or (entry.fstype.startswith('fuse')
                                           and entry.source == 'wcfs')


def check_mountpoint(path):
    """Refuse a missing or busy mount point; clean a stale wcfs mount."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise MountError('mount point %s: %s' % (path, e.strerror)) from None
        _clean_stale_mount(path, e.strerror)
    if not os.path.isdir(path):
        raise MountError('mount point %s: not a directory' % path)
    if is_mounted(path):
        raise MountError('mount point %s: already mounted' % path)


def _clean_stale_mount(path, why):
    """Detach the mount at `path` whose server is gone, if it is a wcfs; a
    dead mount of another filesystem is not ours to touch."""
    entry = mount_at(path)
    if entry is None:
        raise MountError('mount point %s: %s (it lies inside a dead mount)' % (path, why))
    if not is_wcfs_mount(entry):
        raise MountError('mount point %s: a dead %s mount (source %s), not a wcfs: left alone (%s)'
                         % (path, entry.fstype, entry.source, why))
    log.warning('mount point %s: cleaning up a stale wcfs mount (%s)', path, why)
    err = _umount(path, MNT_DETACH)
    if err:
        raise MountError('mount point %s: cannot detach the stale wcfs mount: %s'
                         % (path, os.strerror(err)))
    try:
        os.stat(path)
    except OSError as e:
        raise MountError('mount point %s: %s after detaching the stale wcfs mount'
                         % (path, e.strerror)) from None


def _umount(path, flags):
    if _libc.umount2(path.encode(), flags) == 0:
        return 0
    err = ctypes.get_errno()
    if err == errno.EPERM:          # not root: fusermount3 can do it for our own mounts
        opt = ['-z'] if flags & MNT_DETACH else []
        r = subprocess.run(['fusermount3', '-u', *opt, path], capture_output=True)
        return 0 if r.returncode == 0 else errno.EPERM
    return err


def unmount(path):
    """Unmount our mount at `path`, also while clients still have files open
    there (they then get ENOTCONN), so that the FUSE loop ends."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        dev = None
    err = _umount(path, 0)
    if err in (0, errno.EINVAL, errno.ENOENT):
        return
    log.info('unmount %s: %s; detaching it and aborting its connection', path, os.strerror(err))
    _umount(path, MNT_DETACH)
    if dev is not None:
        abort_connection(dev)


def abort_connection(dev):
    """End the FUSE connection of device `dev` through fusectl."""
    if not _fusectl_mounted():
        subprocess.run(['mount', '-t', 'fusectl', 'fusectl', FUSECTL], capture_output=True)
    try:
        with open(os.path.join(FUSECTL, str(os.minor(dev)), 'abort'), 'w') as f:
            f.write('1')
    except OSError as e:
        log.warning('aborting FUSE connection %d: %s', os.minor(dev), e)


def _fusectl_mounted():
    return any(m.fstype == 'fusectl' for m in procfs.mounts())


def set_background_queue(conn):
    """In FUSE's init: the kernel's background queue (libfuse 3.14 takes no
    -o for it)."""
    conn.max_background = MAX_BACKGROUND
    conn.congestion_threshold = CONGESTION_THRESHOLD


def set_read_ahead(path, kb):
    """Raise the mount's read-ahead so that the kernel sends 1 MiB reads."""
    dev = os.stat(path).st_dev
    bdi = '/sys/class/bdi/%d:%d/read_ahead_kb' % (os.major(dev), os.minor(dev))
    try:
        with open(bdi, 'w') as f:
            f.write(str(kb))
    except OSError as e:
        log.info('cannot set %s: %s', bdi, e)
