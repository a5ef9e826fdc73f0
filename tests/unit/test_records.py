"""zstorage.Records without a server: its count of database requests
(.wcfs/stats db_requests) is exact when many threads ask at once."""

import sys
import threading

import pytest
from ZODB.MappingStorage import MappingStorage

from wcfs_lib.zodb import zstorage

THREADS = 8
ASKS = 20000


@pytest.fixture
def fast_switching():
    """Switch threads as often as CPython allows, so that a lost update shows."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_requests_are_counted_exactly_under_threads(fast_switching):
    records = zstorage.Records(MappingStorage())
    start = threading.Barrier(THREADS)

    def ask():
        start.wait()
        for _ in range(ASKS):
            records.record(0, 1)
            records.last_tid()

    threads = [threading.Thread(target=ask) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert records.requests == 2 * THREADS * ASKS
