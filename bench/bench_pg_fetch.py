"""Fetching block records from PostgreSQL: the ways a Python reader can, one
reader, one record after another (no ratio against wcfs; issue 18 chose
wcfs's way by these figures, and they show it still holds).

Every way reads the records of every block of one ZBigFile (2 MiB ZBlk0s of
random bytes) of a RelStorage database in a private cluster, by (zoid, tid),
on a connection of its own; each checks the length of what it got.

    psycopg2 text     cursor.execute + bytes(): what RelStorage's loadBefore
                      does (hex on the wire, decoded, copied)
    psycopg2 COPY     COPY (SELECT ...) TO STDOUT (FORMAT binary) through
                      copy_expert: binary, one copy into a Python bytes
    psycopg 3         its binary results, where it is installed (Debian 12's
                      python3-psycopg is its pure-Python build)
    libpq binary      wcfs's way (pqbinary.py): libpq's binary results on
                      psycopg2's own PGconn, a view of the row's buffer

Printed: MiB/s (best of 3 alternating runs) and CPU seconds of this process
per GiB, and libpq binary / psycopg2 text.

    python bench/bench_pg_fetch.py [--size MiB]
"""

import resource
import time

import psycopg2

import common
from common import MiB
from wcfs_lib.zodb.zstorage import pqbinary

RUNS = 3
_BY_KEY = 'SELECT state FROM object_state WHERE zoid = %s AND tid = %s'


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def psycopg2_text(dsn, keys):
    conn = psycopg2.connect(dsn)
    try:
        cursor = conn.cursor()
        n = 0
        for key in keys:
            cursor.execute(_BY_KEY, key)
            n += len(bytes(cursor.fetchone()[0]))
        return n
    finally:
        conn.close()


class _Pieces:
    """A file for copy_expert: keeps what it is given."""

    def __init__(self):
        self.pieces = []

    def write(self, data):
        self.pieces.append(data)


COPY_HEADER = 19            # signature, flags, header extension length
COPY_ROW = 2 + 4            # field count, field length
COPY_TRAILER = 2


def psycopg2_copy(dsn, keys):
    conn = psycopg2.connect(dsn)
    try:
        cursor = conn.cursor()
        n = 0
        for zoid, tid in keys:
            out = _Pieces()
            cursor.copy_expert('COPY (SELECT state FROM object_state WHERE zoid = %d AND tid = %d)'
                               ' TO STDOUT (FORMAT binary)' % (zoid, tid), out)
            n += sum(map(len, out.pieces)) - COPY_HEADER - COPY_ROW - COPY_TRAILER
        return n
    finally:
        conn.close()


def psycopg3(dsn, keys):
    import psycopg
    with psycopg.connect(dsn) as conn:
        cursor = conn.cursor(binary=True)
        n = 0
        for key in keys:
            cursor.execute(_BY_KEY, key)
            n += len(cursor.fetchone()[0])
        return n


def libpq_binary(dsn, keys):
    conn = psycopg2.connect(dsn)
    try:
        n = 0
        for key in keys:
            [[state]] = pqbinary.query(conn, _BY_KEY, key, (pqbinary.BYTEA,))
            n += len(state)
        return n
    finally:
        conn.close()


def have_psycopg3():
    try:
        import psycopg   # noqa: F401
    except ImportError:
        return False
    return True


def main():
    args = common.parse_args(__doc__.splitlines()[0], default_size=512)
    size = args.size * MiB
    ways = [('psycopg2 text', psycopg2_text), ('psycopg2 COPY', psycopg2_copy),
            ('libpq binary', libpq_binary)]
    if have_psycopg3():
        import psycopg
        ways.insert(2, ('psycopg 3 (%s)' % psycopg.pq.__impl__, psycopg3))
    with common.Bench('pg fetch', db='postgres') as b:
        b.write_bigfile(size)
        b.close_db()
        dsn = b.cluster.dsn(common.PG_DBNAME)
        keys = b.cluster.sql('SELECT zoid, tid FROM object_state WHERE octet_length(state) > %s'
                             ' ORDER BY zoid', common.BLKSIZE // 2, dbname=common.PG_DBNAME)
        pqbinary.load()
        best, cpu = {}, {}
        for run in range(RUNS):
            for name, fetch in ways:
                c0, t0 = cpu_seconds(), time.perf_counter()
                n = fetch(dsn, keys)
                t, c = time.perf_counter() - t0, cpu_seconds() - c0
                assert n >= size, '%s: %d bytes of records, want at least %d' % (name, n, size)
                speed = common.mibps(n, t)
                print('run %d %-24s %6.0f MiB/s  %5.2f CPU s/GiB' % (run + 1, name, speed,
                                                                     c * (1 << 30) / n))
                if speed > best.get(name, 0):
                    best[name], cpu[name] = speed, c * (1 << 30) / n
    for name, _ in ways:
        print('  %-24s %6.0f MiB/s  %5.2f CPU s/GiB' % (name, best[name], cpu[name]))
    print('pg fetch: %d records of %d MiB, one reader: libpq binary %.0f MiB/s, psycopg2 text '
          '%.0f MiB/s: ratio %.2f; kernel %s'
          % (len(keys), common.BLKSIZE // MiB, best['libpq binary'], best['psycopg2 text'],
             best['libpq binary'] / best['psycopg2 text'], common.kernel()))


if __name__ == '__main__':
    main()
