"""A private PostgreSQL cluster in a temporary directory, for tests, the demo and benchmarks.

    pg = PostgresCluster()              # initdb in a fresh directory; nothing runs yet
    try:
        pg.start()                      # postgres on 127.0.0.1:pg.port and a socket in pg.dir
        pg.create_database('zodb')      # owned by pg.user, RelStorage's schema installed
        zurl = pg.zurl('zodb')          # postgres://wcfs:PASSWORD@127.0.0.1:PORT/zodb
        pg.psql_file(NOTIFY_SQL, 'zodb')  # wcfs's trigger installed, as an administrator would
        ...
        pg.stop()                       # fast shutdown; start() serves the same data, same port
    finally:
        pg.destroy()                    # stops the server if it runs, removes the directory

The server is a child process of ours, ended by its pid: stop() asks for a
fast shutdown (SIGINT), then an immediate one (SIGQUIT), then SIGKILL. Should
we die without stopping it (SIGKILL, os._exit), it gets SIGINT all the same
(setpriv --pdeathsig): so start() it from a thread that lives as long as the
cluster should, the main thread as a rule.

initdb and postgres refuse to run as root. Run by root, every binary runs as
the system user `postgres` (setpriv), and the directory is made by us and
given to that user; its parent must be one that user can traverse (the system
temporary directory is; pytest's are not). Run by another user, the binaries
run as that user.

Who may connect: the superuser `postgres` through the Unix socket in pg.dir
(trust; the directory is 0700, so only its owner and root reach it), the
roles made here through 127.0.0.1 with pg.password (scram-sha-256), so that
other users of the machine cannot use the port.

The cluster runs with fsync off: it is thrown away at the end, and a fast
shutdown still writes everything out, so stop() and start() keep the data.

PGServer is one database of a cluster seen as the tests, the demo and the
benchmarks see a database server (devtools.zeoserver.ZEOServer's interface):

    server = PGServer.private()         # a cluster of its own, started, one database
    db = server.db()                    # a ZODB.DB to write with
    ...
    server.close()                      # closes db(), destroys the cluster
"""

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import ZODB
import ZODB.interfaces
from psycopg2 import sql

from wcfs_lib.zurl import masked

from .procs import free_port
from .served import ServedDatabase, open_db

__all__ = ['PostgresCluster', 'PostgresError', 'PGServer', 'find_bindir', 'last_transaction',
           'NOTIFY_SQL', 'NOTIFY_REMOVE_SQL']

SUPERUSER = 'postgres'
OS_USER = 'postgres'       # who runs the binaries when we are root
START_TIMEOUT = 30         # seconds for the server to accept connections
STOP_TIMEOUT = 30          # seconds for each step of stop()
SQL_DIR = Path(__file__).resolve().parent.parent / 'sql'
NOTIFY_SQL = SQL_DIR / 'wcfs-notify.sql'                # what the package installs for psql -f
NOTIFY_REMOVE_SQL = SQL_DIR / 'wcfs-notify-remove.sql'
PORT_TRIES = 5             # a free port taken by someone else before we bind it

# Appended to postgresql.conf after initdb; port and socket directory come on
# the command line, so that they are always what we connect to.
SETTINGS = """
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def last_transaction(db):
    """The last tid of the database of the ZODB.DB db, 8 bytes, whatever its
    storage. Not db.lastTransaction(): RelStorage's main instance, which it
    asks, keeps the first value it read; commits and polls happen in the
    instances of the connections. A fresh instance polls once instead."""
    if not ZODB.interfaces.IMVCCStorage.providedBy(db.storage):
        return db.storage.lastTransaction()
    storage = db.storage.new_instance()
    try:
        storage.poll_invalidations()
        return storage.lastTransaction()
    finally:
        storage.release()


class PostgresError(Exception):
    """A cluster that could not be made, started or stopped; the message says
    which directory and ends with the last lines of the log."""


def find_bindir():
    """The directory of initdb and postgres: Debian's newest
    /usr/lib/postgresql/N/bin, else wherever PATH finds initdb."""
    def version(d):
        return int(Path(d).parent.name) if Path(d).parent.name.isdigit() else -1
    for d in sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=version, reverse=True):
        if os.access(os.path.join(d, 'initdb'), os.X_OK):
            return d
    initdb = shutil.which('initdb')
    if initdb is None:
        raise PostgresError('initdb not found in /usr/lib/postgresql/*/bin nor on PATH: '
                            'install PostgreSQL (Debian: apt install postgresql)')
    return os.path.dirname(initdb)


class PostgresCluster:
    """One private cluster; see the module doc.

    dir        the directory: data/ (PGDATA), postgres.log, the Unix socket
    port       its TCP port on 127.0.0.1, fixed once the first start succeeds
    user       the role that owns the databases made here ('wcfs')
    password   the password of every role made here
    log        the server's log so far (text)
    """

    def __init__(self, parent=None, bindir=None, user='wcfs', standby_of=None):
        """standby_of: another cluster, running: this one is its hot standby
        (pg_basebackup; read-only, replaying what the primary commits), with
        the same roles and password."""
        self.bindir = bindir or find_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix='wcfs-pg-', dir=parent))
        self.datadir = self.dir / 'data'
        self.logpath = self.dir / 'postgres.log'
        self.host = '127.0.0.1'
        self.port = free_port()
        self.user = user
        self.password = secrets.token_hex(12)
        self.proc = None
        self._port_fixed = False
        self._history_free = {}   # database name -> made history-free
        try:
            if standby_of is None:
                self._initdb()
            else:
                self._base_backup(standby_of)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    @property
    def log(self):
        return self._log_from(0)

    def _log_from(self, offset):
        try:
            with open(self.logpath, 'rb') as f:
                f.seek(offset)
                return f.read().decode(errors='replace')
        except FileNotFoundError:
            return ''

    def _log_size(self):
        try:
            return self.logpath.stat().st_size
        except FileNotFoundError:
            return 0

    def _fail(self, what):
        tail = '\n'.join(self.log.splitlines()[-20:])
        return PostgresError(f'{self.dir}: {what}\n--- last lines of {self.logpath}:\n{tail}')

    # ---- processes ----

    def _argv(self, program, *args, pdeathsig=None):
        """argv running bindir/program, as OS_USER when we are root, sent
        the signal pdeathsig (a name) when the thread that started it ends."""
        options = []
        if os.geteuid() == 0:
            options += [f'--reuid={OS_USER}', f'--regid={OS_USER}', '--init-groups', '--reset-env']
        if pdeathsig:
            options += ['--pdeathsig', pdeathsig]
        argv = [os.path.join(self.bindir, program), *map(str, args)]
        return ['setpriv', *options, '--', *argv] if options else argv

    def _initdb(self):
        if os.geteuid() == 0:
            shutil.chown(self.dir, OS_USER, OS_USER)
        os.chmod(self.dir, 0o700)
        argv = self._argv('initdb', '-D', self.datadir, '-U', SUPERUSER, '--no-sync',
                          '--auth-local=trust', '--auth-host=scram-sha-256',
                          '--encoding=UTF8', '--locale=C')
        r = subprocess.run(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise PostgresError(f'{self.dir}: initdb exited with {r.returncode}:\n{r.stdout}')
        with open(self.datadir / 'postgresql.conf', 'a') as f:
            f.write(SETTINGS)

    def _base_backup(self, primary):
        """A copy of the running `primary` that streams its WAL (standby.signal)."""
        if os.geteuid() == 0:
            shutil.chown(self.dir, OS_USER, OS_USER)
        os.chmod(self.dir, 0o700)
        argv = self._argv('pg_basebackup', '-D', self.datadir, '-R', '-X', 'stream', '-c', 'fast',
                          '-h', primary.dir, '-p', primary.port, '-U', SUPERUSER)
        r = subprocess.run(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise PostgresError(f'{self.dir}: pg_basebackup of {primary.dir} exited with '
                                f'{r.returncode}:\n{r.stdout}')
        self.user, self.password = primary.user, primary.password
        self._history_free = dict(primary._history_free)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Start the server; return once it accepts connections. On the first
        start a port that someone else took meanwhile is replaced by another."""
        assert not self.running, f'{self.dir}: postgres is already running'
        for _ in range(PORT_TRIES):
            offset = self._log_size()
            if self._start_once():
                self._port_fixed = True
                return
            if self._port_fixed or 'could not bind' not in self._log_from(offset):
                raise self._fail(f'postgres exited with {self.proc.returncode}')
            self.port = free_port()
        raise self._fail(f'postgres found no free port in {PORT_TRIES} tries')

    def _start_once(self):
        """-> True once the server accepts connections, False if it exited."""
        argv = self._argv('postgres', '-D', self.datadir, '-p', self.port, '-k', self.dir,
                          pdeathsig='INT')
        with open(self.logpath, 'ab') as log:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._admin_connect('postgres').close()
                return True
            except psycopg2.OperationalError:
                pass
            if self.proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise self._fail(f'postgres did not accept connections within {START_TIMEOUT} s')
            time.sleep(0.05)

    def stop(self):
        """Fast shutdown (SIGINT): the data is kept and start() serves it again.
        Escalates to SIGQUIT (immediate) and SIGKILL if the server lingers."""
        if self.proc is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def destroy(self):
        """Stop the server whatever state it is in, remove the directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def statements_during(self, seconds):
        """-> how many statements the server ran in the next `seconds`
        seconds, from every client (log_statement = all meanwhile: the
        server's log counts what pg_stat_statements would, without a
        restart to load it)."""
        self.sql("ALTER SYSTEM SET log_statement = 'all'")
        try:
            self.sql('SELECT pg_reload_conf()')
            time.sleep(1)                   # the reload reaches every backend
            offset = self._log_size()
            time.sleep(seconds)
            logged = self._log_from(offset)
        finally:
            self.sql('ALTER SYSTEM RESET log_statement')
            self.sql('SELECT pg_reload_conf()')
        return sum(1 for line in logged.splitlines()
                   if 'LOG:  statement: ' in line or 'LOG:  execute ' in line)

    # ---- roles and databases ----

    def _admin_connect(self, dbname):
        conn = psycopg2.connect(host=str(self.dir), port=self.port, user=SUPERUSER,
                                dbname=dbname, connect_timeout=5)
        conn.autocommit = True
        return conn

    def sql(self, statement, *args, dbname='postgres'):
        """Run one statement (a str or a psycopg2.sql.Composed) as the
        superuser; -> its rows, [] for a statement that returns none."""
        conn = self._admin_connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args or None)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def psql_file(self, path, dbname):
        """Run `psql -f path` on dbname as the superuser, as an administrator
        would; -> its output. PostgresError when psql fails."""
        argv = [os.path.join(self.bindir, 'psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1',
                '-h', str(self.dir), '-p', str(self.port), '-U', SUPERUSER, '-d', dbname,
                '-f', str(path)]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        if r.returncode != 0:
            raise PostgresError(f'{self.dir}: psql -f {path} on {dbname} exited with '
                                f'{r.returncode}:\n{r.stdout}')
        return r.stdout

    def _ensure_role(self, role):
        if not self.sql('SELECT 1 FROM pg_roles WHERE rolname = %s', role):
            self.sql(sql.SQL('CREATE ROLE {} LOGIN PASSWORD %s').format(sql.Identifier(role)),
                     self.password)

    def create_database(self, name, history_free=False, template=None):
        """A database owned by self.user with RelStorage's schema, history-free
        or history-preserving, so that read-only clients find it complete.
        template: a database made so before, copied (much faster than making
        the schema again); history_free is then the template's."""
        self._ensure_role(self.user)
        if template is not None:
            self.sql(sql.SQL('CREATE DATABASE {} OWNER {} TEMPLATE {}').format(
                sql.Identifier(name), sql.Identifier(self.user), sql.Identifier(template)))
            self._history_free[name] = self._history_free[template]
            return
        self.sql(sql.SQL('CREATE DATABASE {} OWNER {}').format(
            sql.Identifier(name), sql.Identifier(self.user)))
        self._history_free[name] = history_free
        self.storage(name).close()

    def template(self, history_free=False):
        """A database with RelStorage's schema for create_database to copy,
        made on the first call; -> its name."""
        name = 'template_hf' if history_free else 'template_hp'
        if name not in self._history_free:
            self.create_database(name, history_free=history_free)
        return name

    def drop_database(self, name):
        """Drop `name`, ending the sessions still connected to it."""
        self.sql(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))
        self._history_free.pop(name, None)

    def add_reader(self, dbname, role='wcfs_reader'):
        """A role that may only SELECT from the tables of dbname (made by
        create_database); -> its name. Its password is self.password."""
        self._ensure_role(role)
        r = sql.Identifier(role)
        self.sql(sql.SQL('GRANT CONNECT ON DATABASE {} TO {}').format(sql.Identifier(dbname), r))
        for grant in ('GRANT USAGE ON SCHEMA public TO {}',
                      'GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}'):
            self.sql(sql.SQL(grant).format(r), dbname=dbname)
        return role

    # ---- ZODB ----

    def dsn(self, dbname, user=None, socket=False):
        """libpq's connection string for dbname as user (default self.user);
        through the Unix socket with socket=True."""
        host = self.dir if socket else self.host
        return (f"dbname='{dbname}' user='{user or self.user}' password='{self.password}' "
                f"host='{host}' port='{self.port}'")

    def zurl(self, dbname, user=None, **query):
        """postgres://USER:PASSWORD@127.0.0.1:PORT/DBNAME[?query] (zodburi's
        RelStorage resolver; query: its options, e.g. keep_history='false')."""
        url = f'postgres://{user or self.user}:{self.password}@{self.host}:{self.port}/{dbname}'
        if query:
            url += '?' + '&'.join(f'{k}={v}' for k, v in query.items())
        return url

    def zconfig(self, dbname, path=None, user=None, socket=False, **options):
        """Write a ZConfig file with one <relstorage> section for dbname and
        return its zconfig:// ZURL. options are lines of the section, with
        _ for - and True/False for true/false (read_only=True: `read-only
        true`); by default keep-history as the database was made and
        create-schema false (the schema is there: no DDL at open). The file
        is path, by default DBNAME.conf in self.dir."""
        section = {'keep_history': not self._history_free.get(dbname, False),
                   'create_schema': False, **options}
        lines = ''.join('  %s %s\n' % (k.replace('_', '-'), {True: 'true', False: 'false'}.get(v, v))
                        for k, v in section.items())
        text = (f'%import relstorage\n<relstorage>\n{lines}  <postgresql>\n'
                f'    dsn {self.dsn(dbname, user, socket)}\n  </postgresql>\n</relstorage>\n')
        path = Path(path or self.dir / f'{dbname}.conf')
        path.write_text(text)
        return f'zconfig://{path}'

    def storage(self, dbname, user=None, **options):
        """A RelStorage on dbname as user (default self.user); options:
        relstorage.options.Options, keep_history by default as the database
        was made. The caller closes it."""
        from relstorage.adapters.postgresql import PostgreSQLAdapter
        from relstorage.options import Options
        from relstorage.storage import RelStorage
        options.setdefault('keep_history', not self._history_free.get(dbname, False))
        opts = Options(**options)
        return RelStorage(PostgreSQLAdapter(dsn=self.dsn(dbname, user), options=opts), options=opts)


class PGServer(ServedDatabase):
    """One RelStorage database in a PostgresCluster, with ZEOServer's
    interface. zurl is postgres://wcfs:PASSWORD@127.0.0.1:PORT/DB (with
    ?keep_history=false for a history-free database), so shown_zurl has ***
    for the password; zconfig() gives a zconfig:// ZURL of it. stop() and
    start() stop and start the whole cluster.

    cluster       the cluster, whose database dbname is made here
    template      copy the cluster's template database (much faster when a
                  cluster serves many databases one after the other)
    owns_cluster  close() destroys the cluster; otherwise it drops the
                  database and leaves the cluster running for the next one
    """

    def __init__(self, cluster, dbname, history_free=False, template=False, owns_cluster=False):
        self.cluster = cluster
        self.dbname = dbname
        self.history_free = history_free
        self.owns_cluster = owns_cluster
        self.dir = self.cluster.dir
        self.logpath = self.cluster.logpath
        self._log_start = len(self.cluster.log)
        if template:
            cluster.create_database(dbname, template=cluster.template(history_free))
        else:
            cluster.create_database(dbname, history_free=history_free)

    @classmethod
    def private(cls, dbname='zodb', history_free=False):
        """A PGServer on a cluster of its own, started; close() destroys it."""
        cluster = PostgresCluster()
        try:
            cluster.start()
            return cls(cluster, dbname, history_free, owns_cluster=True)
        except BaseException:
            cluster.destroy()
            raise

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

    def new_db(self):
        """Another ZODB.DB on the database, with a client of its own; the caller closes it."""
        return open_db(self.cluster.storage(self.dbname))

    def wait_reconnected(self, timeout=None):
        """Nothing to wait for: RelStorage connects again at its next use."""

    def close(self):
        self.close_db()
        if self.owns_cluster:
            self.cluster.destroy()
            return
        if not self.cluster.running:
            self.cluster.start()
        self.cluster.drop_database(self.dbname)
