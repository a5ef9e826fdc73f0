"""A private ZEO server: runzeo on a free port of 127.0.0.1 serving one
Data.fs, for tests, the demo and benchmarks.

    server = ZEOServer(dir)             # dir/Data.fs, dir/runzeo.log; nothing runs yet
    server.start()                      # returns once runzeo accepts connections
    db = server.db()                    # a ZODB.DB to write with
    ...
    server.close()                      # closes db(), ends runzeo (by pid)

runzeo is our child, ended by its pid (SIGTERM, then SIGKILL); stop() and
start() serve the same Data.fs on the same port again.
"""

import sys
from pathlib import Path

import ZEO.ClientStorage

from .procs import START_TIMEOUT, accepts, free_port, read_text, spawn, terminate, wait_for
from .served import ServedDatabase, open_db

__all__ = ['ZEOServer', 'RUNZEO']

RUNZEO = Path(sys.executable).parent / 'runzeo'  # installed beside this python


class ZEOServer(ServedDatabase):
    """runzeo serving one Data.fs on 127.0.0.1:port.

    The interface every database server of devtools has: zurl (what wcfs is
    given), shown_zurl (what .wcfs/zurl shows), addr, log, start(), stop()
    (the data stays for the next start()), db() (a ZODB.DB to write with),
    new_db() (another ZODB.DB with a client of its own, which the caller
    closes), wait_reconnected() (after start(): until db() can commit
    again), last_transaction() (the database's last tid, 8 bytes), close().

    dir       where Data.fs and runzeo.log go unless path and logpath say otherwise
    options   keys of runzeo's <zeo> section, e.g. {'invalidation-queue-size': 10}
    error     the exception a failed start raises (the demo's and the
              benchmarks' own; a test's failure by default)
    """

    def __init__(self, dir, options=None, path=None, logpath=None, error=AssertionError):
        self.dir = Path(dir)
        self.path = str(path or self.dir / 'Data.fs')
        self.logpath = Path(logpath or self.dir / 'runzeo.log')
        self.options = options or {}
        self.error = error
        self.addr = ('127.0.0.1', free_port())
        self.zurl = self.shown_zurl = 'zeo://%s:%d' % self.addr
        self.proc = None

    @property
    def log(self):
        return read_text(self.logpath)

    @property
    def argv(self):
        """runzeo's command line: the address and the Data.fs, or with
        options a configuration file of them all."""
        if self.options:
            return [str(RUNZEO), '-C', str(self._conf())]
        return [str(RUNZEO), '-a', '%s:%d' % self.addr, '-f', self.path]

    def _conf(self):
        path = self.dir / 'zeo.conf'
        keys = ''.join('  %s %s\n' % kv for kv in self.options.items())
        path.write_text('<zeo>\n  address %s:%d\n%s</zeo>\n<filestorage>\n  path %s\n'
                        '</filestorage>\n' % (*self.addr, keys, self.path))
        return path

    def start(self, timeout=START_TIMEOUT):
        """Start runzeo and return once it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, 'runzeo is already running'
        self.proc = spawn(self.argv, self.logpath)

        def serving():
            if self.proc.poll() is not None:
                raise self.error(f'runzeo exited with {self.proc.returncode}:\n{self.log}')
            return accepts(self.addr)

        wait_for(serving, timeout, f'runzeo to accept on {self.zurl}', self.error)

    def stop(self):
        """Stop runzeo (SIGTERM, then SIGKILL); the clients stay and reconnect after start()."""
        if self.proc is not None:
            terminate(self.proc)

    def new_db(self):
        """Another ZODB.DB on the database, with a client of its own; the caller closes it."""
        return open_db(ZEO.ClientStorage.ClientStorage(self.addr))

    def wait_reconnected(self, timeout=START_TIMEOUT):
        """Wait until db()'s client is connected again after start()."""
        if self._db is not None:
            wait_for(self._db.storage.is_connected, timeout,
                     f'the client of {self.zurl} to reconnect', self.error)

    def close(self):
        """Close db() and stop runzeo."""
        self.close_db()
        self.stop()
