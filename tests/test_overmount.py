"""Mounts over the mount's own directories and files (SPEC §3; issue 8, B).

1. A user other than wcfs's own cannot mount anything over a directory or a
   file of the mount: `fusermount3` (what every FUSE filesystem of a user
   calls) is refused, because `bigfile/` and `bigfile/<oid>/` are sticky and
   owned by wcfs's user, and `access(W_OK)` on every directory answers EACCES
   to other users.
2. Those modes as `ls -ld` shows them; mkdir as another user still works, and
   so do chdir and reads; wcfs's own user may write the sticky directories.
3. Root can mount over anything. A mount over one file's `head/` or over its
   whole `bigfile/<oid>/` stops neither wcfs nor any other file: each commit
   reaches every file (head/at, head/data, and the page cache of what was
   read before), also the overmounted file, seen through descriptors opened
   before the overmount, whether its head moves after a subscriber's ack or
   at once; its @<tid> directories expire; wcfs logs no traceback.

/dev/fuse is made usable by every user (Debian's default, 0666) for the
duration of the tests that need it. Every mount made here is unmounted, every
process ended by its pid.
"""

import ctypes
import ctypes.util
import os
import subprocess
import textwrap

import pytest

from chanhelp import Chan, ranges_of
from devtools.procs import is_mounted, wait_for
from scenes import Scene, randbytes
from wcfs_lib import procfs
from zhelp import (AS_NOBODY, NOBODY_PYTHON, KiB, assert_serving, cached, expected_modes, hex16,
                   read_bytes, stat_int, wait_head)

BS = 64 * KiB
MNT_DETACH = 2
MS_NOSUID, MS_NODEV = 2, 4

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)


def share(zeo, public_dir, mount_at, *extra_args):
    """A mount with -o allow_other by root in a directory every user may enter;
    files 'a' and 'b' made visible, in that order, 'c' not; @<tid> of 'a' made."""
    s = Scene(zeo, a=(4, BS), b=(4, BS), c=(1, BS))
    path = public_dir / 'mnt'
    path.mkdir()
    s.mnt = mount_at(zeo.zurl, path, '-o', 'allow_other', *extra_args)
    s.dir = {name: s.mnt.bigfile(s.oid[name]) for name in 'ab'}
    s.revdir = os.path.join(s.dir['a'], '@' + hex16(s.tid))
    os.mkdir(s.revdir)
    return s


@pytest.fixture
def shared(zeo, public_dir, mount_at):
    return share(zeo, public_dir, mount_at)


def top_mount(path):
    """The MountEntry of the last mount made at path, or None."""
    path = os.path.realpath(path)
    at = [m for m in procfs.mounts() if m.mountpoint == path]
    return at[-1] if at else None


def detach(path):
    """umount -l path (as root) if something other than wcfs is mounted there."""
    top = top_mount(path)
    if top is None or top.fstype == 'fuse.wcfs':
        return
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'umount -l %s: %s' % (path, os.strerror(e)))


# ==== 1. no other user mounts over the mount ====

# Run as nobody with the system's python: `python -c _FUSERMOUNT PATH`. What
# a FUSE filesystem of nobody does to mount: fusermount3 with a socket to pass
# /dev/fuse back (_FUSE_COMMFD). Prints `mounted` (the /dev/fuse descriptor is
# closed at once: the mount then answers ENOTCONN, nothing waits on it) or
# `refused: <what fusermount3 said>`.
_FUSERMOUNT = textwrap.dedent('''
    import os, socket, subprocess, sys
    ours, theirs = socket.socketpair()
    r = subprocess.run(['fusermount3', '-o', 'ro', '--', sys.argv[1]], pass_fds=[theirs.fileno()],
                       env=dict(os.environ, _FUSE_COMMFD=str(theirs.fileno())),
                       capture_output=True, text=True, timeout=30)
    theirs.close()
    if r.returncode == 0:
        for fd in socket.recv_fds(ours, 1, 1)[1]:
            os.close(fd)
        print('mounted')
    else:
        print('refused: ' + r.stderr.strip())
''')

TARGETS = {
    'root': '',
    '.wcfs': '.wcfs',
    '.wcfs/stats': '.wcfs/stats',
    'bigfile': 'bigfile',
    'bigfile/<oid>': 'bigfile/{a}',
    'bigfile/<oid>/head': 'bigfile/{a}/head',
    'head/data': 'bigfile/{a}/head/data',
    'head/at': 'bigfile/{a}/head/at',
    'head/invalidations': 'bigfile/{a}/head/invalidations',
    '@<tid>': 'bigfile/{a}/@{tid}',
    '@<tid>/data': 'bigfile/{a}/@{tid}/data',
}


@pytest.mark.parametrize('target', sorted(TARGETS))
def test_fusermount3_as_another_user_over_the_mount_is_refused(shared, fuse_for_all, target):
    s = shared
    path = os.path.join(s.mnt.path, TARGETS[target].format(a=hex16(s.oid['a']), tid=hex16(s.tid)))
    try:
        r = subprocess.run([NOBODY_PYTHON, '-c', _FUSERMOUNT, path], capture_output=True,
                           text=True, timeout=60, **AS_NOBODY)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith('refused: '), '%s: %s' % (path, r.stdout)
    finally:
        detach(path)
    assert read_bytes(os.path.join(s.dir['a'], 'head', 'data')) == s.f['a'].read()
    assert_serving(s.mnt)


# ==== 2. modes, owners, access ====

# Run as nobody: `python -c _ACCESS MNT A B TID`; prints `what: result` lines.
_ACCESS = textwrap.dedent('''
    import errno, os, sys
    mnt, a, b, tid = sys.argv[1:5]
    adir = os.path.join(mnt, 'bigfile', a)
    dirs = [mnt, mnt + '/.wcfs', mnt + '/bigfile', adir, adir + '/head', adir + '/@' + tid]

    def res(fn, *args):
        try:
            fn(*args)
            return 'ok'
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    for d in dirs:
        print('W_OK %s: %s' % (d, os.access(d, os.W_OK)))
        print('R_OK|X_OK %s: %s' % (d, os.access(d, os.R_OK | os.X_OK)))
        print('chdir %s: %s' % (d, res(os.chdir, d)))
    for f in ('head/data', 'head/at', '@' + tid + '/data'):
        print('W_OK %s: %s' % (f, os.access(os.path.join(adir, f), os.W_OK)))
        print('R_OK %s: %s' % (f, os.access(os.path.join(adir, f), os.R_OK)))
    inval = os.path.join(adir, 'head', 'invalidations')
    print('R_OK|W_OK invalidations: %s' % os.access(inval, os.R_OK | os.W_OK))
    print('X_OK head/data: %s' % os.access(os.path.join(adir, 'head', 'data'), os.X_OK))
    print('open invalidations O_WRONLY: %s' % res(os.open, inval, os.O_WRONLY))
    print('mkdir bigfile/<oid>: %s' % res(os.mkdir, os.path.join(mnt, 'bigfile', b)))
    print('mkdir @<tid>: %s' % res(os.mkdir, os.path.join(mnt, 'bigfile', b, '@' + tid)))
''')


def test_access_W_OK_on_directories_is_EACCES_for_other_users_and_mkdir_still_works(shared):
    s = shared
    a, c, tid = hex16(s.oid['a']), hex16(s.oid['c']), hex16(s.tid)
    r = subprocess.run([NOBODY_PYTHON, '-c', _ACCESS, s.mnt.path, a, c, tid],
                       capture_output=True, text=True, timeout=60, **AS_NOBODY)
    assert r.returncode == 0, r.stderr
    got = dict(line.rsplit(': ', 1) for line in r.stdout.splitlines())
    p, adir = s.mnt.path, s.dir['a']
    want = {}
    for d in (p, p + '/.wcfs', p + '/bigfile', adir, adir + '/head', s.revdir):
        want.update({'W_OK %s' % d: 'False', 'R_OK|X_OK %s' % d: 'True', 'chdir %s' % d: 'ok'})
    for f in ('head/data', 'head/at', '@' + tid + '/data'):
        want.update({'W_OK %s' % f: 'False', 'R_OK %s' % f: 'True'})
    want.update({'R_OK|W_OK invalidations': 'True', 'X_OK head/data': 'False',
                 'open invalidations O_WRONLY': 'EACCES',
                 'mkdir bigfile/<oid>': 'ok', 'mkdir @<tid>': 'ok'})
    assert got == want
    # wcfs's own user (root here) may write the sticky directories, nothing else
    assert os.access(p + '/bigfile', os.W_OK) and os.access(adir, os.W_OK)
    assert not os.access(adir + '/head', os.W_OK)
    assert not os.access(adir + '/head/data', os.W_OK)


def test_bigfile_directories_are_sticky_and_everything_belongs_to_wcfs_user(shared):
    s = shared
    want = expected_modes(s.mnt.path, s.dir['a'], s.revdir)
    r = subprocess.run(['ls', '-ldn', '--', *sorted(want)], capture_output=True, text=True,
                       timeout=60, **AS_NOBODY)
    assert r.returncode == 0, r.stderr
    got = {}
    for line in r.stdout.splitlines():
        words = line.split()
        got[words[-1]] = words[0][:10]
        assert (int(words[2]), int(words[3])) == (os.getuid(), os.getgid()), line
    assert got == want


# ==== 3. root's mounts over one file ====

class Overmount:
    """Something root mounts over `path`, unmounted by close():

    bind    a directory of `tmp` holding files `data` and `at` (so that a
            path through it resolves, to another filesystem);
    fuse    a FUSE mount of another user (user_id=nobody, no allow_other)
            whose server is gone: root gets EACCES there, nothing ever waits.
    """

    def __init__(self, kind, path, tmp):
        self.path = path
        if kind == 'bind':
            decoy = tmp / 'decoy'
            decoy.mkdir()
            for name in ('data', 'at', 'head'):
                (decoy / name).write_bytes(b'decoy\n')
            subprocess.run(['mount', '--bind', str(decoy), path], check=True, capture_output=True)
        else:
            fd = os.open('/dev/fuse', os.O_RDWR)
            try:
                opts = 'fd=%d,rootmode=40000,user_id=65534,group_id=65534' % fd
                if _libc.mount(b'overmount', os.fsencode(path), b'fuse', MS_NOSUID | MS_NODEV,
                               opts.encode()) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, 'mount fuse on %s: %s' % (path, os.strerror(e)))
            finally:
                os.close(fd)
        assert is_mounted(path)

    def close(self):
        detach(self.path)


def read_at(dirfd, name):
    """Read file `name` of the directory open as dirfd (no path through the overmount)."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b''.join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def change(s, blks):
    """Write new content into block blks[name] of each file name; commit; -> tid."""
    for name, blk in blks.items():
        s.f[name].write_block(blk, randbytes(BS))
    return s.commit()


@pytest.mark.timeout(180)
@pytest.mark.parametrize('kind', ['bind', 'fuse'])
@pytest.mark.parametrize('over', ['head', 'file directory'])
def test_root_overmount_of_one_file_stops_neither_wcfs_nor_another_file(
        zeo, public_dir, mount_at, tmp_path, kind, over):
    s = share(zeo, public_dir, mount_at, '--revdir-timeout', '1', '--kill-timeout', '1000')
    adir, bdir = s.dir['a'], s.dir['b']
    target = os.path.join(adir, 'head') if over == 'head' else adir
    # a's directories and channel, opened before the overmount: no path through it
    afd = os.open(adir, os.O_RDONLY | os.O_DIRECTORY)
    ahead = os.open(os.path.join(adir, 'head'), os.O_RDONLY | os.O_DIRECTORY)
    ch = Chan(adir)
    om = None
    try:
        ch.subscribe(s.tid)
        assert read_at(ahead, 'data') == s.f['a'].read()
        assert read_bytes(os.path.join(bdir, 'head', 'data')) == s.f['b'].read()
        assert cached(os.path.join(bdir, 'head', 'data'), BS)[0] == {0, 1, 2, 3}
        om = Overmount(kind, target, tmp_path)
        # a's head moves after its subscriber's ack, then (channel closed)
        # at once, then without a change of a
        tids = []
        for blks in ({'a': 1, 'b': 2}, {'a': 3, 'b': 0}, {'b': 1}):
            tid = change(s, blks)
            tids.append(tid)
            if ch.fd is not None:
                h = ch.have()
                assert (h.tid, h.ranges) == (tid, ranges_of({blks['a']}, BS))
                ch.ack()
                ch.close()
            wait_head(bdir, tid)
            assert read_bytes(os.path.join(bdir, 'head', 'data')) == s.f['b'].read()
            wait_for(lambda: read_at(ahead, 'at') == b'%016x\n' % tid, 10,
                     'head/at of the overmounted file to reach %016x' % tid)
            assert read_at(ahead, 'data') == s.f['a'].read()
        # @<tid> directories under (or beside) the overmount expire, twice:
        # the second shows that wcfs's timer went on after the first
        for tid in tids[:2]:
            os.mkdir('@%016x' % tid, dir_fd=afd)
            wait_for(lambda: stat_int(s.mnt, 'revdirs') == 0, 10, 'the @<tid> directories to expire')
        assert_serving(s.mnt)
    finally:
        ch.close()
        os.close(ahead)
        os.close(afd)
        if om is not None:
            om.close()
    assert read_bytes(os.path.join(adir, 'head', 'data')) == s.f['a'].read()
    assert_serving(s.mnt)
