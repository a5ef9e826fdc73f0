"""`.wcfs/metrics` on a real mount (issue 18, item 5): Prometheus' parser
reads it; it says what `.wcfs/stats` says; zhead and the lag follow the
commits; it tells whether the database is reachable and how wcfs follows
it; reading it asks the database nothing; another user reads it on an
allow_other mount, as `.wcfs/stats`."""

import os
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from devtools.procs import wait_for
from wcfs_lib.zodb import zstorage
from zhelp import KiB, Writer, hex16, read_bytes, run_as_nobody, stats, tid_time

BS = 64 * KiB
FOLLOWING = {'zeo': 'told', 'postgres': 'polling'}     # by the ZURL's scheme
STARTED_AGAIN = 40      # seconds for wcfs to see a restarted ZEO server
NOTICED = 20            # seconds for wcfs to notice the server gone (--db-timeout 2, a tick)


def parse(text):
    """-> {sample name with its labels: value}, e.g. 'wcfs_reads_total',
    'wcfs_following{mode="told"}'."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ','.join('%s="%s"' % kv for kv in sorted(s.labels.items()))
            out[s.name + ('{%s}' % labels if labels else '')] = s.value
    return out


def metrics(mnt):
    return parse(read_bytes(os.path.join(mnt.path, '.wcfs', 'metrics')).decode())


def metric_of_stat(m, name):
    """The sample of .wcfs/metrics that shows the stat `name`."""
    for sample in ('wcfs_%s_total' % name, 'wcfs_%s' % name, 'wcfs_%s_seconds' % name):
        if sample in m:
            return m[sample]
    raise AssertionError('.wcfs/stats %s is not in .wcfs/metrics: %s' % (name, sorted(m)))


def test_metrics_say_what_stats_say(database, wcfs_mount):
    w = Writer(database.db())
    _, oid, tid = w.new_file(BS, {0: b'a' * BS, 1: b'b' * BS})
    mnt = wcfs_mount(database.zurl)
    fdir = mnt.bigfile(oid)
    read_bytes(os.path.join(fdir, 'head', 'data'))
    os.mkdir(os.path.join(fdir, '@' + hex16(tid)))
    s, m = stats(mnt), metrics(mnt)
    numbers = [name for name, v in s.items() if v.isdigit()]
    assert len(numbers) >= 15, s
    for name in numbers:
        if name != 'uptime':
            assert metric_of_stat(m, name) == int(s[name]), name
    assert abs(m['wcfs_uptime_seconds'] - int(s['uptime'])) <= 1
    assert m['wcfs_bigfiles'] == 1 and m['wcfs_revdirs'] == 1
    assert m['wcfs_bytes_read_total'] >= 2 * BS
    assert m['wcfs_zhead_timestamp_seconds'] == tid_time(int(s['zhead'], 16)) == tid_time(tid)
    assert m['wcfs_database_reachable'] == 1 and s['database'] == 'connected'
    assert m['wcfs_database_unreachable_seconds'] == 0
    kind = database.zurl.split(':', 1)[0]
    mode = FOLLOWING[kind]
    assert {k: v for k, v in m.items() if k.startswith('wcfs_following')} == {
        'wcfs_following{mode="told"}': int(mode == 'told'),
        'wcfs_following{mode="polling"}': int(mode == 'polling')}
    assert m['wcfs_db_pool_waits_total'] >= 0 and m['wcfs_db_pool_wait_seconds_total'] >= 0
    if kind == 'zeo':
        assert m['wcfs_db_pool_waits_total'] == m['wcfs_db_pool_wait_seconds_total'] == 0


def test_an_empty_database_has_no_transaction_time(database, wcfs_mount):
    """Not the year 1900 that tid 0 would make: 0, as a timestamp that never was."""
    mnt = wcfs_mount(database.zurl)
    m = metrics(mnt)
    assert stats(mnt)['zhead'] == hex16(0)
    assert m['wcfs_zhead_timestamp_seconds'] == 0
    assert m['wcfs_database_last_transaction_timestamp_seconds'] == 0
    assert m['wcfs_zhead_lag_seconds'] == 0


def test_zhead_and_the_lag_follow_a_commit(database, wcfs_mount):
    w = Writer(database.db())
    f, oid, tid0 = w.new_file(BS, {0: b'a' * BS})
    mnt = wcfs_mount(database.zurl)
    mnt.bigfile(oid)
    m = metrics(mnt)
    assert m['wcfs_zhead_timestamp_seconds'] == tid_time(tid0)
    f.write_block(0, b'b' * BS)
    tid1 = w.commit()
    assert tid_time(tid1) > tid_time(tid0)

    def caught_up():
        m = metrics(mnt)
        return m['wcfs_zhead_timestamp_seconds'] == tid_time(tid1) and m
    m = wait_for(caught_up, 10, 'zhead in .wcfs/metrics to be the commit %s' % hex16(tid1))
    assert m['wcfs_database_last_transaction_timestamp_seconds'] == tid_time(tid1)
    assert m['wcfs_zhead_lag_seconds'] == 0
    assert m['wcfs_zhead_lag_transactions'] == 0
    assert stats(mnt)['zhead'] == hex16(tid1)


def test_reading_metrics_asks_the_database_nothing(database, wcfs_mount):
    """Any user may read it in a loop: what it shows of the database is
    what wcfs heard already."""
    w = Writer(database.db())
    _, oid, _ = w.new_file(BS, {0: b'a' * BS})
    mnt = wcfs_mount(database.zurl)
    mnt.bigfile(oid)
    before = int(stats(mnt)['db_requests'])
    for _ in range(200):
        metrics(mnt)
    assert int(stats(mnt)['db_requests']) == before


def test_an_unreachable_database_shows_and_for_how_long(zeo, wcfs_mount):
    mnt = wcfs_mount(zeo.zurl, '--db-timeout', '2')
    assert metrics(mnt)['wcfs_database_reachable'] == 1
    zeo.stop()
    try:
        wait_for(lambda: metrics(mnt)['wcfs_database_reachable'] == 0, NOTICED,
                 '.wcfs/metrics to say the database is unreachable')
        assert stats(mnt)['database'] == 'unreachable'
        wait_for(lambda: metrics(mnt)['wcfs_database_unreachable_seconds'] >= 2, NOTICED,
                 'the time unreachable to grow')
    finally:
        zeo.start()
    m = wait_for(lambda: (lambda m: m['wcfs_database_reachable'] == 1 and m)(metrics(mnt)),
                 STARTED_AGAIN, '.wcfs/metrics to say the database is reachable again')
    assert m['wcfs_database_unreachable_seconds'] == 0


def test_another_user_lists_and_reads_metrics_on_an_allow_other_mount(zeo, public_dir, mount_at):
    path = public_dir / 'mnt'
    path.mkdir()
    mnt = mount_at(zeo.zurl, path, '-o', 'allow_other')
    wcfsdir = os.path.join(mnt.path, '.wcfs')
    r = run_as_nobody(['ls', wcfsdir])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['metrics', 'stats', 'zurl']
    r = run_as_nobody(['cat', os.path.join(wcfsdir, 'metrics')])
    assert r.returncode == 0, r.stderr
    m = parse(r.stdout)
    assert m['wcfs_database_reachable'] == 1 and m['wcfs_following{mode="told"}'] == 1
    r = run_as_nobody(['sh', '-c', 'echo x >> "$1"', 'sh', os.path.join(wcfsdir, 'metrics')])
    assert r.returncode != 0 and 'Permission denied' in r.stderr


def test_the_database_layer_hears_the_last_tid_of_a_commit(database):
    """What wcfs_database_last_transaction_timestamp_seconds comes from:
    pushed (ZEO) or polled (PostgreSQL), never asked when read."""
    w = Writer(database.db())
    f, _, _ = w.new_file(BS, {0: b'a' * BS})
    db = zstorage.open_database(database.zurl, 10)
    try:
        db.follow(lambda tid, oids, folded: None, lambda: None, lambda: None)
        f.write_block(0, b'b' * BS)
        tid = w.commit()
        wait_for(lambda: db.heard_last_tid() == tid, 10,
                 'the database layer to hear of %s' % hex16(tid))
        assert db.following() == FOLLOWING[database.zurl.split(':', 1)[0]]
    finally:
        db.close()


def test_waits_for_a_pooled_connection_are_counted(postgres, wcfs_mount):
    """One connection for the loads, many readers of cold blocks at once:
    some wait for it, and .wcfs/metrics says how often and how long."""
    w = Writer(postgres.db())
    mnt = wcfs_mount(postgres.zurl, '--db-connections', '1')
    for round_ in range(10):
        _, oid, _ = w.new_file(BS, {blk: bytes([round_, blk]) * (BS // 2) for blk in range(32)})
        data = os.path.join(mnt.bigfile(oid), 'head', 'data')
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda blk: read_block(data, blk), range(32)))
        m = metrics(mnt)
        if m['wcfs_db_pool_waits_total'] > 0:
            break
    assert m['wcfs_db_pool_waits_total'] > 0, 'no reader waited in %d rounds' % (round_ + 1)
    assert m['wcfs_db_pool_wait_seconds_total'] > 0
    assert m['wcfs_following{mode="polling"}'] == 1


def read_block(path, blk):
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(os.pread(fd, BS, blk * BS)) == BS
    finally:
        os.close(fd)
