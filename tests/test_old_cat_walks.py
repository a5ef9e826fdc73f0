"""Old-Cat wants on a ZEO server with its defaults (issue 15, item 5, and the
"two walks at once" item of 6).

A `want <Cat>` for a Cat older than a file's δ history needs the oids that
the transactions in (Cat, head] changed. A ZEO server at its defaults lists
only its last 100 transactions itself: for an older Cat wcfs walks the
server's iterator, which ships every record of those transactions. Such
walks must not hold up the wants of other channels that need no walk, must
be shared where their history overlaps, must not ship the same history
twice, and must stop once nobody waits for them.

A walk is made to last as long as the test needs by stopping the ZEO server
(SIGSTOP) while it runs: a want that needs no database is answered all the
same, and nothing else is.
"""

import os
import random
import signal
import threading
import time

import pytest
from ZODB.utils import p64

from chanhelp import Chan, NoReply, ranges_of
from devtools.procs import wait_for
from wcfs_lib import zbig
from wcfs_lib.zodb.zstorage import Cancelled, Records, zeo_burst
from wcfs_lib.zodb.zstorage.base import transactions_from_iterator
from wcfs_lib.zodb.zstorage.walks import Walks
from zhelp import KiB, Writer, head_at, stat_int

BS = 4 * KiB
NBLK = 16
TXNS = 300          # transactions after Cat: more than the 100 ZEO lists itself
ATTACKERS = 32


class History:
    """A file of NBLK blocks, then TXNS transactions each changing one
    block; `tids[i]`: the tid after i of them (tids[0]: Cat of the oldest
    want), `changed[i]`: the block transaction i+1 changed."""

    def __init__(self, db, seed=15):
        rng = random.Random(seed)
        self.w = Writer(db)
        f = zbig.ZBigFile(BS)
        for blk in range(NBLK):
            f.write_block(blk, os.urandom(BS))
        self.oid, tid = self.w.add(f)
        self.tids, self.changed = [tid], []
        for _ in range(TXNS):
            blk = rng.randrange(NBLK)
            f.write_block(blk, os.urandom(BS))
            self.tids.append(self.w.commit())
            self.changed.append(blk)
        self.head = self.tids[-1]

    def ranges_since(self, i):
        """The ranges of δR(tids[i], head)."""
        return ranges_of(set(self.changed[i:]), BS)


class Stopped:
    """The ZEO server stopped (SIGSTOP) for the `with`, always continued after."""

    def __init__(self, zeo):
        self.pid = zeo.proc.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


class PChan(Chan):
    """A channel used from several threads at once: pwrite and pread, which
    the kernel does not serialize on one open file (SPEC 4.6)."""

    def send(self, line):
        os.pwrite(self.fd, line.encode() + b'\n', 0)

    def _fill(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = os.pread(self.fd, 1 << 16, 0)
            except BlockingIOError:
                data = None
            if data:
                self._buf += data
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def written(chans, lines):
    """Write lines[i] on chans[i], each from a thread of its own (a write
    may block); -> the threads."""
    threads = [threading.Thread(target=ch.send, args=(line,), daemon=True)
               for ch, line in zip(chans, lines)]
    for t in threads:
        t.start()
    return threads


def replied(ch):
    """Whether `ch` has a reply pending (without taking it)."""
    return bool(ch._buf) or ch._fill(0)


@pytest.mark.timeout(180)
def test_want_needing_no_walk_is_answered_while_old_cat_walks_wait(zeo, wcfs_mount):
    """32 channels want Cats 300 to 270 transactions back, in a random
    order, while the server is stopped: their walks wait; a want of head on
    another channel of the file is answered all the same. Once the server
    goes on, each old-Cat want gets exactly δR(Cat, head), from at most two
    walks (the first want's, and one back to the oldest Cat asked by then);
    wanting them all again walks nothing more."""
    h = History(zeo.db())
    mnt = wcfs_mount(zeo.zurl)
    fdir = mnt.bigfile(h.oid)
    assert head_at(fdir) == h.head
    cats = random.Random(1).sample(range(ATTACKERS), ATTACKERS)
    attackers = [PChan(fdir) for _ in cats]
    victim = PChan(fdir)
    try:
        with Stopped(zeo):
            threads = written(attackers, ['want %016x' % h.tids[i] for i in cats])
            threads += written([victim], ['want %016x' % h.head])
            try:
                have = victim.have(timeout=20)
            except NoReply:
                have = None     # the server goes on first: the threads end
            else:
                assert not any(replied(ch) for ch in attackers), \
                    'an old-Cat want was answered while the server was stopped'
        assert have is not None, 'want <head> was not answered while old-Cat walks waited'
        assert (have.tid, have.wait, have.ranges) == (h.head, False, [])
        for t in threads:
            t.join(60)
            assert not t.is_alive(), 'a write of an old-Cat want did not return'
        for i, ch in zip(cats, attackers):
            have = ch.have(timeout=60)
            assert (have.tid, have.wait) == (h.head, False)
            assert have.ranges == h.ranges_since(i), 'want %016x' % h.tids[i]
        walks, walked = stat_int(mnt, 'history_walks'), stat_int(mnt, 'history_walked')
        assert 1 <= walks <= 2, '%d walks for %d wants' % (walks, ATTACKERS)
        assert walked == TXNS, '%d transactions walked, %d in the history' % (walked, TXNS)

        # the same wants again: answered from what was walked
        for i, ch in zip(cats, attackers):
            ch.ack()
            have = ch.want(h.tids[i])
            assert have.ranges == h.ranges_since(i)
        assert stat_int(mnt, 'history_walks') == walks
        assert stat_int(mnt, 'history_walked') == walked
    finally:
        for ch in attackers + [victim]:
            ch.close()


@pytest.mark.timeout(180)
def test_old_cat_want_of_a_closed_channel_walks_nothing(zeo, wcfs_mount):
    """A want 300 transactions back, its channel closed while the server is
    stopped: once the server goes on, nothing is walked for it (SPEC 4.6:
    its processing stops once its channel is gone); a later want 150 back
    walks those 150 alone."""
    h = History(zeo.db())
    mnt = wcfs_mount(zeo.zurl)
    fdir = mnt.bigfile(h.oid)
    opened = stat_int(mnt, 'channels')
    with Stopped(zeo):
        ch = PChan(fdir)
        for t in written([ch], ['want %016x' % h.tids[0]]):
            t.join(20)
            assert not t.is_alive(), 'a write of an old-Cat want waited for the server'
        ch.close()
        wait_for(lambda: stat_int(mnt, 'channels') == opened, 20, 'the channel to be released')
    with PChan(fdir) as other:
        have = other.want(h.tids[150])
        assert (have.tid, have.ranges) == (h.head, h.ranges_since(150))
    assert stat_int(mnt, 'history_walked') == TXNS - 150
    assert stat_int(mnt, 'history_walks') == 1


def go_on():
    return True


def walked(storage, a, b):
    """{tid: oids} of (a, b], the storage's iterator walked alone."""
    return transactions_from_iterator(storage.iterator, a, b, go_on)


def in_threads(*fns):
    """Run each fn in a thread of its own; -> their results (each must end
    within 60 s and not raise)."""
    out = [None] * len(fns)

    def run(i, fn):
        try:
            out[i] = ('ok', fn())
        except BaseException as e:
            out[i] = ('raised', e)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), 'a thread did not end within 60 s'
    for kind, value in out:
        if kind == 'raised':
            raise value
    return [value for _, value in out]


@pytest.mark.timeout(180)
def test_two_walks_of_zeo_iterator_at_once_are_exact_and_loads_are_answered(zeo, zeo_client):
    """The decision of zeo.py (ZEODatabase.walk): two walks at once on one
    ClientStorage, the bursts and the slow way, each in a thread, give
    exactly what the iterator gives alone, and loads from a third thread
    are answered meanwhile."""
    h = History(zeo.db())
    a, b = h.tids[0], h.head
    alone = walked(zeo_client, a, b)
    assert len(alone) == TXNS
    done = threading.Event()
    loads = []

    def load():
        while not done.is_set():
            before = h.tids[len(loads) % len(h.tids)] + 1
            loads.append(zeo_client._call('loadBefore', p64(h.oid), p64(before)))
        return len(loads)

    def both():
        try:
            return in_threads(lambda: zeo_burst.walk(zeo_client, a, b, go_on),
                              lambda: walked(zeo_client, a, b))
        finally:
            done.set()

    (burst, slow), nloads = in_threads(both, load)
    assert burst == alone
    assert slow == alone
    assert nloads == len(loads) and all(r is not None for r in loads)


@pytest.mark.timeout(180)
def test_requests_at_once_share_one_walk(zeo, zeo_client):
    """Requests of overlapping ranges made while a walk waits for the
    server: each gets exactly its oids, and no transaction is walked twice;
    asked again, nothing is walked."""
    h = History(zeo.db())
    records = Records(zeo_client)
    ranges = [(h.tids[i], h.tids[j]) for i, j in [(0, TXNS), (10, TXNS), (5, 200), (250, 290)]]
    expect = [set().union(*walked(zeo_client, a, b).values()) for a, b in ranges]
    asks = [lambda a=a, b=b: records.changed_oids(a, b) for a, b in ranges]
    results = []
    walks = records.walks
    with Stopped(zeo):
        asking = threading.Thread(target=lambda: results.append(in_threads(*asks)), daemon=True)
        asking.start()
        # every request waits: one for the server, the others for its walk
        wait_for(lambda: len(walks._waiting) == len(ranges), 20, 'the requests to wait')
    asking.join(60)
    assert results, 'the requests did not end'
    assert results[0] == expect
    assert walks.walked == TXNS
    n = walks.walks
    assert 1 <= n <= len(ranges)
    assert [records.changed_oids(a, b) for a, b in ranges] == expect
    assert (walks.walks, walks.walked) == (n, TXNS)


@pytest.mark.timeout(180)
def test_walked_history_is_kept_within_its_bound(zeo, zeo_client):
    """Past its bound, the oldest walked transactions are forgotten: a
    request for the newest is answered from what is kept, one for the
    oldest walks only what was forgotten."""
    h = History(zeo.db())
    records = Records(zeo_client)
    bound = 16 * 200 + 8 * 200         # about 200 transactions of one oid each
    walks = records.walks = Walks(records.database.walk, max_bytes=bound)
    a, b = h.tids[0], h.head
    assert records.changed_oids(a, b) == set().union(*walked(zeo_client, a, b).values())
    assert walks.kept_bytes() <= bound
    assert walks.walked == TXNS
    newest = h.tids[TXNS - 150]
    assert records.changed_oids(newest, b) == set().union(*walked(zeo_client, newest, b).values())
    assert walks.walked == TXNS
    assert records.changed_oids(a, b) == set().union(*walked(zeo_client, a, b).values())
    assert TXNS < walks.walked < 2 * TXNS


@pytest.mark.timeout(180)
def test_a_walk_nobody_waits_for_stops(zeo, zeo_client):
    """keep_going() turning false stops a walk at its next burst, with
    Cancelled; the next walk is exact (the server closed what the first
    left open)."""
    h = History(zeo.db())
    a, b = h.tids[0], h.head
    asked = []

    def for_a_while():
        asked.append(1)
        return len(asked) < 3

    with pytest.raises(Cancelled):
        zeo_burst.walk(zeo_client, a, b, for_a_while)
    assert len(asked) == 3
    assert zeo_burst.walk(zeo_client, a, b, go_on) == walked(zeo_client, a, b)
