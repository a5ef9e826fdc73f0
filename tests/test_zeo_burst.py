"""zeo_burst: the oids each transaction in (a, b] changed, from a real ZEO
server in bursts of calls, against the storage's iterator walked one call at
a time."""

import transaction
from persistent.mapping import PersistentMapping
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64

from devtools.pgcluster import last_transaction
from wcfs_lib.zodb.zstorage import zeo_burst
from wcfs_lib.zodb.zstorage.base import transactions_from_iterator


def commit_many(db, n, seed):
    """n transactions, each changing a few of 20 objects; -> their tids."""
    conn = db.open()
    root = conn.root()
    if 'objs' not in root:
        root['objs'] = [PersistentMapping() for _ in range(20)]
        transaction.commit()
    tids = []
    for i in range(n):
        for k in range(1 + (i + seed) % 3):
            root['objs'][(i * 7 + k * 3 + seed) % 20]['x'] = (i, k, seed)
        transaction.commit()
        tids.append(u64(last_transaction(db)))
    conn.close()
    return tids


def go_on():
    return True


def iterated(storage, a, b):
    return transactions_from_iterator(storage.iterator, a, b, go_on)


def burst(storage, a, b):
    return zeo_burst.walk(storage, a, b, go_on)


def test_burst_lists_what_the_iterator_lists(zeo, zeo_client):
    tids = commit_many(zeo.db(), 40, seed=1)
    for a, b in [(tids[0], tids[-1]), (tids[5], tids[20]), (tids[38], tids[39]),
                 (tids[10], tids[10])]:
        assert burst(zeo_client, a, b) == iterated(zeo_client, a, b), (a, b)
    # more transactions than a burst and a page hold
    tids += commit_many(zeo.db(), zeo_burst.PAGE + 30, seed=2)
    a, b = tids[3], tids[-2]
    assert burst(zeo_client, a, b) == iterated(zeo_client, a, b)


def test_past_a_pack_it_gives_way_to_the_iterator(zeo, zeo_client):
    tids = commit_many(zeo.db(), 10, seed=3)
    zeo.db().pack(TimeStamp(p64(tids[-1])).timeTime() + 0.001)   # after every one of them
    tids += commit_many(zeo.db(), 10, seed=4)
    # undoLog stops at the packed transactions: (tids[2], ...] is not all listed
    assert burst(zeo_client, tids[2], tids[-1]) is None
    a = tids[12]
    assert burst(zeo_client, a, tids[-1]) == iterated(zeo_client, a, tids[-1])
