"""The database fixtures: zeo and postgres take commits the same way, keep their
data over stop() and start(), and the PostgreSQL clusters leave nothing
running behind them."""

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import transaction
import ZODB
import zodburi
from ZODB.POSException import StorageError
from ZODB.utils import p64, u64

from devtools.pgcluster import PGServer
from devtools.procs import accepts, wait_for
from devtools.wcfsproc import ROOT
from wcfs_lib import zbig
from devtools.pgcluster import PostgresCluster, PostgresError

BLKSIZE = 4096
BLOCKS = {0: b'a' * BLKSIZE, 3: b'xyz'}


def write_bigfile(db):
    """Commit root['f'] = a ZBigFile of BLOCKS; -> (its oid, the commit's tid)."""
    conn = db.open()
    try:
        f = zbig.ZBigFile(BLKSIZE)
        for blk, data in BLOCKS.items():
            f.write_block(blk, data)
        conn.root()['f'] = f
        transaction.commit()
        return f._p_oid, f._p_serial
    finally:
        conn.close()


def read_blocks(db, oid):
    """{blk: data} of the ZBigFile oid, the trailing zeros of ZBlk0 stripped."""
    conn = db.open()
    try:
        f = conn.get(oid)
        return {blk: zblk.data.rstrip(b'\0') for blk, zblk in f.blktab.items()}
    finally:
        transaction.abort()
        conn.close()


def processes_using(path):
    """Pids of the processes whose command line names path."""
    pids = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if os.fsencode(str(path)) in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_database_commit_stop_start_keeps_data(database):
    db = database.db()
    assert database.db() is db
    oid, tid = write_bigfile(db)
    assert database.last_transaction() == tid
    assert read_blocks(db, oid) == BLOCKS

    database.stop()
    assert not accepts(database.addr)
    database.start()
    assert accepts(database.addr)

    # the same client reconnects; the data was kept
    database.wait_reconnected()
    assert read_blocks(db, oid) == BLOCKS
    assert database.last_transaction() == tid
    oid2, tid2 = write_bigfile(db)
    assert oid2 != oid and tid2 > tid
    assert database.last_transaction() == tid2


def test_database_zurl_opens_the_same_database(database):
    oid, tid = write_bigfile(database.db())
    factory, _ = zodburi.resolve_uri(database.zurl)
    db = ZODB.DB(factory())
    try:
        assert read_blocks(db, oid) == BLOCKS
    finally:
        db.close()


def test_wcfs_serves_the_database(database, wcfs_mount):
    oid, tid = write_bigfile(database.db())
    mnt = wcfs_mount(database.zurl)
    with open(os.path.join(mnt.path, '.wcfs', 'zurl')) as f:
        assert f.read() == database.shown_zurl + '\n'
    head = os.path.join(mnt.bigfile(oid), 'head')
    with open(os.path.join(head, 'at')) as f:
        assert f.read() == '%016x\n' % u64(tid)
    with open(os.path.join(head, 'data'), 'rb') as f:
        data = f.read()
    assert data == b''.join(BLOCKS.get(blk, b'').ljust(BLKSIZE, b'\0')
                            for blk in range(max(BLOCKS) + 1))


def test_postgres_zurl_and_log(postgres):
    host, port = postgres.addr
    assert postgres.zurl == 'postgres://wcfs:%s@127.0.0.1:%d/%s' % (
        postgres.cluster.password, port, postgres.dbname)
    assert postgres.shown_zurl == 'postgres://wcfs:***@127.0.0.1:%d/%s' % (port, postgres.dbname)
    assert postgres.cluster.password not in postgres.shown_zurl
    postgres.stop()
    assert 'received fast shutdown request' in postgres.log
    assert postgres.cluster.proc.returncode == 0
    postgres.start()


def test_postgres_zconfig_through_the_socket(postgres):
    oid, tid = write_bigfile(postgres.db())
    zurl = postgres.zconfig(socket=True)
    text = open(zurl[len('zconfig://'):]).read()
    assert f"host='{postgres.dir}'" in text and 'create-schema false' in text
    factory, _ = zodburi.resolve_uri(zurl)
    db = ZODB.DB(factory())
    try:
        assert read_blocks(db, oid) == BLOCKS
    finally:
        db.close()


def test_postgres_reader_role_reads_and_cannot_write(postgres):
    oid, tid = write_bigfile(postgres.db())
    reader = postgres.cluster.add_reader(postgres.dbname)
    factory, _ = zodburi.resolve_uri(postgres.zconfig(user=reader, read_only=True))
    storage = factory()
    try:
        assert storage.isReadOnly()
        assert storage.loadBefore(oid, p64(u64(tid) + 1))[1] == tid
    finally:
        storage.close()

    # the role itself is read-only, whatever its client says
    writable = postgres.cluster.storage(postgres.dbname, user=reader, create_schema=False)
    db = ZODB.DB(writable)
    try:
        conn = db.open()
        conn.root()['x'] = 1
        with pytest.raises(Exception, match='permission denied'):
            transaction.commit()
        transaction.abort()
        conn.close()
    finally:
        db.close()
    assert 'permission denied for table' in postgres.log


def test_postgres_history_free(postgres_history_free):
    server = postgres_history_free
    assert server.zurl.endswith('/%s?keep_history=false' % server.dbname)
    oid, tid = write_bigfile(server.db())
    factory, _ = zodburi.resolve_uri(server.zurl)
    storage = factory()
    try:
        assert storage.keep_history is False
        assert storage.load(oid)[1] == tid
    finally:
        storage.close()

    # a history-preserving client is refused by RelStorage itself
    factory, _ = zodburi.resolve_uri(server.zconfig(keep_history=True))
    with pytest.raises(StorageError, match='history-free database'):
        factory()


def test_second_cluster_beside_and_nothing_left_after(postgres):
    cluster = PostgresCluster()
    cluster.databases_made = set()
    other = None
    try:
        cluster.start()
        other = PGServer(cluster, 'other')
        assert other.addr != postgres.addr and other.dir != postgres.dir
        oid, tid = write_bigfile(other.db())
        assert other.last_transaction() == tid
        assert postgres.last_transaction() != tid   # its own database
        pid = other.cluster.proc.pid
        assert processes_using(other.cluster.datadir) == [pid]
    finally:
        if other is not None:
            other.close()
        cluster.destroy()
    assert other.cluster.proc.returncode == 0      # a clean fast shutdown
    assert processes_using(other.cluster.datadir) == []
    assert not other.dir.exists()
    assert not accepts(other.addr)
    assert accepts(postgres.addr)                   # the first one still serves


def test_destroy_stops_a_server_that_was_never_stopped():
    cluster = PostgresCluster()
    try:
        cluster.start()
        pid = cluster.proc.pid
        # the server's own processes (checkpointer, ...) are its children
        wait_for(lambda: len(children(pid)) >= 2, what=f'postgres {pid} to start its workers')
        workers = children(pid)
    finally:
        cluster.destroy()
    assert not cluster.running
    assert not alive(pid)
    wait_for(lambda: not any(map(alive, workers)),
             what=f'the workers {workers} of postgres {pid} to exit')
    assert not cluster.dir.exists()


STARTER = """
import sys, time
from devtools.pgcluster import PostgresCluster, PostgresError
cluster = PostgresCluster()
cluster.start()
print(cluster.proc.pid, cluster.dir, flush=True)
time.sleep(60)
"""


def test_server_ends_when_its_starter_is_killed():
    starter = subprocess.Popen([sys.executable, '-c', STARTER], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    dir = None
    try:
        pid, dir = starter.stdout.readline().split()
        pid = int(pid)
        assert processes_using(dir) == [pid]
        wait_for(lambda: len(children(pid)) >= 2, what=f'postgres {pid} to start its workers')
        server = [pid, *children(pid)]
        starter.send_signal(signal.SIGKILL)     # no stop(), no destroy()
        starter.wait()
        wait_for(lambda: not any(map(alive, server)), 30,
                 f'postgres {pid} and its workers to exit after their starter was killed')
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        starter.stdout.close()
        if dir is not None:
            shutil.rmtree(dir, ignore_errors=True)


def test_first_start_takes_another_port_a_restart_does_not():
    cluster = PostgresCluster()
    try:
        with socket.create_server((cluster.host, cluster.port)):
            taken = cluster.port
            cluster.start()                 # the first start moves on
            assert cluster.port != taken
        port = cluster.port
        cluster.stop()
        with socket.create_server((cluster.host, port)):
            with pytest.raises(PostgresError, match='could not bind'):
                cluster.start()             # its port is the database's address now
        assert cluster.port == port
        cluster.start()
        assert cluster.sql('SELECT 1') == [(1,)]
    finally:
        cluster.destroy()


def test_cluster_start_fails_with_the_log():
    cluster = PostgresCluster()
    try:
        (cluster.datadir / 'postgresql.conf').write_text('no_such_setting = 1\n')
        with pytest.raises(PostgresError, match='no_such_setting') as e:
            cluster.start()
        assert str(cluster.dir) in str(e.value)
        assert not cluster.running
    finally:
        cluster.destroy()


def alive(pid):
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rpartition(')')[2].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def children(pid):
    """Pids of the children of pid."""
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []
