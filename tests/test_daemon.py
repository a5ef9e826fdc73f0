"""Daemon mode of SPEC §2, on real `wcfs.py -d` processes, a real runzeo and real mounts.

- `-d` returns 0 only once the mount serves; the pid file names the detached
  daemon, not the process we started;
- a second start for the same pid file is refused (exit 1, one line naming it);
- a stale pid file is taken over: its process was killed (and left a stale
  mount behind), or its pid now runs something that is not wcfs;
- SIGTERM unmounts, removes the pid file and exits;
- `--logfile` is reopened on SIGHUP (logrotate);
- `--autoexit=SECONDS` exits once nothing under the mount was open for SECONDS,
  and not while a file or a directory there is open;
- every failed start exits 1 (2 for a ZURL that cannot be parsed) with one
  line on stderr and no traceback, and leaves no daemon and no mount;
- as root, the default pid file is /run/wcfs/<mount point, / as ->.pid, named
  after the real path of the mount point (also when given through a symlink);
- a pid file whose directory another user owns or may write to is refused
  (exit 1, one line naming it), as root with --pidfile and as a user other
  than root (nobody) with the default pid file; a directory wcfs makes for
  its pid file is 0700;
- a pid file that is empty because its wcfs is still writing it is not taken
  for stale: the start waits for the pid and refuses a live one;
- a failure after start-up never writes to the start-up pipe's descriptor
  number, which something else may have reused by then.

Every daemon started here is ended at teardown by the pid in its pid file
(SIGTERM, then SIGKILL), and a mount left behind is unmounted.
"""

import concurrent.futures
import ctypes
import errno
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
import transaction
from ZODB.utils import u64

from daemonhelp import RUN_TIMEOUT, read_pid, stale_mount, wcfs_running
from devtools.procs import START_TIMEOUT, STOP_TIMEOUT, free_port, is_mounted, read_text, wait_for
from devtools.wcfsproc import ROOT
from wcfs_lib import zbig
from wcfs_lib.service import daemon
from zhelp import NOBODY, SETPRIV_NOBODY, assert_one_line_error, read_head

AUTOEXIT = 2            # seconds of --autoexit in these tests
BLKSIZE = 64 << 10


def serving(mountpoint):
    """Whether .wcfs/zurl reads under mountpoint; -> its line (the ZURL)."""
    try:
        with open(os.path.join(mountpoint, '.wcfs', 'zurl')) as f:
            return f.read().rstrip('\n')
    except OSError:
        return ''


# ---- data ----

def commit_bigfile(db, data):
    """Commit a ZBigFile holding data as root['f']; -> (oid, the content wcfs must serve)."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        f = zbig.ZBigFile(BLKSIZE)
        f.write(0, data)
        conn.root()['f'] = f
        tm.commit()
        return u64(f._p_oid), f.read()
    finally:
        conn.close()



def sample_data():
    return os.urandom(2 * BLKSIZE) + bytes(BLKSIZE) + b'tail'


# ---- start-up ----

def test_returns_only_once_serving(zeo, wcfs_d, mnt):
    s = wcfs_d(zeo.zurl, mnt)

    assert s.returncode == 0, s.stderr
    assert s.stderr == ''
    assert serving(mnt) == zeo.zurl
    assert is_mounted(mnt)
    assert s.pid is not None, 'no pid in %s' % s.pidfile
    assert s.pid != s.command_pid
    assert wcfs_running(s.pid)


def test_waits_for_database_before_returning(zeo, wcfs_d, tmp_path, mnt):
    """With the database down at start, `-d` returns only after it is back and
    the mount serves (widens the window that test_returns_only_once_serving
    samples)."""
    zeo.stop()
    pidfile = tmp_path / 'wcfs.pid'
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(wcfs_d, zeo.zurl, mnt, '--db-timeout', '30', pidfile=pidfile)
        wait_for(lambda: read_pid(pidfile) or started.done(), START_TIMEOUT,
                 'the daemon to take its pid file')
        with pytest.raises(concurrent.futures.TimeoutError):
            started.result(timeout=2)   # bounded negative check: the database is down
        zeo.start()
        s = started.result(timeout=RUN_TIMEOUT + 5)

    assert s.returncode == 0, s.stderr
    assert serving(mnt) == zeo.zurl
    assert wcfs_running(s.pid)


def test_daemon_serves_data(zeo, wcfs_d, mnt):
    oid, content = commit_bigfile(zeo.db(), sample_data())
    s = wcfs_d(zeo.zurl, mnt)

    assert s.returncode == 0, s.stderr
    assert read_head(mnt, oid) == content


def test_second_start_for_same_pidfile_is_refused(zeo, wcfs_d, tmp_path, mnt):
    first = wcfs_d(zeo.zurl, mnt)
    assert first.returncode == 0, first.stderr
    other = tmp_path / 'other'
    other.mkdir()

    second = wcfs_d(zeo.zurl, other)

    assert_one_line_error(second, 1, first.pidfile)
    assert read_pid(first.pidfile) == first.pid
    assert wcfs_running(first.pid)
    assert serving(mnt) == zeo.zurl
    assert not is_mounted(other)


def test_sigkilled_daemon_stale_pidfile_and_mount_are_taken_over(zeo, wcfs_d, mnt):
    oid, content = commit_bigfile(zeo.db(), sample_data())
    first = wcfs_d(zeo.zurl, mnt)
    assert first.returncode == 0, first.stderr
    assert read_head(mnt, oid) == content

    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: not wcfs_running(first.pid), STOP_TIMEOUT, 'the killed wcfs to be gone')
    wait_for(lambda: stale_mount(mnt), 10, 'a stale mount at %s' % mnt)
    assert read_pid(first.pidfile) == first.pid

    second = wcfs_d(zeo.zurl, mnt)

    assert second.returncode == 0, second.stderr
    assert second.pid not in (None, first.pid)
    assert wcfs_running(second.pid)
    assert serving(mnt) == zeo.zurl
    assert read_head(mnt, oid) == content


def test_stale_pidfile_of_another_program_is_taken_over(zeo, wcfs_d, tmp_path, mnt):
    sleeper = subprocess.Popen(['sleep', '300'], stdin=subprocess.DEVNULL)
    try:
        pidfile = tmp_path / 'wcfs.pid'
        pidfile.write_text('%d\n' % sleeper.pid)

        s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile)

        assert s.returncode == 0, s.stderr
        assert s.pid not in (None, sleeper.pid)
        assert wcfs_running(s.pid)
        assert serving(mnt) == zeo.zurl
        assert sleeper.poll() is None, 'wcfs must not touch the process of a stale pid file'
    finally:
        sleeper.kill()
        sleeper.wait()


def default_pidfile_as_root(mountpoint):
    return '/run/wcfs/%s.pid' % mountpoint.lstrip('/').replace('/', '-')


@pytest.mark.skipif(os.geteuid() != 0, reason='the default pid file is under /run/wcfs as root')
def test_default_pidfile_as_root(zeo, wcfs_d, mnt):
    pidfile = default_pidfile_as_root(mnt)
    assert not os.path.exists(pidfile)

    s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile, default_pidfile=True)

    assert s.returncode == 0, s.stderr
    assert s.pid is not None, 'no pid in %s' % pidfile
    assert wcfs_running(s.pid)

    os.kill(s.pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(pidfile), STOP_TIMEOUT, '%s to be removed' % pidfile)


@pytest.mark.skipif(os.geteuid() != 0, reason='the default pid file is under /run/wcfs as root')
def test_default_pidfile_is_named_after_the_real_mount_point(zeo, wcfs_d, tmp_path, mnt):
    """A mount point given through a symlink gets the pid file of its real path,
    so that a second start through either path finds the first."""
    link = tmp_path / 'link'
    link.symlink_to(mnt)
    pidfile = default_pidfile_as_root(mnt)
    assert not os.path.exists(pidfile)

    s = wcfs_d(zeo.zurl, link, pidfile=pidfile, default_pidfile=True)

    assert s.returncode == 0, s.stderr
    assert s.pid is not None, 'no pid in %s' % pidfile
    assert not os.path.exists(default_pidfile_as_root(str(link)))
    again = wcfs_d(zeo.zurl, mnt, pidfile=pidfile, default_pidfile=True)
    assert_one_line_error(again, 1, pidfile)
    assert wcfs_running(s.pid)
    assert serving(mnt) == zeo.zurl


# ---- the pid file's directory ----

def impostor():
    """A live process whose name says wcfs (sleep run as `wcfs`): what another
    user would plant in a pid file to make wcfs believe it runs already."""
    return subprocess.Popen(['wcfs', '300'], executable='/bin/sleep', stdin=subprocess.DEVNULL)


def assert_refused_for_its_directory(s, pidfile, mountpoint):
    """The start was refused because of the pid file's directory, and left nothing."""
    assert_one_line_error(s, 1, str(pidfile), 'directory')
    assert 'already running' not in s.stderr
    assert_nothing_left(s, mountpoint)


@pytest.mark.skipif(os.geteuid() != 0, reason='makes a directory owned by nobody')
@pytest.mark.parametrize('planted', [False, True], ids=['empty', 'planted'])
def test_pidfile_in_directory_of_another_user_is_refused(zeo, wcfs_d, tmp_path, mnt, planted):
    rundir = tmp_path / 'run'
    rundir.mkdir(0o700)
    os.chown(rundir, NOBODY.pw_uid, NOBODY.pw_gid)
    pidfile = rundir / 'wcfs.pid'
    planter = impostor() if planted else None
    try:
        if planted:
            pidfile.write_text('%d\n' % planter.pid)
            os.chown(pidfile, NOBODY.pw_uid, NOBODY.pw_gid)

        s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile)

        assert_refused_for_its_directory(s, pidfile, mnt)
        if planted:
            assert read_pid(pidfile) == planter.pid
            assert planter.poll() is None, 'wcfs must not touch the process of a pid file'
        else:
            assert not os.path.exists(pidfile)
    finally:
        if planter is not None:
            planter.kill()
            planter.wait()


@pytest.mark.parametrize('mode', [0o777, 0o1777, 0o770, 0o702], ids=oct)
def test_pidfile_in_directory_others_may_write_is_refused(zeo, wcfs_d, tmp_path, mnt, mode):
    """World- or group-writable, even sticky like /tmp: another user could
    create the pid file first."""
    rundir = tmp_path / 'run'
    rundir.mkdir()
    os.chmod(rundir, mode)
    pidfile = rundir / 'wcfs.pid'

    s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile)

    assert_refused_for_its_directory(s, pidfile, mnt)
    assert not os.path.exists(pidfile)
    assert os.stat(rundir).st_mode & 0o7777 == mode, 'wcfs must leave the directory alone'


def test_pidfile_directory_made_by_wcfs_is_0700(zeo, wcfs_d, tmp_path, mnt):
    pidfile = tmp_path / 'run' / 'wcfs' / 'wcfs.pid'
    old_umask = os.umask(0)     # wcfs must not rely on its caller's umask
    try:
        s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile)
    finally:
        os.umask(old_umask)

    assert s.returncode == 0, s.stderr
    assert s.pid is not None
    st = os.stat(pidfile.parent)
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, os.geteuid())


# ---- the pid file's directory, as a user other than root ----

@functools.lru_cache(maxsize=None)
def why_nobody_cannot_run_wcfs():
    """None when nobody can run this wcfs.py with this python, else why not
    (a clone in a directory only root may enter, as on CI)."""
    imports = ('import sys; sys.path.insert(0, sys.argv[1]); '
               'import daemon, mfusepy, ZODB, wcfs_lib.service.daemon')
    r = subprocess.run(SETPRIV_NOBODY + [sys.executable, '-c', imports, str(ROOT)],
                       cwd='/', capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return None if r.returncode == 0 else r.stderr.strip().splitlines()[-1]


@pytest.fixture
def as_nobody():
    """Skip unless nobody can run wcfs.py; /dev/fuse 0666 (Debian's default)
    for the test, so that nobody could mount."""
    why = why_nobody_cannot_run_wcfs()
    if why:
        pytest.skip('nobody cannot run %s with %s: %s' % (ROOT / 'wcfs.py', sys.executable, why))
    mode = os.stat('/dev/fuse').st_mode & 0o7777
    os.chmod('/dev/fuse', 0o666)
    try:
        yield
    finally:
        os.chmod('/dev/fuse', mode)


def nobody_dir(parent, name, mode=0o700):
    """A directory parent/name owned by nobody."""
    path = os.path.join(parent, name)
    os.mkdir(path)
    os.chmod(path, mode)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


@pytest.mark.parametrize('planted', [False, True], ids=['empty', 'planted'])
def test_default_pidfile_directory_made_by_another_user_is_refused_as_non_root(
        zeo, wcfs_d, nobody_tmp, as_nobody, planted):
    """Without XDG_RUNTIME_DIR a user's default pid file is in /tmp/wcfs-<uid>/,
    which any user may make first: here root makes it, 1777 like /tmp."""
    rundir = '/tmp/wcfs-%d' % NOBODY.pw_uid
    if os.path.lexists(rundir):
        pytest.skip('%s exists already; this test makes it and removes it' % rundir)
    mnt = nobody_dir(nobody_tmp, 'mnt')
    pidfile = os.path.join(rundir, mnt.lstrip('/').replace('/', '-') + '.pid')
    os.mkdir(rundir)
    planter = impostor() if planted else None
    try:
        os.chmod(rundir, 0o1777)
        if planted:
            with open(pidfile, 'w') as f:
                f.write('%d\n' % planter.pid)

        s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile, default_pidfile=True, as_nobody=True)

        assert_refused_for_its_directory(s, pidfile, mnt)
        assert os.path.exists(pidfile) == planted
    finally:
        if planter is not None:
            planter.kill()
            planter.wait()
        shutil.rmtree(rundir)


def test_default_pidfile_directory_is_made_0700_as_non_root(zeo, wcfs_d, nobody_tmp, as_nobody):
    runtime = nobody_dir(nobody_tmp, 'xdg')
    mnt = nobody_dir(nobody_tmp, 'mnt')
    pidfile = os.path.join(runtime, 'wcfs', mnt.lstrip('/').replace('/', '-') + '.pid')

    s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile, default_pidfile=True, as_nobody=True,
               xdg_runtime_dir=runtime)

    assert s.returncode == 0, s.stderr
    assert s.pid is not None, 'no pid in %s' % pidfile
    assert is_mounted(mnt)      # root may not look inside: no allow_other
    st = os.stat(os.path.dirname(pidfile))
    assert (st.st_mode & 0o7777, st.st_uid) == (0o700, NOBODY.pw_uid)


# ---- a pid file being written ----

class Inotify:
    """Events of one file, through inotify(7) (the kernel tells us when another
    process has read it)."""

    IN_CLOSE_NOWRITE = 0x10

    def __init__(self, path, mask):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), 'inotify on %s' % path)

    def wait(self, timeout, what):
        if not select.select([self.fd], [], [], timeout)[0]:
            raise AssertionError('timed out after %s s waiting for %s' % (timeout, what))
        os.read(self.fd, 4096)

    def close(self):
        os.close(self.fd)


def test_pidfile_being_written_is_not_taken_for_stale(zeo, wcfs_d, tmp_path, mnt):
    """python-daemon (lockfile) creates the pid file, then writes the pid: a
    second start that reads it in between must wait for the pid, not break
    the file and run beside the first."""
    first = wcfs_d(zeo.zurl, mnt, pidfile=tmp_path / 'first.pid')
    assert first.returncode == 0, first.stderr
    other = tmp_path / 'other'
    other.mkdir()
    pidfile = tmp_path / 'wcfs.pid'
    fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # as lockfile does
    watch = Inotify(pidfile, Inotify.IN_CLOSE_NOWRITE)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = pool.submit(wcfs_d, zeo.zurl, other, pidfile=pidfile)
            watch.wait(RUN_TIMEOUT, 'the second wcfs to read the empty pid file')
            os.write(fd, b'%d\n' % first.pid)
            os.close(fd)
            fd = None
            second = started.result(timeout=RUN_TIMEOUT + 5)
    finally:
        watch.close()
        if fd is not None:
            os.close(fd)

    assert_one_line_error(second, 1, str(pidfile), str(first.pid))
    assert not is_mounted(other)
    assert read_pid(pidfile) == first.pid
    assert wcfs_running(first.pid)


def test_empty_pidfile_that_stays_empty_is_taken_over(zeo, wcfs_d, tmp_path, mnt):
    """A wcfs killed between creating its pid file and writing its pid leaves
    it empty: after a bounded wait, that file is stale."""
    pidfile = tmp_path / 'wcfs.pid'
    pidfile.write_bytes(b'')

    s = wcfs_d(zeo.zurl, mnt, pidfile=pidfile)

    assert s.returncode == 0, s.stderr
    assert s.pid is not None, 'no pid in %s' % pidfile
    assert wcfs_running(s.pid)
    assert serving(mnt) == zeo.zurl


# ---- failed starts ----

def assert_nothing_left(s, mountpoint):
    """After a failed start: no wcfs holds its pid file, nothing is mounted."""
    pid = read_pid(s.pidfile)
    assert pid is None or not wcfs_running(pid), 'a wcfs (pid %d) runs after a failed start' % pid
    assert not is_mounted(mountpoint)


def test_unreachable_database_exits_1(wcfs_d, mnt):
    zurl = 'zeo://127.0.0.1:%d' % free_port()

    s = wcfs_d(zurl, mnt, '--db-timeout', '2')

    assert_one_line_error(s, 1, zurl)
    assert_nothing_left(s, mnt)


def test_missing_mountpoint_exits_1(zeo, wcfs_d, tmp_path):
    missing = str(tmp_path / 'missing')

    s = wcfs_d(zeo.zurl, missing)

    assert_one_line_error(s, 1, missing)
    assert_nothing_left(s, missing)


def test_mounted_mountpoint_exits_1(zeo, wcfs_d, tmp_path, mnt):
    first = wcfs_d(zeo.zurl, mnt, pidfile=tmp_path / 'first.pid')
    assert first.returncode == 0, first.stderr

    second = wcfs_d(zeo.zurl, mnt, pidfile=tmp_path / 'second.pid')

    assert_one_line_error(second, 1, mnt)
    pid = read_pid(second.pidfile)
    assert pid is None or not wcfs_running(pid), 'the second wcfs (pid %d) runs' % pid
    assert wcfs_running(first.pid)
    assert serving(mnt) == zeo.zurl


def test_unknown_scheme_exits_2(wcfs_d, mnt):
    zurl = 'nosuchscheme://somewhere/db'

    s = wcfs_d(zurl, mnt)

    assert_one_line_error(s, 2, zurl)
    assert_nothing_left(s, mnt)


# ---- signals ----

def test_sigterm_unmounts_removes_pidfile_and_exits(zeo, wcfs_d, mnt):
    s = wcfs_d(zeo.zurl, mnt)
    assert s.returncode == 0, s.stderr

    os.kill(s.pid, signal.SIGTERM)

    wait_for(lambda: not wcfs_running(s.pid), STOP_TIMEOUT, 'wcfs to exit after SIGTERM')
    wait_for(lambda: not is_mounted(mnt), STOP_TIMEOUT, '%s to be unmounted' % mnt)
    wait_for(lambda: not os.path.exists(s.pidfile), STOP_TIMEOUT, 'the pid file to be removed')


def test_sighup_reopens_logfile(zeo, wcfs_d, tmp_path, mnt):
    logfile = tmp_path / 'wcfs.log'
    rotated = tmp_path / 'wcfs.log.1'
    oid, content = commit_bigfile(zeo.db(), sample_data())
    s = wcfs_d(zeo.zurl, mnt, logfile=logfile)
    assert s.returncode == 0, s.stderr
    assert 'serving' in read_text(logfile)

    os.rename(logfile, rotated)
    os.kill(s.pid, signal.SIGHUP)

    # The signal is handled asynchronously: log until a line reaches the new
    # file. mkdir of the root object (not a ZBigFile) fails with EINVAL and
    # logs a warning, as often as it is tried.
    not_a_bigfile = os.path.join(mnt, 'bigfile', '%016x' % 0)

    def logs_to_new_file():
        with pytest.raises(OSError) as e:
            os.mkdir(not_a_bigfile)
        assert e.value.errno == errno.EINVAL
        return 'bigfile/%016x' % 0 in read_text(logfile)

    wait_for(logs_to_new_file, 10, 'a log line in the reopened %s' % logfile)

    assert read_head(mnt, oid) == content
    visible = 'bigfile/%016x: visible' % oid
    wait_for(lambda: visible in read_text(logfile), 10, '%r in %s' % (visible, logfile))
    assert visible not in read_text(rotated)
    assert 'serving' in read_text(rotated)
    assert wcfs_running(s.pid), 'SIGHUP must not end wcfs'
    assert serving(mnt) == zeo.zurl


# ---- --autoexit ----

def test_autoexit_when_idle(zeo, wcfs_d, mnt):
    s = wcfs_d(zeo.zurl, mnt, '--autoexit=%d' % AUTOEXIT)
    assert s.returncode == 0, s.stderr
    assert serving(mnt) == zeo.zurl    # the last file closed under the mount
    idle_since = time.monotonic()

    wait_for(lambda: not wcfs_running(s.pid), 20, 'wcfs to exit after %d s idle' % AUTOEXIT)

    assert time.monotonic() - idle_since >= AUTOEXIT - 0.5, 'wcfs exited before being idle'
    wait_for(lambda: not is_mounted(mnt), STOP_TIMEOUT, '%s to be unmounted' % mnt)
    wait_for(lambda: not os.path.exists(s.pidfile), STOP_TIMEOUT, 'the pid file to be removed')


@pytest.mark.parametrize('what', ['file', 'directory'])
def test_no_autoexit_while_open(zeo, wcfs_d, mnt, what):
    s = wcfs_d(zeo.zurl, mnt, '--autoexit=%d' % AUTOEXIT)
    assert s.returncode == 0, s.stderr
    if what == 'file':
        fd = os.open(os.path.join(mnt, '.wcfs', 'zurl'), os.O_RDONLY)
    else:
        fd = os.open(os.path.join(mnt, 'bigfile'), os.O_RDONLY | os.O_DIRECTORY)
    try:
        time.sleep(2 * AUTOEXIT)     # bounded negative check: longer than --autoexit
        assert wcfs_running(s.pid), 'wcfs exited while a %s under the mount was open' % what
        assert is_mounted(mnt)
    finally:
        os.close(fd)

    wait_for(lambda: not wcfs_running(s.pid), 20, 'wcfs to exit %d s after the close' % AUTOEXIT)
    wait_for(lambda: not is_mounted(mnt), STOP_TIMEOUT, '%s to be unmounted' % mnt)


def test_failure_after_start_up_does_not_write_to_the_reused_pipe_descriptor(tmp_path):
    rfd, wfd = os.pipe()
    pipe = daemon.StartupPipe(wfd)
    pipe.report(None)
    assert os.read(rfd, 100) == b'ready\n'
    victim = os.open(tmp_path / 'victim', os.O_RDWR | os.O_CREAT)   # the lowest free number
    try:
        assert victim == wfd
        pipe.report('RuntimeError: after start-up')
        assert os.fstat(victim)     # still open, and nothing was written to it
        assert (tmp_path / 'victim').read_bytes() == b''
        assert os.read(rfd, 100) == b''     # the pipe was closed once, at the ready
    finally:
        os.close(victim)
        os.close(rfd)
