"""wcfs processes started for tests, the demo and benchmarks: wcfs.py of this
tree in the foreground on one mount point, its output in a log file.

    mnt = WCFS(zurl, path, logpath)     # mkdir path, start wcfs.py ZURL PATH
    mnt.wait_serving()                  # until .wcfs/zurl reads
    ...
    mnt.cleanup()                       # end it by pid, detach a mount left behind
"""

import os
import sys
from pathlib import Path

import ZODB.utils

from .procs import START_TIMEOUT, is_mounted, read_text, spawn, terminate, unmount_left, wait_for

__all__ = ['WCFS', 'ROOT', 'WCFS_PY']

ROOT = Path(__file__).resolve().parent.parent   # the tree whose wcfs.py runs
WCFS_PY = ROOT / 'wcfs.py'


class WCFS:
    """One wcfs process serving one mount point.

    args      options before ZURL and the mount point
    launcher  a script (and its arguments) run instead of wcfs.py, that runs
              wcfs changed in its own process (a test widening a race)
    mkdir     make the mount point; False: it exists already (one left stale
              by a killed wcfs, or in a directory other users can reach)
    error     the exception a wcfs that exits before serving raises (a test's
              failure by default)
    """

    def __init__(self, zurl, path, logpath, args=(), launcher=None, mkdir=True,
                 error=AssertionError):
        self.zurl = zurl
        self.path = str(path)
        self.logpath = logpath
        self.error = error
        if mkdir:
            os.mkdir(self.path)
        program = launcher or [WCFS_PY]
        self.argv = [sys.executable, *map(str, program), *map(str, args), zurl, self.path]
        self.proc = spawn(self.argv, logpath)
        self.pid = self.proc.pid

    def log(self):
        return read_text(self.logpath)

    def serving(self):
        """Whether .wcfs/zurl reads; `error` with the log if wcfs exited."""
        if self.proc.poll() is not None:
            raise self.error(f'wcfs exited with {self.proc.returncode}:\n{self.log()}')
        if not is_mounted(self.path):
            return False
        try:
            with open(os.path.join(self.path, '.wcfs', 'zurl')) as f:
                return f.read() != ''
        except OSError:
            return False

    def wait_serving(self, timeout=START_TIMEOUT):
        """Wait until wcfs serves; -> self."""
        wait_for(self.serving, timeout, f'wcfs to serve {self.zurl} at {self.path}', self.error)
        return self

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
        """End wcfs (SIGTERM, then SIGKILL) and detach its mount if it is left."""
        terminate(self.proc)
        unmount_left(self.path)
