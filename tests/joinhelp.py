"""Helpers of tests/test_join.py: the processes those tests start, and how
they are found and ended.

FakeWCFS      a FUSE filesystem of nobody that calls itself wcfs (fstype
              fuse.wcfs) and shows a ZURL in .wcfs/zurl
Joiner        a process that runs client.join(zurl, autostart=True) when told
              to, as root or as another user, and holds its Connection
processes_naming, end_process, end_autostarted
              the processes whose command line names a path (an autostarted
              wcfs names its mount point), ended by pid and start time
mount_of      the topmost mount at a path
why_nobody_cannot_run_wcfs
              None, or why nobody cannot run this tree's wcfs
"""

import functools
import os
import signal
import subprocess
import sys
import textwrap

from daemonhelp import read_pid
from devtools.procs import START_TIMEOUT, STOP_TIMEOUT, read_text, terminate, unmount_left, wait_for
from devtools.wcfsproc import ROOT
from wcfs_lib import procfs
from zhelp import NOBODY, SETPRIV_NOBODY, Child


def end_autostarted(runtime):
    homes = sorted((runtime / 'wcfs').glob('*'))
    pids = {read_pid(home / 'wcfs.pid') for home in homes} | set(processes_naming(str(runtime)))
    for pid in pids - {None}:
        end_process(pid)
    for home in homes:
        unmount_left(str(home / 'mnt'))
        print('--- autostarted wcfs log (%s):\n%s' % (home, read_text(home / 'wcfs.log')))


def end_process(pid):
    """SIGTERM, then SIGKILL, the process pid (not our child: a daemon), by
    its start time too, so that a reused pid is left alone."""
    start = procfs.process_start(pid)
    if start is None:
        return
    process = procfs.Process(pid, start, '')

    def gone():
        return not process.alive() or procfs.process_state(pid) == 'Z'

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if gone():
            return
        os.kill(pid, sig)
        try:
            wait_for(gone, STOP_TIMEOUT, 'process %d to end' % pid)
        except AssertionError:
            continue


def processes_naming(text):
    """Pids of the live processes one of whose arguments holds `text`."""
    out = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        argv = procfs.cmdline(int(name))
        if argv and procfs.process_state(int(name)) not in (None, 'Z') \
                and any(text.encode() in a for a in argv):
            out.append(int(name))
    return out


# A FUSE filesystem that calls itself wcfs (fstype fuse.wcfs) and shows the
# ZURL it is given in .wcfs/zurl; `python -c _FAKE_WCFS PATH ZURL ALLOW_OTHER`.
_FAKE_WCFS = textwrap.dedent('''
    import errno, os, stat, sys
    os.environ.setdefault('FUSE_LIBRARY_NAME', 'fuse3')
    import mfusepy

    ZURL = (sys.argv[2] + '\\n').encode()
    DIRS = {'/', '/.wcfs', '/bigfile'}

    class FakeWCFS(mfusepy.Operations):
        def getattr(self, path, fh=None):
            if path in DIRS:
                return dict(st_mode=stat.S_IFDIR | 0o555, st_nlink=2)
            if path == '/.wcfs/zurl':
                return dict(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=len(ZURL))
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path, fh):
            return ['.', '..'] + {'/': ['.wcfs', 'bigfile'], '/.wcfs': ['zurl']}.get(path, [])

        def read(self, path, size, offset, fh):
            return ZURL[offset:offset + size]

    mfusepy.FUSE(FakeWCFS(), sys.argv[1], foreground=True, fsname='wcfs', subtype='wcfs',
                 allow_other=sys.argv[3] == '1', direct_io=True)
''')


class FakeWCFS(Child):
    """The fake wcfs of nobody at path, showing zurl; mounted once constructed.

    It runs with the real uid of nobody only: libfuse gives the kernel
    getuid() as the mount's user_id, so the kernel holds it for nobody's
    mount, as for one made through fusermount3; the effective uid stays
    root's, so that it may import this tree's Python packages wherever the
    tree is (a CI clone sits in a directory only root may enter) and mount
    with allow_other (/etc/fuse.conf lets no other user).
    readable=True: with allow_other, so the test, root, can read it: only
    join's check of user_id stands between join and it.
    readable=False: without: the kernel lets no other user, root neither,
    look inside.
    """

    def __init__(self, path, zurl, logpath, readable):
        self.path = str(path)
        self.logpath = logpath
        os.mkdir(self.path)
        os.chown(self.path, NOBODY.pw_uid, NOBODY.pw_gid)
        argv = ['setpriv', '--ruid=nobody', sys.executable, '-c', _FAKE_WCFS, self.path, zurl,
                '1' if readable else '0']
        with open(logpath, 'ab') as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd='/')
        try:
            wait_for(self.mounted, START_TIMEOUT, 'the fake wcfs of nobody at %s' % self.path)
        except BaseException:
            self.close()
            raise

    def mounted(self):
        if self.proc.poll() is not None:
            raise AssertionError('the fake wcfs exited:\n%s' % read_text(self.logpath))
        return any(m.mountpoint == self.path and m.fstype == 'fuse.wcfs' for m in procfs.mounts())

    def close(self):
        terminate(self.proc)
        unmount_left(self.path)


def mount_of(path):
    return [m for m in procfs.mounts() if m.mountpoint == path][-1]


_JOIN = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    from wcfs_lib import client
    print('ready', flush=True)
    sys.stdin.readline()            # the test's go: every child joins at once
    try:
        wc = client.join(sys.argv[2], autostart=True)
    except client.WCFSError as e:
        print('error', e, flush=True)
    else:
        print('joined', wc.mountpoint, flush=True)
        sys.stdin.readline()        # hold the connection until the test is done
        wc.close()
''')


class Joiner(Child):
    """A process that joins zurl with autostart once told to (go); as
    another user with setpriv, `as_user` (and then the XDG_RUNTIME_DIR of
    that user, `runtime`)."""

    def __init__(self, zurl, as_user=(), runtime=None):
        env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime)) if runtime else None
        self.proc = subprocess.Popen([*as_user, sys.executable, '-c', _JOIN, str(ROOT), zurl],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env, cwd='/')
        assert self.proc.stdout.readline() == 'ready\n'

    def go(self):
        self.proc.stdin.write('go\n')
        self.proc.stdin.flush()

    def answer(self):
        return self.proc.stdout.readline().strip()


@functools.lru_cache(maxsize=None)
def why_nobody_cannot_run_wcfs():
    """None when nobody can run this tree's wcfs with this Python, else why not
    (a clone in a directory only root may enter, as on CI)."""
    r = subprocess.run(SETPRIV_NOBODY + [sys.executable, '-c', 'import sys; sys.path.insert(0, '
                                         'sys.argv[1]); import daemon, mfusepy, ZODB, wcfs_lib',
                                         str(ROOT)],
                       cwd='/', capture_output=True, text=True, timeout=60)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ['?'])[-1]
