"""Finding the wcfs that serves a database on this machine, or starting one.

    wc = client.join('zeo://db.example:9100')      # a Connection, as connect() gives
    wc = client.join(db, autostart=True)           # db: a ZODB.DB of ZEO or RelStorage

A wcfs serves a database when its mount is in /proc/self/mountinfo with
fstype `fuse.wcfs` and its `.wcfs/zurl` has the key (`zurl.key`) of the
ZURL asked for. Anyone may mount a FUSE filesystem that calls itself wcfs
and shows any ZURL; join trusts only mounts made by root or by the calling
user (effective uid), and looks at no other: it does not even read their
`.wcfs/zurl` (a filesystem of another user may never answer). The proof is
the mount's `user_id=` option: the kernel takes it from the mount(2) call,
which only root may make with a user_id of its choice; fusermount3, the
way every other user mounts FUSE, sets it to that user's own uid. (A mount
made inside another user namespace does not propagate into ours.) A path is
taken only while it resolves into that very mount (its device), so a mount
of someone else over it, or a directory renamed under it, is not read.

autostart=True, when no wcfs serves the database: join runs

    wcfs -d --autoexit --pidfile DIR/wcfs.pid --logfile DIR/wcfs.log ZURL DIR/mnt

with DIR = RUNTIME/wcfs/<first 16 hex digits of sha256(zurl.key(ZURL))>,
RUNTIME = $XDG_RUNTIME_DIR, else /run/user/<uid>, else /run for root (any
other user without one gets a WCFSError). DIR is made 0700 and must belong
to the caller. The look and the start happen under flock(DIR/lock), so
programs that race to start one get one wcfs. The wcfs run is `wcfs` on
PATH, else /usr/sbin/wcfs (the package's, off a user's PATH), else wcfs.py
beside this wcfs_lib, run with this Python. It exits by itself once nothing
under its mount has been open for 60 s (a Connection without views holds
nothing open).

Every failure is a WCFSError of one line naming the ZURL, its password
masked.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from .. import procfs
from .. import zurl as zurls
from .dbzurl import zurl_of
from .views import WCFSError, connect

START_TIMEOUT = 120     # s: `wcfs -d` itself gives up after its --db-timeout (30)
PACKAGED_WCFS = '/usr/sbin/wcfs'
TREE_WCFS = Path(__file__).resolve().parents[2] / 'wcfs.py'


def join(zurl_or_db, autostart=False):
    """-> a Connection to the wcfs on this machine that serves the database
    (a ZURL, or a ZODB.DB whose ZURL is derived: dbzurl.zurl_of); with
    autostart, one is started when none serves it. WCFSError when there is
    none (saying which mounts of other users were skipped), or it cannot be
    started (with wcfs's own message)."""
    zurl = zurl_or_db if isinstance(zurl_or_db, str) else zurl_of(zurl_or_db)
    found, skipped = find(zurl)
    if found is None and autostart:
        found, skipped = _start_unless_served(zurl)
    if found is None:
        raise WCFSError('%s: no wcfs serves this database on this machine%s'
                        % (zurls.masked(zurl), _skipped(skipped)))
    try:
        return connect(found)
    except WCFSError as e:      # it went away since: say which database it was for
        raise WCFSError('%s: %s' % (zurls.masked(zurl), e)) from None


def find(zurl):
    """-> (the mount point of a wcfs of root or of this user serving zurl,
    or None; [(mount point, uid)] of the fuse.wcfs mounts of other users,
    which were not looked at)."""
    want = zurls.key(zurl)
    uid = os.geteuid()
    skipped = []
    for mount in procfs.mounts():
        if mount.fstype != 'fuse.wcfs':
            continue
        owner = _owner(mount)
        if owner not in (0, uid):
            skipped.append((mount.mountpoint, owner))
            continue
        shown = _shown_zurl(mount)
        if shown is not None and zurls.key(shown) == want:
            return mount.mountpoint, skipped
    return None, skipped


def _owner(mount):
    """The uid the kernel says made the mount; None when it does not say."""
    try:
        return int(mount.super_options.get('user_id'))
    except (TypeError, ValueError):
        return None


def _shown_zurl(mount):
    """.wcfs/zurl of the mount, read only through that very mount; None if unreadable."""
    path = mount.mountpoint
    try:
        if _dev(os.stat(path)) != mount.dev:
            return None
        fd = os.open(os.path.join(path, '.wcfs', 'zurl'), os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _dev(os.fstat(fd)) != mount.dev:
                return None
            return os.read(fd, 4096).decode(errors='replace')
        finally:
            os.close(fd)
    except OSError:
        return None     # a dead wcfs (ENOTCONN), or one that went away meanwhile


def _dev(st):
    return os.major(st.st_dev), os.minor(st.st_dev)


def _skipped(skipped):
    if not skipped:
        return ''
    return ('; skipped fuse.wcfs mounts of other users (join trusts only root and uid %d): %s'
            % (os.geteuid(), ', '.join('%s (uid %s)' % s for s in skipped)))


# ---- autostart ----

def _start_unless_served(zurl):
    home = state_dir(zurl)
    with _locked(zurl, os.path.join(home, 'lock')):
        found, skipped = find(zurl)        # another program may have started it meanwhile
        if found is None:
            _start(zurl, home)
            found, skipped = find(zurl)
    if found is None:
        raise WCFSError('%s: wcfs started on %s, but no wcfs mount shows this ZURL '
                        '(see %s)' % (zurls.masked(zurl), os.path.join(home, 'mnt'),
                                      os.path.join(home, 'wcfs.log')))
    return found, skipped


def state_dir(zurl):
    """-> the directory of the wcfs that autostart runs for zurl (made, 0700)."""
    digest = hashlib.sha256(zurls.key(zurl).encode()).hexdigest()[:16]
    path = _runtime_dir(zurl)
    for name in ('wcfs', digest):
        path = os.path.join(path, name)
        _private_dir(zurl, path)
    return path


def _runtime_dir(zurl):
    uid = os.geteuid()
    for path in (os.environ.get('XDG_RUNTIME_DIR'), '/run/user/%d' % uid):
        if path and os.path.isdir(path):
            return path
    if uid == 0:
        return '/run'
    raise WCFSError('%s: autostart: no runtime directory for uid %d (set XDG_RUNTIME_DIR)'
                    % (zurls.masked(zurl), uid))


def _private_dir(zurl, path):
    """Make path 0700, or take it if it exists as a directory of ours that
    no other user may write (else another user could plant a wcfs there)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise WCFSError('%s: autostart: mkdir %s: %s' % (zurls.masked(zurl), path, e.strerror)) \
            from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise WCFSError('%s: autostart: %s is not a directory of uid %d that only it may write'
                        % (zurls.masked(zurl), path, os.geteuid()))


@contextlib.contextmanager
def _locked(zurl, path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise WCFSError('%s: autostart: %s: %s' % (zurls.masked(zurl), path, e.strerror)) \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)        # releases the lock


def _start(zurl, home):
    mnt = os.path.join(home, 'mnt')
    try:
        os.mkdir(mnt, 0o700)
    except FileExistsError:
        pass                # also a stale mount of a dead wcfs: wcfs cleans it up
    argv = wcfs_command() + ['-d', '--autoexit', '--pidfile', os.path.join(home, 'wcfs.pid'),
                             '--logfile', os.path.join(home, 'wcfs.log'), zurl, mnt]
    shown = zurls.masked(zurl)
    try:
        run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors='replace', timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise WCFSError('%s: wcfs did not start within %d s (see %s)'
                        % (shown, START_TIMEOUT, os.path.join(home, 'wcfs.log'))) from None
    except OSError as e:
        raise WCFSError('%s: cannot run %s: %s' % (shown, argv[0], e.strerror)) from None
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or ['no message']
        raise WCFSError('%s: wcfs failed to start (exit %d): %s'
                        % (shown, run.returncode, lines[-1]))


def wcfs_command():
    """-> the argv prefix that runs wcfs (see the module docstring)."""
    found = shutil.which('wcfs')
    if found:
        return [found]
    if os.access(PACKAGED_WCFS, os.X_OK):
        return [PACKAGED_WCFS]
    if TREE_WCFS.is_file():
        return [sys.executable, str(TREE_WCFS)]
    raise WCFSError('no wcfs to start: none on PATH, no %s, no %s' % (PACKAGED_WCFS, TREE_WCFS))
