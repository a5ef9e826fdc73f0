"""The δ engine without a mount: commits into a database in, expected byte ranges out.

Each case writes a ZBigFile with wcfs_lib.zbig (ZBlk0 and ZBlk1 blocks,
state as Python 3 bytes and as Python 2 str) into a ZODB.DB on a
ZODB.MappingStorage.MappingStorage, commits a setup, then one or more
changes, and checks δR(setup, last) against SPEC §4.2: ranges half-open,
block aligned, sorted and merged; every touched block, no untouched one; the
ZBigFile object changed means one range from 0 to the larger size. A
MappingStorage keeps every revision of every object ({oid: {tid: record}}):
loadBefore answers for old revisions as a FileStorage does
(test_mapping_storage_keeps_old_revisions), so no file, ZEO or mount is
needed.

Both engines must give the expected ranges:

- `FileIndex.update`: one update per transaction, and one update for all of
  them (the union of their oids); each with and without the blocks read
  (`note_parts`, which registers the chunks of a ZBlk1) before each update;
  the index it leaves is the one loaded afresh at the last tid;
- `compare_revisions`: over each transaction, and over (setup, last] at once.

The oids a transaction modified are read back from `storage.iterator`.
"""

import threading
import tracemalloc

import pytest
from BTrees.LOBTree import LOBTree
from hypothesis import given, settings, strategies as st

from mappingdb import B, Database, oid_of
from wcfs_lib import zbig
from wcfs_lib.follow.delta import compare_revisions
from wcfs_lib.follow.fileindex import FileIndex
from wcfs_lib.follow.oidindex import OidIndex
from zhelp import block_bytes, index_mapping

PAGE = 4096     # every blksize wcfs serves is a multiple of it


@pytest.fixture(params=[False, True], ids=['py3', 'py2str'])
def db(request):
    database = Database(py2str=request.param)
    yield database
    database.close()


def blocks(*blks, blksize=B):
    """The ranges of single blocks, each on its own (they must not touch)."""
    return [(blk * blksize, (blk + 1) * blksize) for blk in blks]


# ---- the engines ----

def new_index(loader, oid, at):
    """A FileIndex with an OidIndex of its own, as mkdir makes one."""
    return FileIndex(loader, oid, at, OidIndex())


def update(index, tid, oids):
    """index.update as the watcher calls it: with the blocks the OidIndex finds."""
    return index.update(tid, oids, index.oidindex.touched(oids).get(index.fid, ()))


def read_blocks(loader, index):
    """Read every block as of index.at, as a read of head/data does: its parts get noted."""
    for blk, zblk in index_mapping(index).items():
        _data, oids = block_bytes(loader, zblk, index.at, index.head.blksize)
        index.note_parts(blk, oids)


def index_steps(loader, oid, at, steps, reads):
    """-> (δ of FileIndex, one update per transaction, the ranges merged; the index)."""
    index = new_index(loader, oid, at)
    ranges = []
    for tid, oids in steps:
        if reads:
            read_blocks(loader, index)
        ranges += update(index, tid, oids)
    return merge(ranges), index


def index_folded(loader, oid, at, steps, reads):
    """-> (δ of FileIndex, one update for the union of the transactions' oids; the index)."""
    index = new_index(loader, oid, at)
    if reads:
        read_blocks(loader, index)
    ranges = update(index, steps[-1][0], frozenset().union(*(oids for _, oids in steps)))
    return ranges, index


def compare_steps(loader, oid, at, steps):
    tids = [at] + [tid for tid, _ in steps]
    return merge(r for a, b in zip(tids, tids[1:]) for r in compare_revisions(loader, oid, a, b))


def merge(ranges):
    """Union of half-open ranges, sorted and merged (written here, not taken from delta)."""
    out = []
    for start, stop in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def deltas(db, oid, at, steps, reads=(False, True)):
    """-> {engine: ranges} of every engine over the transactions `steps` after `at`;
    also checks that the moved indexes are what loading afresh at the last tid gives."""
    loader = db.loader
    last = steps[-1][0]
    fresh = new_index(loader, oid, last)
    out = {}
    for read in reads:
        for name, engine in (('index per transaction', index_steps), ('index folded', index_folded)):
            ranges, index = engine(loader, oid, at, steps, read)
            out['%s%s' % (name, ', blocks read' if read else '')] = ranges
            assert (index.at, index_mapping(index), index.size, index.nodes.keys()) == \
                (last, index_mapping(fresh), fresh.size, fresh.nodes.keys()), (name, read)
    out['compare per transaction'] = compare_steps(loader, oid, at, steps)
    out['compare folded'] = compare_revisions(loader, oid, at, last)
    return out


def run(db, setup, changes, blksize=B):
    """Commit setup(f) on a new file, then each change(f) as its own transaction.

    -> (oid of f, setup tid, [(tid, oids)] of the changes)."""
    f = db.new_file(blksize)
    db.root['f'] = f
    setup(f)
    at, _ = db.commit()
    steps = []
    for change in changes:
        change(f)
        step = db.commit()
        assert step is not None, 'change %r wrote nothing' % change
        steps.append(step)
    return oid_of(f), at, steps


def assert_delta(db, setup, changes, expect, blksize=B, reads=(False, True)):
    oid, at, steps = run(db, setup, changes, blksize)
    got = deltas(db, oid, at, steps, reads)
    assert got == {engine: expect for engine in got}


def write_blocks(*blks, kind='ZBlk0'):
    """A setup: each block of blks holds its own number."""
    def setup(f):
        for blk in blks:
            f.write_block(blk, b'block %d' % blk, kind=kind)
    return setup


def test_mapping_storage_keeps_old_revisions(db):
    oid, at, steps = run(db, write_blocks(0), [lambda f: f.write_block(0, b'new')])
    loader = db.loader
    for tid, data in ((at, b'block 0'), (steps[0][0], b'new')):
        head = loader.zbigfile(oid, tid)
        block, _ = block_bytes(loader, loader.lookup(head, 0), tid, B)
        assert block == data.ljust(B, b'\0')


# ---- the table: SPEC §4.2 δR rules and ZBIGFILE.md ----

def test_zblk0_write_reports_its_block(db):
    assert_delta(db, write_blocks(0, 1, 2), [lambda f: f.write_block(1, b'\xffnew')],
                 blocks(1))


def test_zblk1_chunk_write_reports_its_block(db):
    data = bytes(range(256)) * 64                       # 4 chunks of 4096 in a 16 KiB block

    def setup(f):
        for blk in range(3):
            f.write_block(blk, data, kind='ZBlk1')

    def change(f):
        f.write_block(1, data[:5000] + b'\xfe' + data[5001:], kind='ZBlk1')

    assert_delta(db, setup, [change], blocks(1, blksize=4 * B), blksize=4 * B)


def test_zblk1_chunk_added_reports_its_block(db):
    assert_delta(db, write_blocks(0, 1, kind='ZBlk1'),
                 [lambda f: f.write_block(0, b'block 0'.ljust(3 * B, b'\0') + b'added',
                                          kind='ZBlk1')],
                 blocks(0, blksize=4 * B), blksize=4 * B)


def test_zblk1_chunk_removed_reports_its_block(db):
    def setup(f):
        f.write_block(0, b'x' * (4 * B), kind='ZBlk1')
        f.write_block(1, b'y', kind='ZBlk1')

    assert_delta(db, setup, [lambda f: f.write_block(0, b'x' * (3 * B), kind='ZBlk1')],
                 blocks(0, blksize=4 * B), blksize=4 * B)


def test_chunk_changed_alone_reports_its_block_once_read(db):
    """A ZData changed without its ZBlk1 (wendelin.core marks both, SPEC counts either)."""
    def change(f):
        zdata = f.blktab[1].chunktab[0]
        zdata.data = f._bytes(b'chunk changed alone')

    assert_delta(db, write_blocks(0, 1, 2, kind='ZBlk1'), [change],
                 blocks(1, blksize=2 * B), blksize=2 * B, reads=(True,))


def test_chunk_changed_alone_with_a_blktab_change_reports_its_block(db):
    def change(f):
        f.blktab[1].chunktab[0].data = f._bytes(b'chunk changed alone')
        f.write_block(5, b'block 5')

    assert_delta(db, write_blocks(0, 1, 2, kind='ZBlk1'), [change],
                 [(2 * B, 4 * B), (6 * B, 12 * B)], blksize=2 * B, reads=(True,))


def test_chunks_read_stay_registered_across_a_blktab_change(db):
    """A block read once (its pages stay in the kernel's cache) is still known by
    its chunks after a transaction changed another block's blktab entry."""
    def chunk_alone(f):
        f.blktab[1].chunktab[0].data = f._bytes(b'chunk changed alone')

    oid, at, steps = run(db, write_blocks(0, 1, 2, kind='ZBlk1'),
                         [lambda f: f.write_block(5, b'block 5'), chunk_alone])
    index = new_index(db.loader, oid, at)
    read_blocks(db.loader, index)
    assert [update(index, tid, oids) for tid, oids in steps] == [[(3 * B, 6 * B)], blocks(1)]


@pytest.mark.xfail(strict=True, reason='FileIndex knows the chunks of a ZBlk1 only once read: '
                   'it relies on ZBIGFILE.md "wendelin.core marks the ZBlk1 changed whenever '
                   'one of its chunks changes"')
def test_chunk_changed_alone_reports_its_block_unread(db):
    def change(f):
        f.blktab[1].chunktab[0].data = f._bytes(b'chunk changed alone')

    assert_delta(db, write_blocks(0, 1, 2, kind='ZBlk1'), [change],
                 blocks(1, blksize=2 * B), blksize=2 * B, reads=(False,))


def test_hole_filled_reports_its_block(db):
    assert_delta(db, write_blocks(0, 2), [lambda f: f.write_block(1, b'filled')], blocks(1))


def test_block_removed_becomes_a_hole(db):
    assert_delta(db, write_blocks(0, 1, 2, 3), [lambda f: f.delete_block(1)], blocks(1))


def test_last_block_removed_shrinks_past_the_holes_before_it(db):
    assert_delta(db, write_blocks(0, 3), [lambda f: f.delete_block(3)], [(B, 4 * B)])


def test_file_grows_by_one_block(db):
    assert_delta(db, write_blocks(0, 1), [lambda f: f.write_block(2, b'new')], blocks(2))


def test_sparse_growth_to_block_3000000_is_one_range(db):
    """ZBIGFILE.md: the cost of a change is its size; a set of the new block
    numbers alone would take over 100 MiB."""
    oid, at, steps = run(db, write_blocks(0), [lambda f: f.write_block(3_000_000, b'far')])
    tracemalloc.start()
    try:
        got = deltas(db, oid, at, steps)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == {engine: [(B, 3_000_001 * B)] for engine in got}
    assert peak < 8 << 20


def test_file_shrinks(db):
    assert_delta(db, write_blocks(0, 1, 2, 3, 4), [lambda f: f.truncate(2 * B)],
                 [(2 * B, 5 * B)])


def test_first_blocks_of_an_empty_file_appear(db):
    assert_delta(db, write_blocks(), [lambda f: f.write_block(1, b'one')], [(0, 2 * B)])


def bucket_of(tree):
    """{key: oid of the bucket that holds it} of a committed BTree."""
    out = {}
    bucket = tree._firstbucket
    while bucket is not None:
        out.update(dict.fromkeys(bucket.keys(), bucket._p_oid))
        bucket = bucket._next
    return out


def test_bucket_split_reports_only_the_inserted_blocks(db):
    kept = range(0, 800, 4)
    gaps = range(201, 500, 4)                           # three new blocks after each kept one
    before = {}

    def insert(f):
        before.update(bucket_of(f.blktab))
        for blk in gaps:
            for new in range(blk, blk + 3):
                f.write_block(new, b'inserted %d' % new)

    oid, at, steps = run(db, write_blocks(*kept), [insert])
    after = bucket_of(db.root['f'].blktab)
    assert len(set(after.values())) > len(set(before.values())) > 1
    assert any(after[blk] != before[blk] for blk in kept)      # entries moved to new buckets
    got = deltas(db, oid, at, steps)
    assert got == {engine: [(blk * B, (blk + 3) * B) for blk in gaps] for engine in got}


def test_bucket_emptied_reports_only_the_removed_blocks(db):
    removed = range(100, 250)

    def remove(f):
        for blk in removed:
            f.delete_block(blk)

    assert_delta(db, write_blocks(*range(300)), [remove], [(100 * B, 250 * B)])


def test_entry_pointed_to_another_existing_zblk_reports_its_block(db):
    def point(f):
        f.blktab[2] = f.blktab[0]

    assert_delta(db, write_blocks(0, 1, 2, 3), [point], blocks(2))


def test_zblk_shared_by_two_blocks_reports_both(db):
    def setup(f):
        write_blocks(0, 2, 3)(f)
        f.blktab[1] = f.blktab[3]

    assert_delta(db, setup, [lambda f: f.write_block(3, b'shared')], [(B, 2 * B), (3 * B, 4 * B)])


def test_block_kind_switched_reports_its_block(db):
    assert_delta(db, write_blocks(0, 1, 2), [lambda f: f.write_block(1, b'block 1', kind='ZBlk1')],
                 blocks(1))


def test_new_blksize_changes_the_whole_file(db):
    assert_delta(db, write_blocks(0, 1, 2), [lambda f: f.set_blksize(2 * B)], [(0, 4 * B)])


def test_new_blktab_changes_up_to_the_larger_of_the_sizes(db):
    def replace(f):
        f.replace_blktab()
        f.truncate(2 * B)

    assert_delta(db, write_blocks(0, 1, 4), [replace], [(0, 5 * B)])


def test_new_empty_blktab_changes_the_whole_old_file(db):
    def empty(f):
        f.blktab = LOBTree()

    assert_delta(db, write_blocks(0, 1, kind='ZBlk1'), [empty], [(0, 2 * B)])


def test_zbigfile_rewritten_as_it_was_changes_the_whole_file(db):
    def touch(f):
        f._p_changed = True

    assert_delta(db, write_blocks(0, 2), [touch], [(0, 3 * B)])


def test_transaction_touching_another_object_reports_nothing(db):
    def other(f):
        g = db.root['other'] = db.new_file()
        g.write_block(0, b'other file')

    def other_again(f):
        db.root['other'].write_block(1, b'other file')

    assert_delta(db, write_blocks(0, 1), [other, other_again], [])


def test_two_transactions_folded_report_the_union(db):
    assert_delta(db, write_blocks(0, 1, 2, 3, 4, 5),
                 [lambda f: f.write_block(1, b'one'), lambda f: f.write_block(4, b'four', kind='ZBlk1')],
                 blocks(1, 4))


def test_folded_with_a_transaction_of_another_object_reports_the_file_only(db):
    def other(f):
        db.root['other'] = 1

    assert_delta(db, write_blocks(0, 1, 2), [lambda f: f.write_block(0, b'zero'), other],
                 blocks(0))


@pytest.mark.parametrize('kind', zbig.KINDS)
def test_zblk_rewritten_with_identical_content_is_touched(db, kind):
    def rewrite(f):
        f.blktab[1]._p_changed = True

    assert_delta(db, write_blocks(0, 1, 2, kind=kind), [rewrite], blocks(1))


def test_zblk0_rewritten_by_write_block_with_identical_content_is_touched(db):
    assert_delta(db, write_blocks(0, 1, 2), [lambda f: f.write_block(1, b'block 1')], blocks(1))


# ---- FileIndex and compare_revisions agree on random histories ----

BLK = st.integers(0, 11)
OPS = st.one_of(
    st.tuples(st.just('write'), BLK, st.integers(0, B - 1), st.binary(min_size=1, max_size=40),
              st.sampled_from(zbig.KINDS)),
    st.tuples(st.just('rewrite'), st.integers(0, 99)),
    st.tuples(st.just('delete'), BLK),
    st.tuples(st.just('truncate'), BLK),
    st.tuples(st.just('point'), BLK, st.integers(0, 99)),
    st.tuples(st.just('blksize'), st.integers(1, 3), st.sampled_from(zbig.KINDS)),
    st.tuples(st.just('replace_blktab')),
    st.tuples(st.just('other')),
    st.tuples(st.just('chunk alone'), st.integers(0, 99), st.binary(min_size=1, max_size=8)),
)


def apply(db, f, op):
    """Do op on f (or on another object): one transaction's worth of change.

    'rewrite', 'point' and 'chunk alone' take the n-th existing block (modulo
    their number), so that they hit one more often than a random number would."""
    name, *args = op
    if name == 'write':
        blk, off, data, kind = args
        buf = bytearray(f.read_block(blk))
        buf[off:off + len(data)] = data
        f.write_block(blk, bytes(buf[:f.blksize]), kind=kind, chunk=1024)
    elif name == 'rewrite':
        zblk = nth(list(f.blktab.values()), args[0])
        if zblk is not None:
            zblk._p_changed = True
    elif name == 'delete':
        f.delete_block(args[0])
    elif name == 'truncate':
        f.truncate(args[0] * f.blksize)
    elif name == 'point':
        zblk = nth(list(f.blktab.values()), args[1])
        if zblk is not None:
            f.blktab[args[0]] = zblk
    elif name == 'blksize':
        f.set_blksize(args[0] * B, kind=args[1])
    elif name == 'replace_blktab':
        f.replace_blktab()
    elif name == 'other':
        db.root['other'] = db.root.get('other', 0) + 1
    elif name == 'chunk alone':                         # not as wendelin.core writes
        zblk = nth([z for z in f.blktab.values() if isinstance(z, zbig.ZBlk1) and z.chunktab],
                   args[0])
        if zblk is not None:
            zblk.chunktab[zblk.chunktab.minKey()].data = args[1]


def nth(items, n):
    return items[n % len(items)] if items else None


def pages(ranges):
    """The set of 4 KiB pages that ranges cover, checking they are well formed (SPEC §4.1)."""
    assert all(start < stop and start % PAGE == 0 == stop % PAGE for start, stop in ranges), ranges
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:])), ('not sorted and merged', ranges)
    return {p for start, stop in ranges for p in range(start // PAGE, stop // PAGE)}


def block_pages(blk, blksize):
    return set(range(blk * blksize // PAGE, (blk + 1) * blksize // PAGE))


def touched_pages(loader, oid, a, b, oids):
    """δR(a, b) of one transaction as SPEC §4.2 words it, as pages: the blocks whose
    entry, ZBlk or chunks (as of a or b) the transaction modified, the pages that
    appear or disappear with the size; everything when the ZBigFile changed."""
    ha, hb = loader.zbigfile(oid, a), loader.zbigfile(oid, b)
    size_a, size_b = loader.size(ha), loader.size(hb)
    if oid in oids:
        return set(range(max(size_a, size_b) // PAGE))
    map_a, map_b = mapping(loader, ha), mapping(loader, hb)
    out = set(range(min(size_a, size_b) // PAGE, max(size_a, size_b) // PAGE))
    for blk in map_a.keys() | map_b.keys():
        za, zb = map_a.get(blk), map_b.get(blk)
        if za != zb or (parts(loader, za, a, hb.blksize) | parts(loader, zb, b, hb.blksize)) & oids:
            out |= block_pages(blk, hb.blksize)
    return out


def mapping(loader, head):
    return dict(loader.walk(head.blktab, head.at))


def parts(loader, zblk, at, blksize):
    return set(block_bytes(loader, zblk, at, blksize)[1])


def differing_pages(old, new):
    """Pages whose bytes differ between two contents, those past the shorter included."""
    n, short = max(len(old), len(new)), min(len(old), len(new))
    old, new = old.ljust(n, b'\0'), new.ljust(n, b'\0')
    return {p for p in range(n // PAGE) if old[p * PAGE:(p + 1) * PAGE] != new[p * PAGE:(p + 1) * PAGE]
            or p * PAGE >= short}


@settings(max_examples=30, deadline=None)
@given(setup=st.lists(OPS, max_size=6), history=st.lists(OPS, min_size=1, max_size=8))
def test_fileindex_agrees_with_compare_revisions_on_random_histories(setup, history):
    """Per transaction, every engine gives exactly the touched blocks; folded, the
    engines agree, hold every block whose content differs and only touched ones.
    A chunk changed alone is known to the index once its block was read only."""
    reads = (True,) if any(op[0] == 'chunk alone' for op in history) else (False, True)
    db = Database()
    try:
        f = db.root['f'] = db.new_file()
        for op in setup:
            apply(db, f, op)
        at, _ = db.commit()
        oid = oid_of(f)
        contents = [f.read()]
        steps = []
        for op in history:
            apply(db, f, op)
            step = db.commit()
            if step is not None:
                steps.append(step)
                contents.append(f.read())
        if not steps:
            return
        tids = [at] + [tid for tid, _ in steps]
        each = []
        for a, (b, oids) in zip(tids, steps):
            got = deltas(db, oid, a, [(b, oids)], reads)
            expect = touched_pages(db.loader, oid, a, b, oids)
            assert {engine: pages(r) for engine, r in got.items()} == {engine: expect for engine in got}
            each.append(expect)
        got = deltas(db, oid, at, steps, reads)
        assert len({tuple(got[engine]) for engine in got if 'folded' in engine}) == 1, got
        assert len({tuple(got[engine]) for engine in got if 'per transaction' in engine}) == 1, got
        assert pages(got['compare per transaction']) == set().union(*each)
        folded = pages(got['compare folded'])
        assert differing_pages(contents[0], contents[-1]) <= folded <= set().union(*each)
    finally:
        db.close()


class PausingLock:
    """A FileIndex's parts_lock that stops the thread taking it for the
    `n`-th time until `go` is set (`paused` says it got there)."""

    def __init__(self, n):
        self._lock = threading.Lock()
        self._n = n
        self._count = 0
        self.paused = threading.Event()
        self.go = threading.Event()

    def __enter__(self):
        self._count += 1
        if self._count == self._n:
            self.paused.set()
            self.go.wait(30)
        self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()


def test_delta_since_during_an_update_sees_one_revision_of_the_index(db):
    """Suspicion (issue 15, 6b), confirmed: delta_since reads head, nodes,
    size and `at` with no lock while the watcher's update() moves them in
    two steps (blktab and size, then `at`). Paused in between (where update
    takes parts_lock the second time: after the diff of blktab, dropping
    the parts of the blocks that moved), δR(a, at) must be the one of the
    revision it says: here a block appended in (a, t0] and removed at t1
    vanished from δR(a, t0) when blktab as of t1 was mixed in."""
    f = db.new_file()
    f.write_block(0, b'zero')
    f.write_block(1, b'one')
    db.root['f'] = f
    a, _ = db.commit()
    f.write_block(2, b'appended')         # a new entry in blktab, and a larger size
    t0, changed = db.commit()
    index = new_index(db.loader, oid_of(f), t0)
    want = index.delta_since(a, changed)
    assert want == (t0, blocks(2))
    del f.blktab[2]                       # and gone again
    t1, oids = db.commit()

    index.parts_lock = PausingLock(2)
    updating = threading.Thread(target=update, args=(index, t1, oids))
    updating.start()
    try:
        assert index.parts_lock.paused.wait(30), 'update() never took parts_lock twice'
        got = index.delta_since(a, changed)
    finally:
        index.parts_lock.go.set()
        updating.join(30)
    assert got == want, 'δR(a, t0) mid-update: %r' % (got,)
    assert index.at == t1 and index.delta_since(a, changed | oids) == (t1, [])
