"""Writing raw records as any database writer may (bad ones too), for tests
and benchmarks of what wcfs does with them."""

from ZODB.Connection import TransactionMetaData
from ZODB.utils import p64, u64


def raw_store(storage, records):
    """Commit raw records {oid: data} in one transaction; -> its tid."""
    t = TransactionMetaData()
    storage.tpc_begin(t)
    for oid, data in records.items():
        serial = storage.loadBefore(p64(oid), p64(u64(storage.lastTransaction()) + 1))[1]
        storage.store(p64(oid), serial, data, '', t)
    storage.tpc_vote(t)
    storage.tpc_finish(t)
    return u64(storage.lastTransaction())
