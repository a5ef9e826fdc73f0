"""zstorage/mvcc.py Pool counts the waits for an instance (.wcfs/metrics
wcfs_db_pool_waits_total, wcfs_db_pool_wait_seconds_total): a take that
finds one free is no wait; one that waits is counted with its time, also
when it gives up."""

import threading
import time

import pytest

from devtools.procs import wait_for
from wcfs_lib.zodb.zstorage import mvcc


def test_a_free_instance_is_no_wait():
    pool = mvcc.Pool(object, 2)
    a, b = pool.take(1), pool.take(1)
    pool.give_back(a)
    pool.take(1)
    assert pool.waits() == (0, 0.0)
    pool.give_back(b)


def test_a_wait_for_an_instance_is_counted_with_its_time():
    pool = mvcc.Pool(object, 1)
    lent = pool.take(1)
    got = []
    taker = threading.Thread(target=lambda: got.append(pool.take(10)))
    start = time.monotonic()
    taker.start()
    try:
        # threading.Condition's own list of waiters: the taker is in its wait
        wait_for(lambda: len(pool._cond._waiters) == 1, 10, 'the taker to wait')
        assert not got
    finally:
        pool.give_back(lent)
        taker.join(10)
    took = time.monotonic() - start
    assert got == [lent]
    waits, seconds = pool.waits()
    assert waits == 1
    assert 0 < seconds <= took


def test_a_wait_that_gives_up_is_counted():
    pool = mvcc.Pool(object, 1)
    pool.take(1)
    with pytest.raises(mvcc.PoolBusy):
        pool.take(0.05)
    waits, seconds = pool.waits()
    assert waits == 1 and 0.05 <= seconds < 5
