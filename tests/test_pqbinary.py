"""wcfs's record queries in PostgreSQL's binary format (issue 18, pqbinary.py),
on a real cluster, against what RelStorage itself loads:

- a record read in binary is the bytes, serial and next revision that
  RelStorage's loadBefore gives, as the text fallback does; bounded loads
  refuse a record over the bound and say a missing one is missing;
- a record is a view of its own row's buffer: it stays valid after
  everything else of the query is gone, and the row is freed with it; a
  prefetch's answer holds at most its bound of records;
- a query the server refuses leaves the connection usable (its aborted
  transaction is replaced before the next use); a connection the server
  ended is said to be lost, and the next use gets a new one.
"""

import gc
import os
import weakref

import psycopg2
import pytest
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from zhelp import Writer
from wcfs_lib.zodb.zstorage import pqbinary
from wcfs_lib.zodb.zstorage.base import RecordTooLarge, is_disconnect
from wcfs_lib.zodb.zstorage.mvcc import MVCCDatabase

KiB = 1 << 10
MiB = 1 << 20
BLKSIZE = 2 * MiB


@pytest.fixture
def opened(postgres):
    """open(binary) -> an MVCCDatabase on the postgres fixture's database, one
    connection for loads (each test sees the instance it spoiled), wcfs's
    way of reading records forced to binary or text; closed after."""
    dbs = []

    def open_(binary=True):
        storage = postgres.cluster.storage(postgres.dbname, read_only=True, create_schema=False)
        db = MVCCDatabase(storage, connections=1, timeout=30)
        dbs.append(db)
        assert db.binary, 'libpq cannot be had through psycopg2 here'
        db.binary = binary
        return db
    try:
        yield open_
    finally:
        for db in dbs:
            db.close()


@pytest.fixture
def written(postgres):
    """A ZBigFile whose blocks are records of many sizes, then a commit that
    changes one: -> (writer's storage, [zblk oids], tid1, tid2)."""
    w = Writer(postgres.db())
    blocks = {0: b'', 1: b'x' * 100, 2: os.urandom(64 * KiB), 3: os.urandom(BLKSIZE),
              4: bytes(BLKSIZE)}
    f, _, tid1 = w.new_file(BLKSIZE, blocks)
    f.write_block(2, os.urandom(4 * KiB))
    tid2 = w.commit()
    zblks = [u64(zblk._p_oid) for zblk in f.blktab.values()]
    return postgres.db().storage, zblks, tid1, tid2


def reference(storage, oid, at):
    """(data, serial, end) as RelStorage loads it."""
    data, serial, end = storage.loadBefore(p64(oid), p64(at + 1))
    return bytes(data), serial, end


def test_records_read_in_binary_are_relstorages(opened, written):
    storage, zblks, tid1, tid2 = written
    binary, text = opened(True), opened(False)
    for at in (tid1, tid2):
        for oid in zblks:
            want = reference(storage, oid, at)
            for db in (binary, text):
                data, serial, end = db.load_bounded(p64(oid), p64(at + 1), False, False, 4 * MiB)
                assert (bytes(data), serial, end) == want, (oid, at, db.binary)
            assert isinstance(data, bytes)                  # text: copied out
    data = binary.load_bounded(p64(zblks[3]), p64(tid2 + 1), False, False, 4 * MiB)[0]
    assert isinstance(data, memoryview) and not data.readonly   # BlockData takes its address


def test_bounded_loads_refuse_what_they_must(opened, written):
    storage, zblks, tid1, tid2 = written
    db = opened()
    big = zblks[3]
    size = len(reference(storage, big, tid2)[0])
    with pytest.raises(RecordTooLarge) as e:
        db.load_bounded(p64(big), p64(tid2 + 1), False, False, size - 1)
    assert e.value.size == size
    assert len(db.load_bounded(p64(big), p64(tid2 + 1), False, False, size)[0]) == size
    with pytest.raises(POSKeyError):
        db.load_bounded(p64(max(zblks) + 1000), p64(tid2 + 1), False, False, MiB)
    with pytest.raises(POSKeyError):                        # before the object existed
        db.load_bounded(p64(big), p64(tid1), False, False, 4 * MiB)


def test_prefetched_records_are_relstorages(opened, written):
    storage, zblks, tid1, tid2 = written
    db = opened()
    small = [oid for oid in zblks if len(reference(storage, oid, tid1)[0]) < MiB]
    assert len(small) >= 3
    for at in (tid1, tid2):
        db.prefetch(small, at)
        for oid in small:
            r = db._ahead.take(p64(oid), p64(at + 1))
            assert r is not None, 'oid %016x @%016x was not prefetched' % (oid, at)
            assert (bytes(r[0]), r[1], r[2]) == reference(storage, oid, at)


def test_a_record_keeps_its_row_and_only_while_it_lives(opened, written):
    storage, zblks, tid1, tid2 = written
    db = opened()
    big = zblks[3]
    data = db.load_bounded(p64(big), p64(tid2 + 1), False, False, 4 * MiB)[0]
    row = weakref.ref(data.obj.owner)
    gc.collect()
    assert row() is not None
    assert bytes(data) == reference(storage, big, tid2)[0]
    del data
    gc.collect()
    assert row() is None, 'the row of a record nobody holds is not freed'


def test_a_refused_query_spoils_nothing(opened, written):
    storage, zblks, tid1, tid2 = written
    db = opened()
    with db._instance('test') as inst:
        inst.at_least(tid2)
        with pytest.raises(pqbinary.QueryFailed, match='division by zero'):
            db._records(inst, 'SELECT 1 / %s', (0,), (pqbinary.INT4,))
        assert not is_disconnect(pqbinary.QueryFailed('x'))
        assert inst.tid == -1           # its snapshot is gone: polled before the next use
    oid = zblks[2]
    data, serial, end = db.load_bounded(p64(oid), p64(tid1 + 1), False, False, MiB)
    assert (bytes(data), serial, end) == reference(storage, oid, tid1)


def test_a_connection_ended_by_the_server_is_lost_then_replaced(opened, written, postgres):
    storage, zblks, tid1, tid2 = written
    db = opened()
    oid = zblks[1]
    with db._instance('test') as inst:
        inst.at_least(tid2)
        backend = inst.storage._load_connection.connection.get_backend_pid()
    ended = postgres.cluster.sql('SELECT pg_terminate_backend(%s)', backend, dbname=postgres.dbname)
    assert ended == [(True,)]
    with pytest.raises(Exception) as e:
        db.load_bounded(p64(oid), p64(tid2 + 1), False, False, MiB)
    assert is_disconnect(e.value), repr(e.value)
    data, serial, end = db.load_bounded(p64(oid), p64(tid2 + 1), False, False, MiB)
    assert (bytes(data), serial, end) == reference(storage, oid, tid2)


def test_only_plain_psycopg2_is_queried_through_libpq():
    class Gevent:
        __name__ = 'gevent psycopg2'
    with pytest.raises(pqbinary.Unavailable, match='gevent psycopg2'):
        pqbinary.check(Gevent())
    conn_class = psycopg2.extensions.connection
    assert hasattr(conn_class, 'pgconn_ptr')


def test_an_answer_holds_no_more_than_its_bound(opened, written):
    """A prefetch of many large records (a writer may make every node of a
    tree nearly as large as PREFETCH_RECORD) keeps what fits and drops the
    rest as it comes; the connection serves the next query."""
    storage, zblks, tid1, tid2 = written
    db = opened()
    query = ('SELECT zoid, state FROM object_state WHERE zoid = ANY(%s::bigint[]) AND tid = %s'
             ' ORDER BY zoid')
    kinds = (pqbinary.INT8, pqbinary.BYTEA)
    big = sorted(oid for oid in zblks if len(reference(storage, oid, tid1)[0]) > 32 * KiB)
    assert len(big) == 2            # 64 KiB and 2 MiB
    with db._instance('test') as inst:
        inst.at_least(tid2)
        conn = inst.storage._load_connection.connection
        assert [oid for oid, _ in pqbinary.query(conn, query, (big, tid1), kinds)] == big
        kept = pqbinary.query(conn, query, (big, tid1), kinds, max_bytes=32 * KiB)
        assert [oid for oid, _ in kept] == big[:1]
        assert pqbinary.query(conn, 'SELECT %s::bigint', (7,), (pqbinary.INT8,)) == [[7]]
