"""zstorage/mvcc.py Pool on a real RelStorage (the postgres fixture): close()
releases every instance, also one lent out at the time (given back later):
its database sessions end."""

from devtools.procs import wait_for
from wcfs_lib.zodb.zstorage import mvcc


def sessions(postgres):
    """Client sessions on the fixture's database, as PostgreSQL counts them."""
    return postgres.cluster.sql('SELECT count(*) FROM pg_stat_activity WHERE datname = %s',
                                postgres.dbname)[0][0]


def test_close_releases_the_instances_lent_out(postgres):
    storage = postgres.cluster.storage(postgres.dbname)
    try:
        base = sessions(postgres)
        pool = mvcc.Pool(storage.new_instance, 2)
        lent = pool.take(10)
        lent.poll()             # it opens its sessions
        idle = pool.take(10)
        idle.poll()
        pool.give_back(idle)
        assert sessions(postgres) > base
        pool.close()            # while `lent` is lent out
        pool.give_back(lent)
        wait_for(lambda: sessions(postgres) == base, 10,
                 'the sessions of the pool to end (%d of them before)' % base)
    finally:
        storage.close()
