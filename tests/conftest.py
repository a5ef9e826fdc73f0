"""Fixtures that start real things for the integration tests, and clean them up.

zeo          a ZEO server (runzeo) on a free port of 127.0.0.1 with its own
             Data.fs, and a ZODB client for the test to write with. It can be
             stopped and started again on the same port and file, to test how
             wcfs lives through a database outage.
postgres     the same for RelStorage: a private PostgreSQL cluster
             (wcfs_lib.localpg) on a free port of 127.0.0.1 with one
             history-preserving database; same interface as zeo.
postgres_history_free
             the same with a history-free database (which wcfs refuses).
database     zeo, then postgres: a test that takes it runs once on each.
wcfs_mount   a factory: mnt = wcfs_mount(zurl, *extra_args) runs wcfs.py in the
             foreground on a fresh mount point and returns once it serves.
wait_for     polls a condition until it holds or a timeout passes; importable
             (`from conftest import wait_for`) and a fixture of the same name.

Every process started here is ended by its pid at teardown (SIGTERM, then
SIGKILL), and a mount point left mounted is unmounted. The logs of the ZEO
server and of every wcfs are printed at teardown, so that pytest shows them
with a failing test.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

# Every wcfs of the suite, and the model's objects the tests make in this
# process, check the order of their locks (wcfs_lib/locks.py): set before
# wcfs_lib is imported, inherited by every process started.
os.environ.setdefault('WCFS_DEBUG', 'lock-ranks')
LOCK_ORDER = 'lock order: '     # what wcfs logs at a wrong nesting

import pytest  # noqa: E402
import ZEO.ClientStorage  # noqa: E402
import ZODB  # noqa: E402
import ZODB.utils  # noqa: E402

from wcfs_lib.localpg import PostgresCluster, last_transaction
from wcfs_lib.localproc import accepts, free_port, is_mounted, terminate  # noqa: F401
from wcfs_lib.localproc import unmount_left as unmount  # noqa: F401
from wcfs_lib.zurl import masked

ROOT = Path(__file__).resolve().parent.parent
RUNZEO = Path(sys.executable).parent / 'runzeo'  # installed beside this python

START_TIMEOUT = 20  # seconds for runzeo or wcfs to start serving
STOP_TIMEOUT = 15   # seconds for a process to exit after SIGTERM


def wait_for(cond, timeout=10, what=''):
    """Call cond() until it returns something true, and return that.

    Sleeps a little between calls, longer as time goes by. Raises
    AssertionError naming `what` when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what or cond}')
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@pytest.fixture(name='wait_for')
def wait_for_fixture():
    return wait_for












def spawn(argv, logpath):
    """Start argv with stdout and stderr appended to logpath, no stdin."""
    with open(logpath, 'ab') as log:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)


def read_text(path):
    try:
        return Path(path).read_text(errors='replace')
    except FileNotFoundError:
        return ''


class ZEOServer:
    """runzeo serving one Data.fs on 127.0.0.1:port.

    The interface every database fixture has: zurl (what wcfs is given),
    shown_zurl (what .wcfs/zurl shows), addr, log, start(), stop() (the
    data stays for the next start()), db() (a ZODB.DB to write with),
    new_db() (another ZODB.DB with a client of its own, which the caller closes),
    wait_reconnected() (after start(): until db() can commit again),
    last_transaction() (the database's last tid, 8 bytes), close().
    """

    def __init__(self, dir):
        self.dir = Path(dir)
        self.path = str(self.dir / 'Data.fs')
        self.logpath = self.dir / 'runzeo.log'
        self.addr = ('127.0.0.1', free_port())
        self.zurl = self.shown_zurl = 'zeo://%s:%d' % self.addr
        self.proc = None
        self._db = None

    @property
    def log(self):
        return read_text(self.logpath)

    def start(self):
        """Start runzeo and return once it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, 'runzeo is already running'
        self.proc = spawn([RUNZEO, '-a', '%s:%d' % self.addr, '-f', self.path], self.logpath)

        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f'runzeo exited with {self.proc.returncode}:\n{self.log}')
            return accepts(self.addr)

        wait_for(serving, START_TIMEOUT, f'runzeo to accept on {self.zurl}')

    def stop(self):
        """Stop runzeo (SIGTERM, then SIGKILL); the clients stay and reconnect after start()."""
        if self.proc is not None:
            terminate(self.proc)

    def db(self):
        """A ZODB.DB on a ClientStorage of this server, made once, closed at teardown."""
        if self._db is None:
            self._db = self.new_db()
        return self._db

    def new_db(self):
        """Another ZODB.DB on the database, with a client of its own; the caller closes it."""
        return ZODB.DB(ZEO.ClientStorage.ClientStorage(self.addr))

    def wait_reconnected(self, timeout=START_TIMEOUT):
        """Wait until db()'s client is connected again after start()."""
        if self._db is not None:
            wait_for(self._db.storage.is_connected, timeout, f'the client of {self.zurl} to reconnect')

    def last_transaction(self):
        """The last tid of the database, 8 bytes (localpg.last_transaction)."""
        return last_transaction(self.db())

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
        self.stop()


@pytest.fixture
def zeo(tmp_path_factory):
    server = ZEOServer(tmp_path_factory.mktemp('zeo'))
    try:
        server.start()
        yield server
    finally:
        server.close()
        print(f'--- runzeo log ({server.logpath}):\n{server.log}')


class PGServer:
    """One RelStorage database in the session's private PostgreSQL cluster,
    with ZEOServer's interface. zurl is postgres://wcfs:PASSWORD@127.0.0.1:PORT/DB
    (with ?keep_history=false for a history-free database), so shown_zurl
    has *** for the password; zconfig() gives a zconfig:// ZURL of it.
    stop() and start() stop and start the whole cluster: the tests of a
    session run one at a time, and close() leaves it running for the next.
    """

    def __init__(self, cluster, dbname, history_free=False):
        self.cluster = cluster
        self.dbname = dbname
        self.history_free = history_free
        self.dir = self.cluster.dir
        self.logpath = self.cluster.logpath
        self._log_start = len(self.cluster.log)
        self._db = None
        template = _pg_template(cluster, history_free)
        cluster.create_database(dbname, template=template)

    @property
    def addr(self):
        return (self.cluster.host, self.cluster.port)

    @property
    def zurl(self):
        query = {'keep_history': 'false'} if self.history_free else {}
        return self.cluster.zurl(self.dbname, **query)

    @property
    def shown_zurl(self):
        return masked(self.zurl)

    @property
    def log(self):
        return self.cluster.log[self._log_start:]

    def zconfig(self, **options):
        """A zconfig:// ZURL of the database; see PostgresCluster.zconfig."""
        return self.cluster.zconfig(self.dbname, **options)

    def start(self):
        """Start the server; return once it accepts connections."""
        self.cluster.start()

    def stop(self):
        """Fast shutdown; the clients reconnect at their next use after start()."""
        self.cluster.stop()

    def db(self):
        """A ZODB.DB on a RelStorage of this database, made once, closed at teardown."""
        if self._db is None:
            self._db = self.new_db()
        return self._db

    def new_db(self):
        """Another ZODB.DB on the database, with a client of its own; the caller closes it."""
        return ZODB.DB(self.cluster.storage(self.dbname))

    def wait_reconnected(self, timeout=START_TIMEOUT):
        """Nothing to wait for: RelStorage connects again at its next use."""

    def last_transaction(self):
        return last_transaction(self.db())

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
        if not self.cluster.running:
            self.cluster.start()
        self.cluster.drop_database(self.dbname)


def _pg_template(cluster, history_free):
    """A database with RelStorage's schema to copy, made once per cluster."""
    name = 'template_hf' if history_free else 'template_hp'
    if name not in cluster.databases_made:
        cluster.create_database(name, history_free=history_free)
        cluster.databases_made.add(name)
    return name


@pytest.fixture(scope='session')
def pg_cluster():
    """A private PostgreSQL cluster for the whole session; always destroyed."""
    cluster = PostgresCluster()
    cluster.databases_made = set()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def serve_postgres(cluster, history_free):
    """Yield a PGServer on a fresh database; drop it after, print its log."""
    serve_postgres.count += 1
    server = PGServer(cluster, 'zodb%d' % serve_postgres.count, history_free)
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


class WCFS:
    """One wcfs.py process serving one mount point."""

    def __init__(self, zurl, extra_args, path, logpath):
        self.zurl = zurl
        self.path = str(path)
        self.logpath = logpath
        os.mkdir(self.path)
        self.proc = spawn([sys.executable, ROOT / 'wcfs.py', *extra_args, zurl, self.path], logpath)
        self.pid = self.proc.pid

    def log(self):
        return read_text(self.logpath)

    def serving(self):
        """Whether .wcfs/zurl reads; AssertionError with the log if wcfs exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f'wcfs exited with {self.proc.returncode}:\n{self.log()}')
        if not is_mounted(self.path):
            return False
        try:
            with open(os.path.join(self.path, '.wcfs', 'zurl')) as f:
                return f.read() != ''
        except OSError:
            return False

    def stop(self):
        """SIGTERM wcfs, wait (SIGKILL after 15 s); return its exit code."""
        return terminate(self.proc)

    def bigfile(self, oid):
        """mkdir bigfile/<oid> unless it is there; return its path. oid: int or 8 bytes."""
        if isinstance(oid, bytes):
            oid = ZODB.utils.u64(oid)
        path = os.path.join(self.path, 'bigfile', '%016x' % oid)
        if not os.path.isdir(path):
            os.mkdir(path)
        return path

    def cleanup(self):
        terminate(self.proc)
        unmount(self.path)


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
        mnt = WCFS(zurl, extra_args, tmp_path / f'mnt{n}', tmp_path / f'wcfs{n}.log')
        mounts.append(mnt)
        if expect_fail:
            try:
                mnt.proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f'wcfs did not exit within {START_TIMEOUT} s '
                                     f'(mounted: {is_mounted(mnt.path)}):\n{mnt.log()}') from None
        else:
            wait_for(mnt.serving, START_TIMEOUT, f'wcfs to serve {zurl} at {mnt.path}')
        return mnt

    try:
        yield mount
    finally:
        broken = []
        for mnt in mounts:
            mnt.cleanup()
            print(f'--- wcfs log ({mnt.logpath}), exit {mnt.proc.returncode}:\n{mnt.log()}')
            if LOCK_ORDER in mnt.log():
                broken.append(str(mnt.logpath))
        if broken:
            pytest.fail('wcfs nested its locks against wcfs_lib/locks.py: see %s' % ', '.join(broken))
