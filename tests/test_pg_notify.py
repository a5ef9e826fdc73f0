"""wcfs told of commits by PostgreSQL (issue 18, item 2): with the trigger of
sql/wcfs-notify.sql, LISTEN/NOTIFY instead of polling; without it, or once
it is gone, polling, and never a transaction missed in between.

Where the tests want to show that wcfs was told, --db-poll-interval is 60 s:
only a notification, or the safety net's last-tid check after a second of
silence (which then falls back to polling, and says so), explains following
within the 10 s a test waits. Each test subscribes a channel before its
commits and checks that every commit comes as a `have` of its own tid, in
order (none missed, none folded).
"""

import os
import select

import psycopg2
import pytest

from chanhelp import Chan, ranges_of
from devtools.pgcluster import NOTIFY_REMOVE_SQL, NOTIFY_SQL, PostgresCluster
from devtools.procs import wait_for
from zhelp import Writer, debug_knobs, read_bytes, wait_head

BS = 64 * 1024
NEVER = '60'            # --db-poll-interval that no test waits for
NOTICED = 10            # seconds for the safety net (1 s, and 1 s of grace) to notice


def block(tag):
    return (tag.encode() * BS)[:BS]


def install(postgres):
    postgres.cluster.psql_file(NOTIFY_SQL, postgres.dbname)


def remove(postgres):
    postgres.cluster.psql_file(NOTIFY_REMOVE_SQL, postgres.dbname)


def triggers(postgres):
    return postgres.cluster.sql(
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'transaction'::regclass "
        "AND NOT tgisinternal", dbname=postgres.dbname)


def following(mnt):
    """The mode .wcfs/metrics shows: 'told' or 'polling'."""
    text = read_bytes(os.path.join(mnt.path, '.wcfs', 'metrics')).decode()
    on = [line.split('"')[1] for line in text.splitlines()
          if line.startswith('wcfs_following{') and line.endswith(' 1')]
    assert len(on) == 1, text
    return on[0]


def listening_pids(postgres):
    """Server pids of the listening connections to the test's database."""
    return {pid for pid, in postgres.cluster.sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'wcfs-listen' "
        "AND datname = %s", postgres.dbname)}


class Follower:
    """A file, a wcfs on it with a subscribed channel, and a writer."""

    def __init__(self, postgres, wcfs_mount, *args):
        self.w = Writer(postgres.db())
        self.f, self.oid, tid = self.w.new_file(BS, {blk: block('v0 %d' % blk)
                                                     for blk in range(4)})
        self.mnt = wcfs_mount(postgres.zurl, *args)
        self.fdir = self.mnt.bigfile(self.oid)
        self.ch = Chan(self.fdir)
        self.ch.subscribe(tid)
        self.step = 0

    def commit_and_follow(self, timeout=10):
        """Commit a change of one block; its `have` comes alone, with its tid
        and range, and head/at and head/data move to it."""
        self.step += 1
        blk = self.step % 4
        self.f.write_block(blk, block('v%d %d' % (self.step, blk)))
        tid = self.w.commit()
        have = self.ch.have(timeout)
        assert (have.tid, have.ranges) == (tid, ranges_of({blk}, BS)), have
        self.ch.ack()
        wait_head(self.fdir, tid, timeout)
        assert read_bytes(os.path.join(self.fdir, 'head', 'data')) == self.f.read()
        return tid

    def close(self):
        self.ch.close()


@pytest.fixture
def follower(postgres, wcfs_mount):
    made = []

    def make(*args):
        made.append(Follower(postgres, wcfs_mount, *args))
        return made[-1]
    yield make
    for f in made:
        f.close()


def test_the_sql_file_applied_twice_is_one_trigger_and_removed_twice_none(postgres):
    install(postgres)
    install(postgres)
    assert triggers(postgres) == [('wcfs_notify', 'O')]
    remove(postgres)
    remove(postgres)
    assert triggers(postgres) == []
    assert postgres.cluster.sql("SELECT 1 FROM pg_proc WHERE proname = 'wcfs_notify'",
                                dbname=postgres.dbname) == []


def test_the_trigger_notifies_the_tid_of_each_commit_at_commit(postgres):
    install(postgres)
    w = Writer(postgres.db())       # the root object committed before LISTEN
    conn = psycopg2.connect(postgres.cluster.dsn(postgres.dbname))
    try:
        conn.autocommit = True
        conn.cursor().execute('LISTEN wcfs')
        tids = [w.new_file(BS, {0: block('n%d' % i)})[2] for i in range(3)]
        got = []

        def heard():
            if select.select([conn], [], [], 0.1)[0]:
                conn.poll()
            got.extend(n.payload for n in conn.notifies)
            del conn.notifies[:]
            return len(got) >= len(tids)
        wait_for(heard, 10, 'three notifications')
        assert got == [str(tid) for tid in tids]
    finally:
        conn.close()


def test_with_the_trigger_wcfs_is_told_and_follows_every_commit(postgres, follower):
    install(postgres)
    fw = follower('--db-poll-interval', NEVER)
    wait_for(lambda: following(fw.mnt) == 'told', 10, '.wcfs/metrics to say told')
    assert 'told of commits by the database' in fw.mnt.log()
    assert len(listening_pids(postgres)) == 1
    for _ in range(5):
        fw.commit_and_follow()
    # not found by the safety net's last-tid check (which would fall back to polling)
    assert following(fw.mnt) == 'told'
    assert 'no notification told of it' not in fw.mnt.log()


def test_without_the_trigger_wcfs_polls_as_before(postgres, follower):
    fw = follower()
    for _ in range(3):
        fw.commit_and_follow()
    assert following(fw.mnt) == 'polling'
    assert 'no trigger wcfs_notify' in fw.mnt.log()
    assert listening_pids(postgres) == set()    # no connection of its own


@pytest.mark.parametrize('how', ['dropped', 'disabled'])
def test_a_trigger_gone_while_serving_is_noticed_and_nothing_is_missed(postgres, follower, how):
    install(postgres)
    fw = follower('--db-poll-interval', NEVER)
    fw.commit_and_follow()
    assert following(fw.mnt) == 'told'     # a commit followed within 10 s: told
    if how == 'dropped':
        remove(postgres)
    else:
        postgres.cluster.sql('ALTER TABLE transaction DISABLE TRIGGER wcfs_notify',
                             dbname=postgres.dbname)
    fw.commit_and_follow(timeout=NOTICED)      # found by the safety net, not by a poll in 60 s
    assert following(fw.mnt) == 'polling'
    assert 'no notification told of it' in fw.mnt.log()
    wait_for(lambda: listening_pids(postgres) == set(), 10, 'the listening connection closed')


def test_the_listening_connection_killed_is_replaced_and_nothing_is_missed(
        postgres, follower, monkeypatch):
    install(postgres)
    monkeypatch.setenv('WCFS_DEBUG', debug_knobs('listen-retry-interval=1'))
    fw = follower('--db-poll-interval', '0.5')
    wait_for(lambda: following(fw.mnt) == 'told', 10, '.wcfs/metrics to say told')
    fw.commit_and_follow()
    pids = listening_pids(postgres)
    assert len(pids) == 1 and following(fw.mnt) == 'told'
    postgres.cluster.sql('SELECT pg_terminate_backend(%s)', pids.pop())
    fw.commit_and_follow()      # perhaps while wcfs finds out: polled at once then
    wait_for(lambda: 'polling: the listening connection' in fw.mnt.log(), 10,
             'wcfs to notice that its listening connection was killed')
    new = wait_for(lambda: listening_pids(postgres), 10, 'a new listening connection')
    assert len(new) == 1
    wait_for(lambda: following(fw.mnt) == 'told', 10, 'wcfs told again')
    for _ in range(3):
        fw.commit_and_follow()


def test_on_a_standby_wcfs_polls_though_the_trigger_is_there(postgres, wcfs_mount):
    """A hot standby has the primary's catalog, trigger and all, but refuses
    LISTEN (and replays commits without firing triggers)."""
    install(postgres)
    w = Writer(postgres.db())
    f, oid, tid = w.new_file(BS, {0: block('s0')})
    standby = PostgresCluster(standby_of=postgres.cluster)
    mnt = None
    try:
        standby.start()
        last = 'SELECT max(tid) FROM transaction'
        wait_for(lambda: standby.sql(last, dbname=postgres.dbname) == [(tid,)], 30,
                 'the standby to replay %016x' % tid)
        mnt = wcfs_mount(standby.zurl(postgres.dbname), '--db-poll-interval', '0.2')
        fdir = mnt.bigfile(oid)
        f.write_block(0, block('s1'))
        tid = w.commit()
        wait_head(fdir, tid, timeout=30)
        assert read_bytes(os.path.join(fdir, 'head', 'data')) == f.read()
        assert following(mnt) == 'polling'
        assert 'the server is a standby' in mnt.log()
    finally:
        if mnt is not None:
            mnt.cleanup()
        standby.destroy()


def test_a_server_restart_costs_no_transaction_and_wcfs_is_told_again(postgres, follower):
    install(postgres)
    fw = follower('--db-poll-interval', NEVER, '--db-timeout', '2')
    wait_for(lambda: following(fw.mnt) == 'told', 10, '.wcfs/metrics to say told')
    fw.commit_and_follow()
    postgres.stop()
    try:
        wait_for(lambda: following(fw.mnt) == 'polling', 20,
                 'wcfs to notice that the server and its listening connection are gone')
    finally:
        postgres.start()
    # committed while wcfs may still be away: the resync after the outage covers it
    fw.f.write_block(0, block('after the restart'))
    tid = fw.w.commit()
    have = fw.ch.have(timeout=30)
    assert have.tid == tid and not have.wait, have
    fw.ch.ack()
    wait_head(fw.fdir, tid, timeout=30)
    assert read_bytes(os.path.join(fw.fdir, 'head', 'data')) == fw.f.read()
    wait_for(lambda: following(fw.mnt) == 'told', 30, 'wcfs told again after the restart')
    for _ in range(3):
        fw.commit_and_follow()
