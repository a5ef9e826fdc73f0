"""Start-up safety of a shared machine (SPEC §2, §4.4), on real directories,
real FUSE mounts and real client processes.

- the check of a pid file's directory: ours and writable by nobody else,
  sticky or not; a symlink to it only of root or ours; a directory wcfs
  makes for its pid file is 0700 whatever the umask (the whole `-d` runs
  are in test_daemon.py);
- the stale-mount clean-up on start detaches only a dead wcfs: a dead FUSE
  mount of another filesystem, or a dead path that is not a mount point, is
  refused (exit 1, one line) and left as it is;
- a mount point given through a symlink: a client that never acks is still
  killed (wcfs matches its /proc fd links against the real path).

Every process started here is ended by its pid, every mount unmounted.
"""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from chanhelp import Client
from daemonhelp import stale_mount
from devtools.procs import (START_TIMEOUT, is_mounted, read_text, spawn, terminate, unmount_left,
                            wait_for)
from devtools.wcfsproc import ROOT
from wcfs_lib import procfs
from wcfs_lib.service import daemon
from zhelp import NOBODY, Writer, head_at, stat_int, wait_head

RUN_TIMEOUT = 60        # seconds for a wcfs that is expected to exit by itself
BLKSIZE = 64 << 10


# ---- the pid file's directory ----

def make_dir(path, mode, uid=None):
    os.mkdir(path)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, -1)
    return str(path)


@pytest.mark.parametrize('mode', [0o700, 0o755, 0o1755, 0o500], ids=oct)
def test_own_directory_no_one_else_may_write_is_safe(tmp_path, mode):
    assert daemon.directory_problem(make_dir(tmp_path / 'run', mode)) is None


@pytest.mark.parametrize('mode', [0o777, 0o1777, 0o770, 0o730, 0o702, 0o1703], ids=oct)
def test_directory_others_may_write_is_unsafe(tmp_path, mode):
    path = make_dir(tmp_path / 'run', mode)
    problem = daemon.directory_problem(path)
    assert problem is not None
    assert path in problem and '%04o' % mode in problem, problem


@pytest.mark.skipif(os.geteuid() != 0, reason='makes a directory owned by nobody')
@pytest.mark.parametrize('mode', [0o700, 0o755], ids=oct)
def test_directory_of_another_user_is_unsafe(tmp_path, mode):
    path = make_dir(tmp_path / 'run', mode, NOBODY.pw_uid)
    problem = daemon.directory_problem(path)
    assert problem is not None
    assert path in problem and 'nobody' in problem, problem


@pytest.mark.skipif(os.geteuid() != 0, reason='makes a symlink owned by nobody')
def test_symlink_of_another_user_to_own_directory_is_unsafe(tmp_path):
    """Its owner could point it at another directory between two starts."""
    target = make_dir(tmp_path / 'run', 0o700)
    link = tmp_path / 'link'
    link.symlink_to(target)
    os.lchown(link, NOBODY.pw_uid, NOBODY.pw_gid)
    problem = daemon.directory_problem(str(link))
    assert problem is not None
    assert str(link) in problem and 'symlink' in problem, problem


def test_own_symlink_to_own_directory_is_safe(tmp_path):
    target = make_dir(tmp_path / 'run', 0o700)
    link = tmp_path / 'link'
    link.symlink_to(target)
    assert daemon.directory_problem(str(link)) is None


def test_file_is_not_a_directory(tmp_path):
    path = tmp_path / 'file'
    path.write_text('')
    problem = daemon.directory_problem(str(path))
    assert problem is not None and 'not a directory' in problem, problem


@pytest.mark.parametrize('umask', [0o000, 0o022, 0o077], ids=oct)
def test_private_dir_is_made_0700_whatever_the_umask(tmp_path, umask):
    path = str(tmp_path / 'a' / 'wcfs')
    old = os.umask(umask)
    try:
        daemon.make_private_dir(path)
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, os.geteuid())
    assert daemon.directory_problem(path) is None


def test_private_dir_leaves_an_existing_directory_alone(tmp_path):
    path = make_dir(tmp_path / 'run', 0o1777)
    daemon.make_private_dir(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o1777


# ---- stale mounts ----

# A FUSE filesystem that is not wcfs: an empty root directory, fsname and
# subtype "other" (mountinfo: fstype fuse.other, source other).
OTHER_FS = textwrap.dedent('''
    import errno, os, stat, sys
    os.environ.setdefault('FUSE_LIBRARY_NAME', 'fuse3')
    import mfusepy

    class Other(mfusepy.Operations):
        def getattr(self, path, fh=None):
            if path != '/':
                raise mfusepy.FuseOSError(errno.ENOENT)
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)

        def readdir(self, path, fh):
            return ['.', '..']

    mfusepy.FUSE(Other(), sys.argv[1], foreground=True, fsname='other', subtype='other')
''')


def mount_entry(path):
    """The topmost mount at path (per /proc/self/mountinfo), or None."""
    path = os.path.realpath(path)
    found = [m for m in procfs.mounts() if m.mountpoint == path]
    return found[-1] if found else None


def stat_works(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def lazy_unmount_all(path):
    """umount -l every mount at path (a refused wcfs leaves the dead one there)."""
    for _ in range(10):
        if not is_mounted(path):
            return
        subprocess.run(['umount', '-l', str(path)], stdin=subprocess.DEVNULL, capture_output=True)


@pytest.fixture
def dead_other_fs(tmp_path):
    """A mount point (tmp_path/mnt) with a dead FUSE mount of another
    filesystem on it: its server was SIGKILLed. Unmounted at the end."""
    path = tmp_path / 'mnt'
    path.mkdir()
    logpath = tmp_path / 'other.log'
    server = spawn([sys.executable, '-c', OTHER_FS, path], logpath)

    def serving():
        if server.poll() is not None:
            raise AssertionError('the other filesystem exited:\n%s' % read_text(logpath))
        return is_mounted(path) and stat_works(path)

    try:
        wait_for(serving, START_TIMEOUT, 'the other filesystem to serve at %s' % path)
        server.kill()
        server.wait()
        wait_for(lambda: stale_mount(path), 10, 'ENOTCONN at %s' % path)
        assert mount_entry(path).fstype == 'fuse.other'
        yield str(path)
    finally:
        terminate(server)
        lazy_unmount_all(path)


@pytest.fixture
def run_wcfs(tmp_path):
    """run(zurl, path, *args) runs wcfs.py in the foreground until it exits
    (AssertionError if it still runs after START_TIMEOUT); -> (returncode,
    stderr). A wcfs that serves instead is ended at teardown, its mount undone."""
    started = []

    def run(zurl, path, *args):
        errpath = tmp_path / ('wcfs%d.err' % len(started))
        with open(errpath, 'wb') as err:
            proc = subprocess.Popen([sys.executable, str(ROOT / 'wcfs.py'), *map(str, args), zurl,
                                     str(path)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        started.append((proc, path, errpath))
        try:
            proc.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError('wcfs on %s did not exit within %s s (mounted: %s):\n%s'
                                 % (path, START_TIMEOUT, mount_entry(path), read_text(errpath)))
        return proc.returncode, read_text(errpath)

    try:
        yield run
    finally:
        for proc, path, errpath in started:
            if proc.poll() is None:
                terminate(proc)
                unmount_left(path)
            print('--- wcfs on %s, exit %s; stderr:\n%s'
                  % (path, proc.returncode, read_text(errpath)))


def assert_one_line(stderr, *names):
    lines = stderr.splitlines()
    assert len(lines) == 1 and 'Traceback' not in stderr, stderr
    for name in names:
        assert name in lines[0], stderr


def test_dead_mount_of_another_filesystem_is_refused_and_left_alone(zeo, dead_other_fs, run_wcfs):
    code, stderr = run_wcfs(zeo.zurl, dead_other_fs)

    assert code == 1, stderr
    assert_one_line(stderr, dead_other_fs, 'fuse.other')
    entry = mount_entry(dead_other_fs)
    assert entry is not None and entry.fstype == 'fuse.other', 'wcfs detached %s' % entry
    assert stale_mount(dead_other_fs)


@pytest.fixture
def dead_wcfs(zeo, tmp_path):
    """A mount point (tmp_path/mnt) with a dead wcfs mount on it (SIGKILLed)."""
    path = tmp_path / 'mnt'
    path.mkdir()
    proc = spawn([sys.executable, ROOT / 'wcfs.py', zeo.zurl, path], tmp_path / 'dead-wcfs.log')
    try:
        wait_for(lambda: proc.poll() is None and stat_works(path / '.wcfs' / 'zurl'), START_TIMEOUT,
                 'wcfs to serve at %s' % path)
        proc.kill()
        proc.wait()
        wait_for(lambda: stale_mount(path), 10, 'ENOTCONN at %s' % path)
        yield str(path)
    finally:
        terminate(proc)
        lazy_unmount_all(path)


def test_dead_wcfs_mount_shows_as_wcfs_in_mountinfo(dead_wcfs):
    """What the clean-up recognizes (the clean-up itself: test_cli.py,
    test_daemon.py)."""
    entry = mount_entry(dead_wcfs)
    assert (entry.fstype, entry.source) == ('fuse.wcfs', 'wcfs')


def test_dead_path_that_is_not_a_mount_point_is_refused(zeo, dead_wcfs, run_wcfs):
    """A mount point inside a dead mount: nothing to clean there, and the dead
    mount around it is not ours to touch."""
    inner = os.path.join(dead_wcfs, 'bigfile')

    code, stderr = run_wcfs(zeo.zurl, inner)

    assert code == 1, stderr
    assert_one_line(stderr, inner)
    assert stale_mount(dead_wcfs)
    assert mount_entry(dead_wcfs).fstype == 'fuse.wcfs'


# ---- a mount point given through a symlink ----

def test_client_that_never_acks_is_killed_through_symlinked_mount_point(zeo, tmp_path, mount_at):
    real = tmp_path / 'real'
    real.mkdir()
    link = tmp_path / 'link'
    link.symlink_to(real)
    w = Writer(zeo.db())
    f, oid, old = w.new_file(BLKSIZE, {0: b'a' * BLKSIZE, 1: b'b' * BLKSIZE})
    mnt = mount_at(zeo.zurl, link, '--kill-timeout', '2')
    fdir = os.path.join(mnt.path, 'bigfile', '%016x' % oid)
    os.mkdir(fdir)
    bad = Client(fdir, old, 'noack')
    try:
        bad.expect('have %016x' % old)
        bad.expect('acked')
        f.write_block(1, b'c' * BLKSIZE)
        new = w.commit()
        bad.expect('have %016x' % new)
        assert head_at(fdir) == old, 'head moved before the client that does not ack'

        bad.proc.wait(20)

        assert bad.proc.returncode == -signal.SIGKILL
        wait_head(fdir, new)
        assert stat_int(mnt, 'clients_killed') == 1
    finally:
        bad.stop()
