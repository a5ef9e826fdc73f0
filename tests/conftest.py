"""Fixtures that start real things for the integration tests, and clean them up.

zeo          a ZEO server (runzeo) on a free port of 127.0.0.1 with its own
             Data.fs, and a ZODB client for the test to write with. It can be
             stopped and started again on the same port and file, to test how
             wcfs lives through a database outage.
postgres     the same for RelStorage: a private PostgreSQL cluster
             (devtools.pgcluster) on a free port of 127.0.0.1 with one
             history-preserving database; same interface as zeo.
postgres_history_free
             the same with a history-free database (which wcfs refuses).
database     zeo, then postgres: a test that takes it runs once on each.
zeo2         a second ZEO server: another database.
fuse_for_all /dev/fuse readable and writable by every user for the test.
wcfs_mount   a factory: mnt = wcfs_mount(zurl, *extra_args) runs wcfs.py in the
             foreground on a fresh mount point and returns once it serves.
mount_at     the same on a mount point that exists already (stale, or
             reachable by other users: public_dir makes one such directory).
serve        a factory of scenes.Served: files committed to `database`, a
             wcfs on them, channels closed at the end.
wcfs_d       runs `wcfs.py -d` to its end (daemonhelp.Start); nobody_tmp,
             mnt: the directories its tests use.
wait_for     polls a condition until it holds or a timeout passes (the fixture
             of devtools.procs.wait_for, which helper modules import).
runtime      XDG_RUNTIME_DIR of the test, where client.join autostarts wcfs;
             every wcfs started under it is ended at teardown.

The servers and processes themselves are devtools' (zeoserver, pgcluster,
wcfsproc), shared with the demo and the benchmarks; test modules import
helpers from devtools and from the helper modules beside this file
(zhelp, chanhelp, scenes, daemonhelp, ...), never from this file or from
another test module. This file serves tests/unit/ too.

Every process started here is ended by its pid at teardown (SIGTERM, then
SIGKILL), and a mount point left mounted is unmounted. The logs of the ZEO
server and of every wcfs are printed at teardown, so that pytest shows them
with a failing test.
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

# Every wcfs of the suite, and the model's objects the tests make in this
# process, check the order of their locks (wcfs_lib/locks.py): set before
# wcfs_lib is imported, inherited by every process started.
os.environ.setdefault('WCFS_DEBUG', 'lock-ranks')
LOCK_ORDER = 'lock order: '     # what wcfs logs at a wrong nesting

import pytest  # noqa: E402
import ZEO.ClientStorage  # noqa: E402

from daemonhelp import Start, end_daemon, read_pid  # noqa: E402
from joinhelp import end_autostarted  # noqa: E402
from devtools.pgcluster import PGServer, PostgresCluster  # noqa: E402
from devtools.procs import START_TIMEOUT, is_mounted, unmount_left, wait_for  # noqa: E402
from devtools.wcfsproc import WCFS, WCFS_PY  # noqa: E402
from devtools.zeoserver import ZEOServer  # noqa: E402
from scenes import Served  # noqa: E402
from zhelp import NOBODY, SETPRIV_NOBODY  # noqa: E402
from wcfs_lib import zbig  # noqa: E402

# The tests write and load ZBigFiles through ZODB in this process: wendelin.core's
# module names must be importable (devtools' databases do the same, in any process).
zbig.install()


@pytest.fixture(name='wait_for')
def wait_for_fixture():
    return wait_for


def _zeo_server(tmp_path_factory, name):
    server = ZEOServer(tmp_path_factory.mktemp(name))
    try:
        server.start()
        yield server
    finally:
        server.close()
        print(f'--- runzeo log ({server.logpath}):\n{server.log}')


@pytest.fixture
def zeo(tmp_path_factory):
    yield from _zeo_server(tmp_path_factory, 'zeo')


@pytest.fixture
def zeo2(tmp_path_factory):
    """A second ZEO server: another database."""
    yield from _zeo_server(tmp_path_factory, 'zeo2')


@pytest.fixture
def fuse_for_all():
    """/dev/fuse mode 0666 for the test (Debian's default; 0600 on some
    machines), so that other users may mount; its mode restored after."""
    before = stat.S_IMODE(os.stat('/dev/fuse').st_mode)
    os.chmod('/dev/fuse', 0o666)
    try:
        yield
    finally:
        os.chmod('/dev/fuse', before)


@pytest.fixture(scope='session')
def pg_cluster():
    """A private PostgreSQL cluster for the whole session; always destroyed."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def serve_postgres(cluster, history_free):
    """Yield a PGServer on a fresh database; drop it after, print its log."""
    serve_postgres.count += 1
    server = PGServer(cluster, 'zodb%d' % serve_postgres.count, history_free, template=True)
    try:
        yield server
    finally:
        log = server.log
        server.close()
        print(f'--- postgres log ({server.logpath}):\n{log}')


serve_postgres.count = 0


@pytest.fixture
def postgres(pg_cluster):
    yield from serve_postgres(pg_cluster, history_free=False)


@pytest.fixture
def postgres_history_free(pg_cluster):
    yield from serve_postgres(pg_cluster, history_free=True)


@pytest.fixture(params=['zeo', 'postgres'])
def database(request):
    """The zeo or the postgres fixture: the test runs once with each."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def zeo_client(zeo):
    """A read-only ClientStorage of the zeo fixture's server, as wcfs opens one."""
    storage = ZEO.ClientStorage.ClientStorage(zeo.addr, read_only=True, wait_timeout=10)
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """XDG_RUNTIME_DIR of this test (0700, root's), for join here and in
    children; every wcfs autostarted under it is ended at teardown."""
    path = tmp_path / 'run'
    path.mkdir(mode=0o700)
    monkeypatch.setenv('XDG_RUNTIME_DIR', str(path))
    try:
        yield path
    finally:
        end_autostarted(path)


@pytest.fixture
def wcfs_mount(tmp_path):
    """mnt = wcfs_mount(zurl, *extra_args, expect_fail=False)

    Runs wcfs.py on a fresh mount point under tmp_path. Returns once
    mnt.path/.wcfs/zurl reads; with expect_fail=True, returns once wcfs has
    exited instead (mnt.proc.returncode, mnt.log()), and fails if it is still
    running after 20 s.
    """
    mounts = []

    def mount(zurl, *extra_args, expect_fail=False):
        n = len(mounts)
        mnt = WCFS(zurl, tmp_path / f'mnt{n}', tmp_path / f'wcfs{n}.log', extra_args)
        mounts.append(mnt)
        if expect_fail:
            try:
                mnt.proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f'wcfs did not exit within {START_TIMEOUT} s '
                                     f'(mounted: {is_mounted(mnt.path)}):\n{mnt.log()}') from None
        else:
            mnt.wait_serving(START_TIMEOUT)
        return mnt

    try:
        yield mount
    finally:
        end_all(mounts)


def end_all(mounts):
    """End every WCFS of mounts and detach its mount; print its log; fail
    where wcfs nested its locks against wcfs_lib/locks.py."""
    broken = []
    for mnt in mounts:
        mnt.cleanup()
        print(f'--- wcfs log ({mnt.logpath}), exit {mnt.proc.returncode}:\n{mnt.log()}')
        if LOCK_ORDER in mnt.log():
            broken.append(str(mnt.logpath))
    if broken:
        pytest.fail('wcfs nested its locks against wcfs_lib/locks.py: see %s' % ', '.join(broken))


@pytest.fixture
def mount_at(tmp_path):
    """mnt = mount_at(zurl, path, *extra_args): wcfs on the existing path
    (one left stale by a killed wcfs, or one in a directory other users can
    reach: wcfs_mount mounts under pytest's tmp_path, which only root may
    enter); returns once it serves."""
    mounts = []

    def mount(zurl, path, *extra_args):
        mnt = WCFS(zurl, path, tmp_path / ('wcfs-at%d.log' % len(mounts)), extra_args, mkdir=False)
        mounts.append(mnt)
        return mnt.wait_serving(START_TIMEOUT)

    try:
        yield mount
    finally:
        end_all(mounts)


@pytest.fixture
def public_dir():
    """A fresh directory every user may enter (0755); removed if empty at the end."""
    path = tempfile.mkdtemp(prefix='wcfs-robustness-')
    os.chmod(path, 0o755)
    try:
        yield Path(path)
    finally:
        for sub in sorted(Path(path).iterdir(), reverse=True):
            if not is_mounted(sub) and sub.is_dir():
                os.rmdir(sub)
        os.rmdir(path)


@pytest.fixture
def serve(database, wcfs_mount):
    """serve(**kw) -> Served(database, wcfs_mount, **kw); its channels closed at the end."""
    made = []

    def make(**kw):
        s = Served(database, wcfs_mount, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# ---- wcfs -d ----

@pytest.fixture
def nobody_tmp():
    """A fresh directory under /tmp that nobody may enter (root's 0755); removed at the end."""
    path = tempfile.mkdtemp(prefix='wcfs-test-', dir='/tmp')
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def wcfs_d(tmp_path, nobody_tmp):
    """start = wcfs_d(zurl, mountpoint, *args, pidfile=P, logfile=L, default_pidfile=False,
                      as_nobody=False, xdg_runtime_dir=None)

    Runs `wcfs.py -d --pidfile P --logfile L *args ZURL MOUNTPOINT` to its end
    and returns a Start. P defaults to a file under tmp_path; with
    default_pidfile=True no --pidfile is passed and P must be the path wcfs
    is expected to use. L defaults to a new file under tmp_path (under
    nobody_tmp, owned by nobody, with as_nobody=True). wcfs runs without
    XDG_RUNTIME_DIR in its environment unless xdg_runtime_dir is given; with
    as_nobody=True it runs as nobody:nogroup from /.

    At teardown every daemon named by a pid file of a start (right after it
    and now) is ended, and every mount point left mounted is unmounted
    (before nobody_tmp is removed).
    """
    starts = []
    mountpoints = []

    def start(zurl, mountpoint, *args, pidfile=None, logfile=None, default_pidfile=False,
              as_nobody=False, xdg_runtime_dir=None):
        n = len(starts)
        pidfile = pidfile or tmp_path / 'wcfs.pid'
        if logfile is None and as_nobody:
            logfile = os.path.join(nobody_tmp, 'wcfs%d.log' % n)
            with open(logfile, 'w'):
                os.chown(logfile, NOBODY.pw_uid, NOBODY.pw_gid)
        logfile = logfile or tmp_path / ('wcfs%d.log' % n)
        argv = [sys.executable, str(WCFS_PY), '-d', '--logfile', str(logfile)]
        if not default_pidfile:
            argv += ['--pidfile', str(pidfile)]
        argv += [*map(str, args), zurl, str(mountpoint)]
        env = dict(os.environ)
        env.pop('XDG_RUNTIME_DIR', None)
        if xdg_runtime_dir is not None:
            env['XDG_RUNTIME_DIR'] = str(xdg_runtime_dir)
        if as_nobody:
            argv = SETPRIV_NOBODY + argv
        mountpoints.append(str(mountpoint))
        s = Start(argv, pidfile, logfile, env=env, cwd='/' if as_nobody else None)
        starts.append(s)
        return s

    try:
        yield start
    finally:
        for s in starts:
            for pid in {s.pid, read_pid(s.pidfile)} - {None}:
                end_daemon(pid)
        for path in mountpoints:
            unmount_left(path)
        for s in starts:
            print('--- wcfs -d exit %s, daemon pid %s; stderr:\n%s--- log (%s):\n%s'
                  % (s.returncode, s.pid, s.stderr, s.logfile, s.log()))


@pytest.fixture
def mnt(tmp_path):
    path = tmp_path / 'mnt'
    path.mkdir()
    return str(path)

