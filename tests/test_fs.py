"""The filesystem as a client sees it through a real mount (SPEC §3): the
layout and its modes, every row of the errors table, the data of head/ and
@<tid>/ as ZBIGFILE.md defines it, and the removal of unused @<tid>/."""

import errno
import mmap
import os
import random
import re
import stat
import time

import pytest
from BTrees.LOBTree import LOBTree
from persistent.mapping import PersistentMapping

from devtools.procs import wait_for
from devtools.py2str import zbigfile as py2str_zbigfile
from wcfs_lib import zbig
from wcfs_lib.zurl import masked
from zhelp import KiB, MiB, Writer, head_at, hex16, read_bytes, stat_int, stats, tid_time

BS = 64 * KiB                   # blksize of most files here
NOT_THERE = 0x7fff0000          # an oid the test databases never allocate


def randbytes(seed, n):
    return random.Random(seed).randbytes(n)


class Served:
    """A ZBigFile committed to a database fixture, then a wcfs mounted on the
    database, and bigfile/<oid>/ made.

    w: the Writer, f: the ZBigFile (blocks {blk: data} of kind, then setup(f)),
    oid, tid: of the commit that added f,
    mnt: the mount, dir: bigfile/<oid>, data: head/data.
    """

    def __init__(self, database, wcfs_mount, blksize=BS, blocks=None, kind='ZBlk0',
                 py2str=False, args=(), setup=None):
        self.w = Writer(database.db())
        if blocks is None:
            blocks = {blk: randbytes(blk, blksize) for blk in range(4)}
        f = py2str_zbigfile(blksize, py2str)
        for blk, data in blocks.items():
            f.write_block(blk, data, kind)
        if setup is not None:
            setup(f)
        self.f = f
        self.oid, self.tid = self.w.add(f)
        self.mnt = wcfs_mount(database.zurl, *args)
        self.dir = self.mnt.bigfile(self.oid)
        self.data = os.path.join(self.dir, 'head', 'data')

    def path(self, *parts):
        return os.path.join(self.mnt.path, *parts)

    def revdir(self, tid):
        """mkdir @<tid>; -> its path."""
        path = os.path.join(self.dir, '@' + hex16(tid))
        os.mkdir(path)
        return path


@pytest.fixture
def served(database, wcfs_mount):
    return Served(database, wcfs_mount)


def errno_of(fn, *args):
    """The errno of the OSError fn(*args) raises; fails if it raises none."""
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    raise AssertionError('%s%r did not fail' % (fn.__name__, args))


# ---- errors (SPEC §3, the errors table) ----

@pytest.mark.parametrize('name', ['zbigfile', '000000000000000g', '00000000000000AB',
                                  '000000000000001', '00000000000000001', '0x00000000000001'],
                         ids=['word', 'non-hex', 'upper-case-hex', '15-digits', '17-digits', '0x'])
def test_mkdir_non_oid_name_is_EINVAL(served, name):
    assert errno_of(os.mkdir, served.path('bigfile', name)) == 'EINVAL'


def test_mkdir_missing_oid_is_ENOENT(served):
    assert errno_of(os.mkdir, served.path('bigfile', hex16(NOT_THERE))) == 'ENOENT'


@pytest.mark.parametrize('what', ['root', 'PersistentMapping', 'LOBTree', 'ZBlk0'])
def test_mkdir_object_not_a_ZBigFile_is_EINVAL(database, wcfs_mount, what):
    w = Writer(database.db())
    if what == 'root':
        oid = 0
    else:
        obj = {'PersistentMapping': PersistentMapping, 'LOBTree': LOBTree,
               'ZBlk0': lambda: zbig.ZBlk0(b'data')}[what]()
        oid, _ = w.add(obj)
    mnt = wcfs_mount(database.zurl)
    assert errno_of(os.mkdir, os.path.join(mnt.path, 'bigfile', hex16(oid))) == 'EINVAL'
    assert os.listdir(os.path.join(mnt.path, 'bigfile')) == []


@pytest.mark.parametrize('blksize', [512, 2048, 5000, 4096 + 512, 3 * 4096 + 1])
def test_mkdir_blksize_not_multiple_of_4096_is_EINVAL(database, wcfs_mount, blksize):
    f, oid, _ = Writer(database.db()).new_file(blksize, {0: b'x' * blksize})
    mnt = wcfs_mount(database.zurl)
    assert errno_of(os.mkdir, os.path.join(mnt.path, 'bigfile', hex16(oid))) == 'EINVAL'


def test_mkdir_existing_bigfile_is_EEXIST(served):
    assert errno_of(os.mkdir, served.dir) == 'EEXIST'


def test_mkdir_existing_revdir_is_EEXIST(served):
    rd = served.revdir(served.tid)
    assert errno_of(os.mkdir, rd) == 'EEXIST'


@pytest.mark.parametrize('name', ['@', '@head', '@000000000000000g', '@00000000000000AB',
                                  '@000000000000001', '@00000000000000001'],
                         ids=['empty', 'word', 'non-hex', 'upper-case-hex', '15-digits',
                              '17-digits'])
def test_mkdir_revdir_non_tid_name_is_EINVAL(served, name):
    assert errno_of(os.mkdir, os.path.join(served.dir, name)) == 'EINVAL'


@pytest.mark.parametrize('after', [1, 1 << 32, None], ids=['next', 'far', 'max'])
def test_mkdir_revdir_after_last_transaction_is_ENOENT(served, after):
    last = served.w.touch_other()
    tid = 0xffffffffffffffff if after is None else last + after
    assert errno_of(os.mkdir, os.path.join(served.dir, '@' + hex16(tid))) == 'ENOENT'


def test_mkdir_revdir_of_just_committed_tid_works(served):
    # A tid the client saw committed is never "in the future": mkdir at once.
    for i in range(10):
        served.f.write_block(0, b'rev %d' % i)
        tid = served.w.commit()
        rd = served.revdir(tid)
        assert read_bytes(os.path.join(rd, 'data')) == served.f.read()


def test_mkdir_revdir_before_object_existed_is_ENOENT(database, wcfs_mount):
    w = Writer(database.db())
    before = w.touch_other()
    f, oid, tid = w.new_file(BS, {0: b'x'})
    mnt = wcfs_mount(database.zurl)
    fdir = mnt.bigfile(oid)
    assert errno_of(os.mkdir, os.path.join(fdir, '@' + hex16(before))) == 'ENOENT'
    assert errno_of(os.mkdir, os.path.join(fdir, '@' + hex16(tid - 1))) == 'ENOENT'
    os.mkdir(os.path.join(fdir, '@' + hex16(tid)))


def pack_after(database, tid):
    """Pack the database at a time after transaction tid."""
    wait_for(lambda: time.time() > tid_time(tid) + 0.01, 5, 'the clock to pass the last tid')
    database.db().pack(time.time())


def test_mkdir_revdir_whose_record_was_packed_away_is_ENOENT(database, wcfs_mount):
    w = Writer(database.db())
    f, oid, tid1 = w.new_file(BS, {0: b'one'})
    f.replace_blktab()              # changes the ZBigFile object itself
    tid2 = w.commit()
    pack_after(database, tid2)
    mnt = wcfs_mount(database.zurl)      # after the pack: nothing of tid1 is in its ZEO cache
    fdir = mnt.bigfile(oid)
    assert errno_of(os.mkdir, os.path.join(fdir, '@' + hex16(tid1))) == 'ENOENT'
    os.mkdir(os.path.join(fdir, '@' + hex16(tid2)))
    assert read_bytes(os.path.join(fdir, '@' + hex16(tid2), 'data')) == f.read()


def test_read_revdir_block_whose_history_was_packed_is_EIO(database, wcfs_mount):
    w = Writer(database.db())
    blocks = {0: randbytes(0, BS), 40: randbytes(40, BS)}   # 40: far beyond readahead of 0
    f, oid, tid1 = w.new_file(BS, blocks)
    f.write_block(0, b'two')        # the same ZBlk0 gets new state; the ZBigFile stays
    tid2 = w.commit()
    pack_after(database, tid2)
    mnt = wcfs_mount(database.zurl)
    fdir = mnt.bigfile(oid)
    rd = os.path.join(fdir, '@' + hex16(tid1))
    os.mkdir(rd)                    # the ZBigFile's record as of tid1 is still there
    fd = os.open(os.path.join(rd, 'data'), os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 41 * BS
        assert os.pread(fd, BS, 40 * BS) == blocks[40]
        assert errno_of(os.pread, fd, BS, 0) == 'EIO'
    finally:
        os.close(fd)
    assert hex16(oid) in mnt.log()
    assert read_bytes(os.path.join(fdir, 'head', 'data'))[:BS] == f.read()[:BS]


def test_read_while_database_is_unreachable_is_EIO_after_db_timeout(database, wcfs_mount):
    blocks = {0: randbytes(0, BS), 40: randbytes(40, BS)}  # 40: far beyond readahead of 0
    s = Served(database, wcfs_mount, blocks=blocks, args=('--db-timeout', '2'))
    fd = os.open(s.data, os.O_RDONLY)
    try:
        assert os.pread(fd, BS, 0) == blocks[0]
        database.stop()
        t0 = time.monotonic()
        assert errno_of(os.pread, fd, BS, 40 * BS) == 'EIO'
        elapsed = time.monotonic() - t0
        assert 2 * 0.9 <= elapsed < 2 + 10, 'EIO after %.1f s with --db-timeout 2' % elapsed
        assert os.pread(fd, BS, 0) == blocks[0]        # cached: no database needed
        assert s.mnt.proc.poll() is None
        assert read_bytes(s.path('.wcfs', 'zurl')) == (database.shown_zurl + '\n').encode()
        database.start()

        def block40():
            try:
                return os.pread(fd, BS, 40 * BS)
            except OSError:                 # EIO until wcfs reconnected
                return None

        assert wait_for(block40, 30, 'block 40 to read once the database is back') \
            == blocks[40]
    finally:
        os.close(fd)
    assert hex16(s.oid) in s.mnt.log()


def test_1000_revdirs_can_exist_at_once(served):
    first = served.f.read()
    served.f.write_block(0, b'later')
    last = served.w.commit()
    assert last - served.tid > 1000     # tids in between name the file as of served.tid
    for i in range(1000):
        served.revdir(served.tid + i)
    assert len(os.listdir(served.dir)) == 1 + 1000
    assert stat_int(served.mnt, 'revdirs') == 1000
    for i in (0, 500, 999):
        assert read_bytes(os.path.join(served.dir, '@' + hex16(served.tid + i), 'data')) == first
    wait_for(lambda: read_bytes(served.data) == served.f.read(), 10, 'head/data to follow')


def where(s, *names):
    """Paths in the mount of s by short names; 'revdir' is @<s.tid>, made here."""
    rd = os.path.join(s.dir, '@' + hex16(s.tid))
    if not os.path.isdir(rd):
        os.mkdir(rd)
    short = {'root': s.mnt.path, 'bigfile': s.path('bigfile'), 'oid': s.dir, 'revdir': rd,
             'head': os.path.join(s.dir, 'head')}
    out = []
    for name in names:
        first, _, rest = name.partition('/')
        base = short.get(first)
        out.append(os.path.join(base, rest) if base else s.path(name))
    return out


def test_mkdir_in_bigfile_dir_name_without_at_is_EPERM(served):
    for name in ('x', 'head2', '0000000000000001', hex16(served.tid), 'data'):
        assert errno_of(os.mkdir, os.path.join(served.dir, name)) == 'EPERM', name
    assert os.listdir(served.dir) == ['head']


def test_mkdir_elsewhere_is_EPERM(served):
    for parent in where(served, 'root', '.wcfs', 'head', 'revdir'):
        for name in ('x', '@' + hex16(served.tid), hex16(served.oid)):
            assert errno_of(os.mkdir, os.path.join(parent, name)) == 'EPERM', (parent, name)


def test_rmdir_is_EPERM(served):
    for path in where(served, 'bigfile', 'oid', 'head', 'revdir', '.wcfs'):
        assert errno_of(os.rmdir, path) == 'EPERM', path
        assert os.path.isdir(path)


def test_create_is_EPERM(served):
    for parent in where(served, 'root', '.wcfs', 'bigfile', 'oid', 'head', 'revdir'):
        path = os.path.join(parent, 'new')
        for flags in (os.O_CREAT | os.O_WRONLY, os.O_CREAT | os.O_EXCL | os.O_RDWR,
                      os.O_CREAT | os.O_RDONLY):
            assert errno_of(os.open, path, flags, 0o644) == 'EPERM', (path, flags)
        assert errno_of(os.mknod, path, 0o644 | stat.S_IFREG) == 'EPERM', path
        assert not os.path.exists(path)


def test_unlink_is_EPERM(served):
    for path in where(served, 'head/data', 'head/at', 'head/invalidations', '.wcfs/zurl',
                      '.wcfs/stats', '.wcfs/metrics', 'revdir/data'):
        assert errno_of(os.unlink, path) == 'EPERM', path
        assert os.path.exists(path)


def test_rename_is_EPERM(served):
    for src, dst in [('head/data', 'head/data2'), ('head/data', 'head/at'),
                     ('revdir/data', 'head/data'), ('revdir/data', 'revdir/data2'),
                     ('oid', 'bigfile/%016x' % NOT_THERE),
                     ('revdir', 'oid/@%016x' % (served.tid + 1)),
                     ('.wcfs/zurl', '.wcfs/url'), ('head', 'oid/head2')]:
        assert errno_of(os.rename, *where(served, src, dst)) == 'EPERM', (src, dst)
    assert sorted(os.listdir(os.path.join(served.dir, 'head'))) == \
        ['at', 'data', 'invalidations']
    assert sorted(os.listdir(served.dir)) == ['@' + hex16(served.tid), 'head']


def test_link_is_EPERM(served):
    for src in where(served, 'head/data', 'revdir/data', '.wcfs/zurl'):
        for dst in where(served, 'head/link', 'root/link', 'revdir/link'):
            assert errno_of(os.link, src, dst) == 'EPERM', (src, dst)
            assert not os.path.lexists(dst)


def test_symlink_is_EPERM(served):
    for parent in where(served, 'root', 'bigfile', 'oid', 'head', 'revdir'):
        path = os.path.join(parent, 'sym')
        assert errno_of(os.symlink, 'data', path) == 'EPERM', path
        assert not os.path.lexists(path)


def test_chmod_is_EPERM(served):
    for path in where(served, 'head/data', 'head/at', 'revdir/data', 'bigfile', 'oid',
                      '.wcfs/stats'):
        before = stat.S_IMODE(os.stat(path).st_mode)
        assert errno_of(os.chmod, path, 0o700) == 'EPERM', path
        assert stat.S_IMODE(os.stat(path).st_mode) == before


def test_truncate_is_EPERM(served):
    for path in where(served, 'head/data', 'head/at', 'revdir/data', '.wcfs/zurl'):
        size = os.stat(path).st_size
        assert errno_of(os.truncate, path, 0) == 'EPERM', path
        assert errno_of(os.truncate, path, size + 4096) == 'EPERM', path
        assert os.stat(path).st_size == size


def test_setxattr_is_EPERM(served):
    for path in where(served, 'head/data', 'revdir/data', 'oid', '.wcfs/zurl'):
        assert errno_of(os.setxattr, path, 'user.wcfs', b'1') == 'EPERM', path


def test_open_for_writing_is_EACCES(served):
    for path in where(served, 'head/data', 'head/at', 'revdir/data', '.wcfs/zurl',
                      '.wcfs/stats', '.wcfs/metrics'):
        before = read_bytes(path) if not path.endswith(('stats', 'metrics')) else None
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC,
                      os.O_WRONLY | os.O_APPEND):
            assert errno_of(os.open, path, flags) == 'EACCES', (path, flags)
        if before is not None:
            assert read_bytes(path) == before


def test_lookup_of_name_not_there_is_ENOENT(served):
    g, goid, _ = served.w.new_file(BS, {0: b'never made visible'})
    later = served.w.touch_other()
    names = ['root/nothing', '.wcfs/nothing', 'bigfile/xyz', 'bigfile/%016x' % NOT_THERE,
             'bigfile/%016x' % goid, 'oid/nothing', 'oid/@%016x' % later, 'oid/@x',
             'head/nothing', 'revdir/nothing', 'bigfile/%016x/head' % goid]
    for name, path in zip(names, where(served, *names)):
        assert errno_of(os.stat, path) == 'ENOENT', name
        assert errno_of(os.open, path, os.O_RDONLY) == 'ENOENT', name
        parent = os.path.dirname(path)
        if os.path.isdir(parent):
            assert os.path.basename(path) not in os.listdir(parent), name


def test_mkdir_bigfile_right_after_commit(database, wcfs_mount):
    # An object a client saw committed is in the database: mkdir finds it at once.
    mnt = wcfs_mount(database.zurl)
    w = Writer(database.db())
    for i in range(50):
        f, oid, _ = w.new_file(BS, {0: b'file %d' % i})
        try:
            os.mkdir(os.path.join(mnt.path, 'bigfile', hex16(oid)))
        except OSError as e:
            raise AssertionError('file %d: mkdir bigfile/%s right after its commit: %s'
                                 % (i, hex16(oid), errno.errorcode[e.errno])) from None
        assert read_bytes(os.path.join(mnt.path, 'bigfile', hex16(oid), 'head', 'data')) \
            == f.read()


# ---- layout: modes, listings, the one-line files, stats ----

def test_modes(served):
    rd = served.revdir(served.tid)
    want = {
        served.mnt.path: (stat.S_IFDIR, 0o555),
        served.path('.wcfs'): (stat.S_IFDIR, 0o555),
        served.path('.wcfs', 'zurl'): (stat.S_IFREG, 0o444),
        served.path('.wcfs', 'stats'): (stat.S_IFREG, 0o444),
        served.path('.wcfs', 'metrics'): (stat.S_IFREG, 0o444),
        served.path('bigfile'): (stat.S_IFDIR, 0o1777),
        served.dir: (stat.S_IFDIR, 0o1777),
        os.path.join(served.dir, 'head'): (stat.S_IFDIR, 0o555),
        os.path.join(served.dir, 'head', 'data'): (stat.S_IFREG, 0o444),
        os.path.join(served.dir, 'head', 'at'): (stat.S_IFREG, 0o444),
        os.path.join(served.dir, 'head', 'invalidations'): (stat.S_IFREG, 0o666),
        rd: (stat.S_IFDIR, 0o555),
        os.path.join(rd, 'data'): (stat.S_IFREG, 0o444),
    }
    got = {}
    for path in want:
        mode = os.stat(path).st_mode
        got[path] = (stat.S_IFMT(mode), stat.S_IMODE(mode))
    assert got == want


def test_listings(served):
    rd = served.revdir(served.tid)
    assert sorted(os.listdir(served.mnt.path)) == ['.wcfs', 'bigfile']
    assert sorted(os.listdir(served.path('.wcfs'))) == ['metrics', 'stats', 'zurl']
    assert sorted(os.listdir(served.dir)) == ['@' + hex16(served.tid), 'head']
    assert sorted(os.listdir(os.path.join(served.dir, 'head'))) == ['at', 'data', 'invalidations']
    assert os.listdir(rd) == ['data']


def test_ls_bigfile_lists_exactly_the_made_ones(database, wcfs_mount):
    w = Writer(database.db())
    oids = [w.new_file(BS, {0: b'file %d' % i})[1] for i in range(5)]
    mnt = wcfs_mount(database.zurl)
    bigfile = os.path.join(mnt.path, 'bigfile')
    assert os.listdir(bigfile) == []
    made = []
    for oid in (oids[3], oids[0], oids[4]):
        mnt.bigfile(oid)
        made.append(hex16(oid))
        assert sorted(os.listdir(bigfile)) == sorted(made)
    assert stat_int(mnt, 'bigfiles') == 3


def test_zurl_is_the_zurl_line(served):
    assert read_bytes(served.path('.wcfs', 'zurl')) == (masked(served.mnt.zurl) + '\n').encode()


SPEC_STATS = ['bigfiles', 'revdirs', 'channels', 'subscribed', 'reads', 'bytes_read',
              'blocks_loaded', 'invalidations_sent', 'clients_killed', 'zhead', 'uptime']


def test_stats_has_every_name_of_the_spec(served):
    s = stats(served.mnt)
    assert set(SPEC_STATS) <= set(s), set(SPEC_STATS) - set(s)
    assert s['zhead'] == hex16(served.tid)
    assert s['bigfiles'] == '1'
    assert s['revdirs'] == '0'
    for name in SPEC_STATS:
        if name != 'zhead':
            assert float(s[name]) >= 0, name
    served.revdir(served.tid)
    read_bytes(served.data)
    s2 = stats(served.mnt)
    assert s2['revdirs'] == '1'
    assert int(s2['bytes_read']) >= int(s['bytes_read']) + 4 * BS
    assert int(s2['reads']) > int(s['reads'])


def test_head_at_is_the_last_tid(served):
    text = read_bytes(os.path.join(served.dir, 'head', 'at'))
    assert text == b'%016x\n' % served.tid
    assert head_at(served.dir) == served.tid


@pytest.mark.parametrize('what', ['head/at', '.wcfs/zurl', '.wcfs/stats', '.wcfs/metrics'])
def test_uncached_file_st_size_is_its_content_length(served, what):
    path = os.path.join(served.dir, what) if what.startswith('head') else served.path(what)
    for _ in range(3):
        size = os.stat(path).st_size
        content = read_bytes(path)
        if what not in ('.wcfs/stats', '.wcfs/metrics') or size == len(content):
            break                   # stats may change between the stat and the read
    assert size == len(content) > 0


def test_head_at_read_at_0_through_an_earlier_open_is_current(served):
    at = os.path.join(served.dir, 'head', 'at')
    fd = os.open(at, os.O_RDONLY)
    try:
        old = b'%016x\n' % served.tid
        assert os.pread(fd, 5, 0) == old[:5]
        served.f.write_block(0, b'new')
        new = served.w.commit()
        wait_for(lambda: read_bytes(at) == b'%016x\n' % new, 10, 'head/at to show the commit')
        assert os.pread(fd, 100, 5) == old[5:]      # the rest of the content read at 0
        assert os.pread(fd, 100, 0) == b'%016x\n' % new
        assert os.pread(fd, 100, 17) == b''
    finally:
        os.close(fd)


def test_stats_read_at_0_through_an_earlier_open_is_current(served):
    path = served.path('.wcfs', 'stats')

    def bytes_read(text):
        return int(re.search(rb'^bytes_read: (\d+)$', text, re.M).group(1))

    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.pread(fd, 10, 0)
        read_bytes(served.data)
        now = read_bytes(path)
        rest = os.pread(fd, 1 << 16, 10)
        assert bytes_read(first + rest) + 4 * BS <= bytes_read(now)    # one content, not mixed
        assert bytes_read(os.pread(fd, 1 << 16, 0)) >= bytes_read(now)
    finally:
        os.close(fd)


# ---- data ----

MIXED = [  # (blk, data, kind): ZBlk0 and ZBlk1, full, short, holes in between
    (0, randbytes(0, BS), 'ZBlk0'),
    (2, randbytes(2, BS), 'ZBlk1'),
    (3, b'short ZBlk0 block', 'ZBlk0'),
    (4, randbytes(4, 3 * 4096) + bytes(8192) + randbytes(44, 100), 'ZBlk1'),
    (5, bytes(BS // 2) + randbytes(5, 10), 'ZBlk0'),
    (8, randbytes(8, BS - 1), 'ZBlk1'),
    (9, b'\xff' * 4096, 'ZBlk0'),
]


def mixed_file(database, wcfs_mount, py2str=False):
    def setup(f):
        for blk, data, kind in MIXED:
            f.write_block(blk, data, kind)
    return Served(database, wcfs_mount, blocks={}, py2str=py2str, setup=setup)


def expected_mixed():
    out = bytearray(10 * BS)
    for blk, data, _ in MIXED:
        out[blk * BS:blk * BS + len(data)] = data
    return bytes(out)


@pytest.mark.parametrize('py2str', [False, True], ids=['py3-bytes', 'py2-str'])
def test_data_shows_blocks_holes_and_short_blocks(database, wcfs_mount, py2str):
    s = mixed_file(database, wcfs_mount, py2str)
    want = expected_mixed()
    assert s.f.read() == want
    assert os.stat(s.data).st_size == 10 * BS
    assert read_bytes(s.data) == want
    for blk in (1, 6, 7):
        assert want[blk * BS:(blk + 1) * BS] == bytes(BS)


def test_data_of_py2str_file_with_every_byte_value(database, wcfs_mount):
    every = bytes(range(256)) * (BS // 256)
    s = Served(database, wcfs_mount, blocks={0: every, 1: every[::-1], 2: b'\x80\x81\xfe\xff'},
               py2str=True, setup=lambda f: f.write_block(3, every[1:], 'ZBlk1'))
    assert read_bytes(s.data) == every + every[::-1] + b'\x80\x81\xfe\xff'.ljust(BS, b'\0') \
        + every[1:] + b'\0'


def test_data_of_multi_bucket_blktab(database, wcfs_mount):
    bs = 4096
    blocks = {blk: b'%d ' % blk * (1 + blk % 300) for blk in range(260) if blk % 7 != 3}
    s = Served(database, wcfs_mount, blksize=bs, blocks=blocks)
    assert len(s.f.blktab.__getstate__()[0]) > 3      # more than one bucket
    want = s.f.read()
    assert len(want) == 260 * bs
    assert os.stat(s.data).st_size == 260 * bs
    assert read_bytes(s.data) == want
    for blk in (0, 7, 100, 258, 259):
        assert read_bytes(s.data)[blk * bs:(blk + 1) * bs] == \
            (blocks.get(blk, b'')).ljust(bs, b'\0')


def test_pread_at_odd_offsets_and_sizes(database, wcfs_mount):
    s = mixed_file(database, wcfs_mount)
    want = expected_mixed()
    size = len(want)
    rng = random.Random(1)
    cases = [(0, 1), (1, BS), (BS - 1, 2), (BS - 3, BS + 7), (3 * BS + 4095, 4097),
             (size - 1, 1), (size - 5, 100), (size - BS - 1, 10 * BS), (0, size + 1)]
    cases += [(rng.randrange(size), rng.randrange(1, 3 * BS)) for _ in range(60)]
    fd = os.open(s.data, os.O_RDONLY)
    try:
        for off, n in cases:
            assert os.pread(fd, n, off) == want[off:off + n], (off, n)
        os.lseek(fd, BS - 100, os.SEEK_SET)
        assert os.read(fd, 300) == want[BS - 100:BS + 200]
        assert os.read(fd, 5) == want[BS + 200:BS + 205]
    finally:
        os.close(fd)


def test_reads_past_eof_give_nothing(served):
    size = 4 * BS
    fd = os.open(served.data, os.O_RDONLY)
    try:
        assert os.pread(fd, 10, size) == b''
        assert os.pread(fd, 10, size + 1) == b''
        assert os.pread(fd, BS, 100 * BS) == b''
        assert os.pread(fd, 10, size - 3) == served.f.read()[-3:]
        os.lseek(fd, 0, os.SEEK_END)
        assert os.read(fd, 10) == b''
    finally:
        os.close(fd)


def test_mmap_reads_data(database, wcfs_mount):
    s = mixed_file(database, wcfs_mount)
    want = expected_mixed()
    with open(s.data, 'rb') as f:
        m = mmap.mmap(f.fileno(), len(want), mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        rng = random.Random(2)
        for _ in range(30):
            off = rng.randrange(len(want))
            n = rng.randrange(1, 2 * BS)
            assert m[off:off + n] == want[off:off + n]
        assert m[:] == want
    finally:
        m.close()


def test_size_is_end_of_the_last_block(database, wcfs_mount):
    s = Served(database, wcfs_mount, blocks={0: b'a', 9: b'z'})
    assert os.stat(s.data).st_size == 10 * BS
    data = read_bytes(s.data)
    assert data == b'a'.ljust(9 * BS, b'\0') + b'z'.ljust(BS, b'\0')


def test_empty_file_has_size_0(database, wcfs_mount):
    s = Served(database, wcfs_mount, blocks={})
    assert os.stat(s.data).st_size == 0
    assert read_bytes(s.data) == b''
    rd = s.revdir(s.tid)
    assert os.stat(os.path.join(rd, 'data')).st_size == 0


def test_mtime_is_the_time_of_the_tid(served):
    st = os.stat(served.data)
    assert abs(st.st_mtime - tid_time(served.tid)) < 1
    served.f.write_block(1, b'later')
    wait_for(lambda: time.time() > tid_time(served.tid) + 2, 5, 'the clock to move 2 s')
    tid2 = served.w.commit()
    wait_for(lambda: head_at(served.dir) == tid2, 10, 'head/at to move')
    assert abs(os.stat(served.data).st_mtime - tid_time(tid2)) < 1
    rd = served.revdir(served.tid)
    assert abs(os.stat(os.path.join(rd, 'data')).st_mtime - tid_time(served.tid)) < 1


@pytest.mark.parametrize('blksize, want', [(4096, 4096), (BS, BS), (2 * MiB, 2 * MiB),
                                           (12288, 8192), (3 * MiB, 2 * MiB)])
def test_st_blksize_is_blksize_or_the_power_of_two_below(database, wcfs_mount, blksize, want):
    s = Served(database, wcfs_mount, blksize=blksize, blocks={0: b'x', 1: b'y'})
    assert os.stat(s.data).st_blksize == want
    assert os.stat(os.path.join(s.revdir(s.tid), 'data')).st_blksize == want
    assert os.stat(s.data).st_size == 2 * blksize


# ---- @<tid>/: the file as of a transaction ----

def test_revdir_shows_data_as_of_its_tid(served):
    s = served
    history = [(s.tid, s.f.read())]

    def commit():
        history.append((s.w.commit(), s.f.read()))

    s.f.write_block(1, b'changed block 1')
    commit()
    s.f.write(BS - 10, b'across blocks 0 and 1', 'ZBlk1')
    commit()
    s.f.write_block(7, b'grown')
    commit()
    history.append((s.w.touch_other(), s.f.read()))
    s.f.delete_block(2)
    commit()
    s.f.truncate(2 * BS)
    commit()
    s.f.set_blksize(2 * BS)
    commit()
    s.f.write(3 * BS, b'after set_blksize')
    commit()
    # all differ but after touch_other and set_blksize, which keep the content
    assert len({data for _, data in history}) == len(history) - 2

    def check():
        for tid, want in history:
            path = os.path.join(s.dir, '@' + hex16(tid), 'data')
            assert os.stat(path).st_size == len(want), hex16(tid)
            assert read_bytes(path) == want, hex16(tid)

    for tid, _ in history:
        s.revdir(tid)
    check()
    for i in range(3):
        s.f.write_block(i, b'much later %d' % i)
        s.w.commit()
    s.f.replace_blktab()
    last = s.w.commit()
    wait_for(lambda: head_at(s.dir) == last, 10, 'head/at to move')
    check()
    wait_for(lambda: read_bytes(s.data) == s.f.read(), 10, 'head/data to follow')


# ---- @<tid>/ removal after --revdir-timeout ----

def test_unused_revdir_is_removed_and_can_be_made_again(database, wcfs_mount):
    s = Served(database, wcfs_mount, args=('--revdir-timeout', '1'))
    want = s.f.read()
    rd = s.revdir(s.tid)
    name = os.path.basename(rd)
    assert read_bytes(os.path.join(rd, 'data')) == want
    wait_for(lambda: name not in os.listdir(s.dir), 10, name + ' to be removed')
    assert errno_of(os.stat, rd) == 'ENOENT'
    assert errno_of(os.stat, os.path.join(rd, 'data')) == 'ENOENT'
    assert stat_int(s.mnt, 'revdirs') == 0
    os.mkdir(rd)
    assert name in os.listdir(s.dir)
    assert read_bytes(os.path.join(rd, 'data')) == want


@pytest.mark.parametrize('held', ['data', 'dir'])
def test_revdir_in_use_is_not_removed(database, wcfs_mount, held):
    s = Served(database, wcfs_mount, args=('--revdir-timeout', '1'))
    first = s.f.read()
    s.f.write_block(0, b'second revision')
    tid2 = s.w.commit()
    rd = s.revdir(s.tid)
    fd = os.open(os.path.join(rd, 'data') if held == 'data' else rd, os.O_RDONLY)
    opened = time.monotonic()
    try:
        other = s.revdir(tid2)          # made after the open: it expires no earlier than rd would
        wait_for(lambda: not os.path.exists(other), 10, 'the unused revdir to be removed')
        assert os.path.basename(rd) in os.listdir(s.dir)
        # A negative cannot be waited for: hold rd open ~3 s in all and look again.
        time.sleep(max(0.0, 3 - (time.monotonic() - opened)))
        assert os.path.basename(rd) in os.listdir(s.dir)
        assert read_bytes(os.path.join(rd, 'data')) == first
        if held == 'data':
            assert os.pread(fd, BS, 0) == first[:BS]
    finally:
        os.close(fd)
    wait_for(lambda: not os.path.exists(rd), 10, 'the revdir to be removed once closed')


# ---- malformed blocks ----

def _broken(kind, bs):
    if kind == 'ZBlk0-longer-than-blksize':
        return zbig.ZBlk0(b'x' * (bs + 1))
    zblk = zbig.ZBlk1()
    if kind == 'ZBlk1-overlapping-chunks':
        zblk.chunktab[0] = zbig.ZData(b'a' * 5000)
        zblk.chunktab[4096] = zbig.ZData(b'b' * 10)
    elif kind == 'ZBlk1-chunk-past-blksize':
        zblk.chunktab[bs - 4096] = zbig.ZData(b'c' * 4097)
    elif kind == 'ZBlk1-negative-offset':
        zblk.chunktab[-4096] = zbig.ZData(b'd' * 10)
    elif kind == 'not-a-block':
        return zbig.ZData(b'a chunk where a block should be')
    return zblk


@pytest.mark.parametrize('kind', ['ZBlk0-longer-than-blksize', 'ZBlk1-overlapping-chunks',
                                  'ZBlk1-chunk-past-blksize', 'ZBlk1-negative-offset',
                                  'not-a-block'])
def test_broken_block_is_EIO_and_other_blocks_read(database, wcfs_mount, kind):
    blocks = {blk: randbytes(blk, BS) for blk in range(8)}
    s = Served(database, wcfs_mount, blocks=blocks,
               setup=lambda f: f.blktab.__setitem__(3, _broken(kind, BS)))
    fd = os.open(s.data, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 8 * BS
        for _ in range(2):
            for blk in range(8):
                if blk == 3:
                    assert errno_of(os.pread, fd, BS, 3 * BS) == 'EIO'
                    assert errno_of(os.pread, fd, 100, 3 * BS + 5000) == 'EIO'
                else:
                    assert os.pread(fd, BS, blk * BS) == blocks[blk], blk
    finally:
        os.close(fd)
    assert s.mnt.proc.poll() is None
    assert hex16(s.oid) in s.mnt.log()
    s.f.write_block(3, b'repaired')
    tid = s.w.commit()
    wait_for(lambda: head_at(s.dir) == tid, 10, 'head/at to move')
    assert read_bytes(s.data) == s.f.read()     # block 3 was never cached: nothing stale
    assert read_bytes(s.path('.wcfs', 'zurl')) == (database.shown_zurl + '\n').encode()
