"""The zeo fixture: a ZEO server that takes commits, and that can be stopped and started again."""

import transaction

from devtools.procs import accepts, wait_for


def commit(db, key, value):
    """Commit root[key] = value through db; return the new last transaction."""
    conn = db.open()
    try:
        conn.root()[key] = value
        transaction.commit()
    finally:
        conn.close()
    return db.storage.lastTransaction()


def test_commit_moves_lastTransaction(zeo):
    db = zeo.db()
    assert zeo.db() is db
    before = db.storage.lastTransaction()
    tid = commit(db, 'x', 1)
    assert tid > before
    assert commit(db, 'x', 2) > tid
    assert zeo.zurl == 'zeo://127.0.0.1:%d' % zeo.addr[1]


def test_stop_start_same_port_and_file(zeo):
    db = zeo.db()
    tid = commit(db, 'x', 1)

    zeo.stop()
    assert not accepts(zeo.addr)
    wait_for(lambda: not db.storage.is_connected(), what='the client to see the server gone')

    zeo.start()
    wait_for(db.storage.is_connected, 20, 'the client to reconnect')
    assert db.storage.lastTransaction() == tid  # same Data.fs
    assert commit(db, 'x', 2) > tid
    assert 'terminated by SIGTERM' in zeo.log
