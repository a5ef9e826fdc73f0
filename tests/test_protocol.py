"""The invalidation protocol through a real mount (SPEC §4), on raw file
descriptors of `bigfile/<oid>/head/invalidations`: subscribing (§4.2),
updates that wait for acks (§4.3), slow and faulty clients (§4.4), bad input
(§4.5), and how the channel reads (§4.6). One test per rule of the spec.

The expected ranges of a `have` come from what the test committed: the
content of the file after every commit is kept, and δR(A, B) must hold every
block whose content differs between A and B (a block that exists at only
one of them counts), and no block that no commit in (A, B] changed.

Clients in this process never risk being killed: their mounts get a kill
timeout far longer than a test may run. Clients that wcfs is to kill are
other processes (chanhelp.Client).
"""

import errno
import os
import re
import resource
import select
import signal
import threading
import time

import pytest
import ZODB
import ZODB.FileStorage

from chanhelp import Chan, Client, Have, ranges_of
from devtools.procs import wait_for
from scenes import BS, blocks_differing, randbytes
from wcfs_lib.service.server import MAX_CHANNELS
from zhelp import KiB, MiB, Writer, head_at, hex16, process_state, stat_int, vmrss, wait_head

def blocks_in(ranges, blksize):
    return {blk for start, stop in ranges for blk in range(start // blksize, stop // blksize)}


def in_thread(fn, timeout=10):
    """Run fn() in a thread; -> its result, or AssertionError if it takes over timeout."""
    out = {}

    def run():
        try:
            out['value'] = fn()
        except BaseException as e:
            out['error'] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError('%s did not complete within %s s' % (fn, timeout))
    if 'error' in out:
        raise out['error']
    return out['value']


def subscribed_then_updated(s, ch, blks=(1,)):
    """ch subscribes at head, blocks blks are committed; -> (old tid, new tid,
    the update's Have), the update not acked."""
    old = s.tid
    assert not ch.subscribe(old).ranges
    new = s.touch(*blks)
    h = ch.have()
    assert (h.tid, h.wait, h.ranges) == (new, False, s.delta(old, new))
    return old, new, h


# ---- §4.2 subscribing ----

def test_want_at_head_gets_have_at_once_without_ranges(serve):
    s = serve()
    ch = s.chan()
    ch.send('want ' + hex16(s.tid))
    h = ch.have(timeout=2)
    assert (h.tid, h.wait, h.ranges) == (s.tid, False, [])
    ch.expect_nothing()


def test_want_of_older_cat_with_no_change_since_gets_have_without_ranges(serve):
    s = serve()
    cat = s.tid
    other = s.touch_other()
    wait_head(s.dir, other)
    h = s.chan().want(cat)
    assert (h.tid, h.wait, h.ranges) == (other, False, [])


def history_of_commits(s):
    """Commits to file 0 (4 blocks of BS) of every kind of change; every
    commit gives every block it touches new content."""
    f = s.files[0]
    s.touch(1, kind='ZBlk1')                # ZBlk1 block changed
    s.touch(2)                              # ZBlk0 block changed
    s.touch_other()                         # nothing of the file
    f.delete_block(2)                       # a block removed: a hole
    s.commit()
    s.touch(2, kind='ZBlk1')                # the hole filled
    s.touch(7)                              # grown: 4-6 appear as holes, 7 appears
    s.touch(0, kind='ZBlk1')                # ZBlk0 -> ZBlk1
    f.truncate(5 * BS)                      # shrunk: 5-7 disappear
    s.commit()
    s.touch(3)                              # ZBlk1 -> ZBlk0
    f.write_block(1, randbytes(BS), 'ZBlk1')  # two blocks in one commit
    s.touch(5)                              # grown by one block
    s.touch(8, kind='ZBlk1')                # grown again past holes
    f.truncate(3 * BS)                      # shrunk past a hole: 3-8 disappear
    s.commit()
    f.delete_block(1)                       # a hole in the middle; size kept by block 2
    s.commit()


@pytest.mark.parametrize('how', ['history', 'database', 'database, past ZEO\'s queue'])
def test_want_of_older_cat_gets_have_of_blocks_changed_since(serve, how):
    # history: wcfs saw every commit; database: the commits were made before
    # wcfs started, so δR is computed from the database: from ZEO's queue of
    # recent invalidations, or, with more transactions since than it keeps
    # (100 by default), from the storage's iterator.
    s = serve(mount=(how == 'history'))
    history_of_commits(s)
    if how.startswith('database, past'):
        for _ in range(110):
            s.touch_other()
    if how != 'history':
        s.mount()
    head = s.tid
    wait_head(s.dir, head)
    for cat in sorted(s.content[0]):
        h = s.chan().want(cat)
        assert (h.tid, h.wait) == (head, False), 'want %016x' % cat
        got = blocks_in(h.ranges, BS)
        differ = blocks_differing(s.content[0][cat], s.content[0][head], BS)
        assert h.ranges == ranges_of(got, BS), 'ranges not block aligned, sorted, merged: %r' % h
        assert differ <= got <= s.touched(cat, head), \
            'want %016x: have blocks %s; differ: %s; touched: %s' % (
                cat, sorted(got), sorted(differ), sorted(s.touched(cat, head)))


@pytest.mark.parametrize('how', ['want', 'update'])
@pytest.mark.parametrize('change', ['grow past holes', 'shrink past holes'])
def test_blocks_that_appear_or_disappear_with_the_size_count_as_changed(serve, change, how):
    s = serve()
    if change == 'shrink past holes':
        s.files[0].delete_block(2)
        s.commit()
    cat = s.tid
    wait_head(s.dir, cat)
    ch = s.chan()
    if how == 'update':
        ch.subscribe(cat)
    if change == 'grow past holes':
        s.touch(7)                          # blocks 4, 5, 6 appear as holes, 7 appears
        want = {4, 5, 6, 7}
    else:
        s.files[0].delete_block(3)          # blocks 2 (a hole) and 3 disappear
        s.commit()
        want = {2, 3}
    if how == 'update':
        h = ch.have()
        ch.ack()
    else:
        wait_head(s.dir, s.tid)
        h = ch.want(cat)
    assert (h.tid, h.ranges) == (s.tid, ranges_of(want, BS))


def test_want_while_behind_gets_wait_then_have(serve):
    # A subscribed client that does not ack holds the head back; a second
    # channel that wants the newer tid must wait for it.
    s = serve()
    a, b = s.chan(), s.chan()
    old, new, _ = subscribed_then_updated(s, a)
    assert head_at(s.dir) == old
    b.send('want ' + hex16(new))
    h = b.have()
    assert (h.tid, h.wait) == (old, True), 'head is at %016x: %r' % (old, h)
    b.expect_nothing()
    a.ack()
    h = b.have()
    assert not h.wait and h.tid >= new
    assert h.ranges == s.delta(new, h.tid)
    assert head_at(s.dir) == h.tid
    b.ack()


def test_want_again_after_ack(serve):
    s = serve()
    ch = s.chan()
    first, second, _ = subscribed_then_updated(s, ch, blks=(2,))
    ch.ack()
    wait_head(s.dir, second)
    h = ch.want(second)                     # the client's transaction moved on
    assert (h.tid, h.wait, h.ranges) == (second, False, [])
    ch.ack()
    third = s.touch(3)
    h = ch.have()
    assert (h.tid, h.ranges) == (third, s.delta(second, third))
    ch.ack()
    wait_head(s.dir, third)


@pytest.mark.parametrize('change', ['blksize', 'blktab'])
def test_change_of_the_zbigfile_object_is_one_range_to_the_larger_size(serve, change):
    s = serve(nblk=5)                       # 320 KiB
    ch, old = s.subscribed()
    if change == 'blksize':
        s.files[0].set_blksize(2 * BS)      # 3 blocks of 128 KiB: 384 KiB
        size = 6 * BS
    else:
        s.files[0].replace_blktab()
        size = 5 * BS
    new = s.commit()
    h = ch.have()
    assert (h.tid, h.wait, h.ranges) == (new, False, [(0, size)])
    ch.ack()
    wait_head(s.dir, new)


def test_revdir_of_cat_over_the_ranges_shows_the_file_as_of_cat(serve):
    # What a client does after `have`: head/data with @<Cat>/data over δR is
    # the file as of Cat.
    s = serve(nblk=6)
    cat = s.touch(1, 4, kind='ZBlk1')
    s.touch(2)
    s.files[0].delete_block(5)              # shrunk by one block
    s.commit()
    s.touch(0, 5, 6)                        # grown by two blocks
    wait_head(s.dir, s.tid)
    h = s.chan().want(cat)
    assert h.tid == s.tid
    revdata = os.path.join(s.dir, '@' + hex16(cat), 'data')
    os.mkdir(os.path.dirname(revdata))
    old, head = s.content[0][cat], s.data()
    assert head == s.content[0][s.tid]
    changed = blocks_in(h.ranges, BS)
    with open(revdata, 'rb') as f:
        view = []
        for blk in range(max(len(old), len(head)) // BS):
            if blk in changed:
                view.append(os.pread(f.fileno(), BS, blk * BS))
            else:
                view.append(head[blk * BS:(blk + 1) * BS])
    assert b''.join(view) == old


# ---- §4.3 updates ----

def test_head_waits_for_ack(serve):
    s = serve()
    ch = s.chan()
    old, new, _ = subscribed_then_updated(s, ch, blks=(1, 3))
    # head/data is not in the page cache: these reads go to wcfs
    data = in_thread(s.data, timeout=10)
    assert data == s.content[0][old], 'head/data moved before the ack'
    time.sleep(0.5)
    assert head_at(s.dir) == old
    assert in_thread(s.data, timeout=10) == s.content[0][old]
    ch.ack()
    wait_head(s.dir, new)
    assert s.data() == s.content[0][new]


def test_head_waits_for_every_subscribed_client(serve):
    s = serve()
    a, b = s.chan(), s.chan()
    old = s.tid
    a.subscribe(old)
    b.subscribe(old)
    new = s.touch(2)
    for ch in (a, b):
        h = ch.have()
        assert (h.tid, h.ranges) == (new, s.delta(old, new))
    a.ack()
    time.sleep(0.5)
    assert head_at(s.dir) == old
    assert s.data() == s.content[0][old]
    b.ack()
    wait_head(s.dir, new)
    assert s.data() == s.content[0][new]


def test_update_reports_changes_since_the_last_reported_tid(serve):
    # Commits while a have is unacked are reported in the next have, from
    # the tid the client was last told (Sprev), possibly folded.
    s = serve()
    ch = s.chan()
    _, prev, _ = subscribed_then_updated(s, ch, blks=(0,))
    s.touch(1)
    s.touch_other()
    last = s.touch(3, kind='ZBlk1')
    ch.ack()
    while prev != last:
        h = ch.have()
        assert not h.wait and prev < h.tid <= last
        assert h.ranges == s.delta(prev, h.tid), 'Sprev %016x: %r' % (prev, h)
        assert h.ranges, 'a have for a commit that changed nothing of the file: %r' % h
        prev = h.tid
        ch.ack()
    wait_head(s.dir, last)
    ch.expect_nothing()


def test_commit_not_touching_the_file_moves_head_at_and_sends_nothing(serve):
    s = serve()
    ch, old = s.subscribed()
    other = s.touch_other()
    wait_head(s.dir, other)
    ch.expect_nothing(within=1.0)
    # the next change is reported from the tid the client was last told
    new = s.touch(3)
    h = ch.have()
    assert (h.tid, h.ranges) == (new, s.delta(old, new))
    ch.ack()


def test_updates_of_one_file_do_not_wait_for_clients_of_another(serve):
    s = serve(nfiles=2)
    a = s.chan(0)
    old = s.tid
    a.subscribe(old)
    s.files[1].write_block(0, randbytes(BS))
    both = s.touch(0)                       # changes both files
    assert a.have().tid == both             # ... and is not acked
    wait_head(s.dirs[1], both)
    assert s.data(1) == s.content[1][both]
    only = s.touch(1, i=1)
    wait_head(s.dirs[1], only)
    assert s.data(1) == s.content[1][only]
    assert head_at(s.dirs[0]) == old
    a.ack()
    wait_head(s.dirs[0], only)


def test_close_ends_the_subscription(serve):
    s = serve()
    ch, old = s.subscribed()
    assert stat_int(s.mnt, 'subscribed') == 1
    ch.close()
    wait_for(lambda: stat_int(s.mnt, 'channels') == 0, what='the channel to go')
    assert stat_int(s.mnt, 'subscribed') == 0
    new = s.touch(1)
    wait_head(s.dir, new)


# ---- §4.4 slow and faulty clients ----

def test_client_that_never_acks_is_killed(serve):
    s = serve(args=('--kill-timeout', '2'))
    old = s.tid
    good = Client(s.dir, old, 'ack')
    bad = Client(s.dir, old, 'noack')
    try:
        for c in (good, bad):
            c.expect('have %016x' % old)
            c.expect('acked')
        with open('/proc/%d/comm' % bad.pid) as f:
            comm = f.read().strip()
        start = time.monotonic()
        new = s.touch(1)
        good.expect('have %016x' % new)
        good.expect('acked')
        bad.expect('have %016x' % new)
        assert head_at(s.dir) == old, 'head moved before the client that does not ack'
        bad.proc.wait(20)
        died = time.monotonic() - start
        assert bad.proc.returncode == -signal.SIGKILL
        assert died >= 1.8, 'killed %.1f s after the commit, before --kill-timeout 2' % died
        wait_head(s.dir, new)
        assert s.data() == s.content[0][new]
        assert good.alive()
        assert stat_int(s.mnt, 'clients_killed') == 1
        named = [line for line in s.mnt.log().splitlines()
                 if re.search(r'\b%d\b' % bad.pid, line) and comm in line]
        assert named, 'the kill is not logged with pid %d and name %r' % (bad.pid, comm)
        # the well-behaved client goes on getting updates
        newer = s.touch(2)
        good.expect('have %016x' % newer)
        good.expect('acked')
        wait_head(s.dir, newer)
    finally:
        good.stop()
        bad.stop()


def test_client_that_closes_instead_of_acking_is_not_killed(serve):
    s = serve(args=('--kill-timeout', '30'))
    old = s.tid
    c = Client(s.dir, old, 'close')
    try:
        c.expect('have %016x' % old)
        c.expect('acked')
        new = s.touch(1)
        c.expect('have %016x' % new)
        c.expect('closed')
        wait_head(s.dir, new, timeout=10)   # well before the kill timeout
        assert c.alive()
        assert stat_int(s.mnt, 'clients_killed') == 0
    finally:
        c.stop()


def test_subscription_whose_process_is_gone_is_dropped_not_killed(serve):
    # The process that wrote `want` handed the channel to a child and
    # exited: wcfs cannot be sure whom to kill, drops the subscription, and
    # the channel fails with EIO from then on.
    s = serve(args=('--kill-timeout', '2'))
    old = s.tid
    c = Client(s.dir, old, 'handoff')
    heir = None
    try:
        c.expect('have %016x' % old)
        c.expect('acked')
        heir = int(c.expect('child ').split()[1])
        c.proc.wait(10)
        new = s.touch(1)
        wait_head(s.dir, new, timeout=20)
        assert process_state(heir) not in (None, 'Z'), 'the holder of the channel was killed'
        assert stat_int(s.mnt, 'clients_killed') == 0
        c.tell('read')
        assert c.expect('read=') == 'read=EIO write=EIO'
    finally:
        c.stop()
        if heir is not None and process_state(heir) not in (None, 'Z'):
            os.kill(heir, signal.SIGKILL)



# ---- §4.5 bad input ----

def bad_lines(tid):
    t = hex16(tid)
    return [
        b'hello',                           # unknown verb
        b'have ' + t.encode(),              # a reply is no request
        b'WANT ' + t.encode(),
        b'want',
        b'want ' + t.upper().encode(),      # malformed tids
        b'want ' + t[1:].encode(),
        b'want 0' + t.encode(),
        b'want 0x' + t[2:].encode(),
        b'want ' + t.encode() + b' extra',
        b'ack extra',
        b'',                                # empty line
        b'\x00\xff\xfe\x80\x01garbage',     # binary garbage
        b'w' * 257,                         # over 256 bytes
        b'want ' + b'0' * 300,
        b'ack',                             # nothing to ack
    ]


def test_bad_line_is_error_and_changes_nothing(serve):
    s = serve()
    ch = s.chan()
    for line in bad_lines(s.tid):
        ch.send(line)
        assert ch.readline().startswith('error '), 'line %r' % line
        ch.expect_nothing(within=0.05)
        h = ch.want(s.tid)                  # the channel stays usable
        assert (h.tid, h.wait, h.ranges) == (s.tid, False, []), 'after line %r' % line
        ch.ack()
    assert stat_int(s.mnt, 'subscribed') == 1


def test_want_while_have_unacked_is_error(serve):
    s = serve()
    ch = s.chan()
    ch.send('want ' + hex16(s.tid))
    ch.have()
    ch.send('want ' + hex16(s.tid))
    ch.error()
    ch.ack()                                # the have is still there to ack
    ch.expect_nothing(within=0.1)
    assert ch.want(s.tid).tid == s.tid
    ch.ack()


def test_want_while_update_unacked_is_error(serve):
    s = serve()
    ch = s.chan()
    old, new, _ = subscribed_then_updated(s, ch)
    ch.send('want ' + hex16(new))
    ch.error()
    assert head_at(s.dir) == old
    ch.ack()
    wait_head(s.dir, new)


def test_ack_with_nothing_to_ack_is_error(serve):
    s = serve()
    ch = s.chan()
    ch.send('ack')
    ch.error()
    ch.subscribe(s.tid)
    ch.send('ack')                          # acked already
    ch.error()
    assert ch.want(s.tid).tid == s.tid
    ch.ack()


def behind(s):
    """Channel a holds the head back (update unacked); channel b gets
    `have <old> wait` for the new tid. -> (a, b, old, new)."""
    a, b = s.chan(), s.chan()
    old, new, _ = subscribed_then_updated(s, a)
    b.send('want ' + hex16(new))
    assert b.have().wait
    return a, b, old, new


def test_ack_while_waiting_is_error(serve):
    s = serve()
    a, b, old, new = behind(s)
    b.send('ack')
    b.error()
    a.ack()
    h = b.have()                            # the wait still stands
    assert not h.wait and h.tid >= new
    b.ack()


def test_want_while_waiting_is_error(serve):
    s = serve()
    a, b, old, new = behind(s)
    b.send('want ' + hex16(new))
    b.error()
    b.expect_nothing(within=0.1)
    a.ack()
    assert b.have().tid >= new
    b.ack()


def _one_error_then_served(ch, tid):
    """ch's next reply is one `error`, then nothing more: the channel goes on
    serving, a want of tid gets its have."""
    ch.error()
    ch.expect_nothing(within=0.1)
    assert ch.want(tid).tid == tid


@pytest.mark.parametrize('size', [257, 300, 4096, 100000])
def test_line_over_256_bytes_is_error(serve, size):
    s = serve()
    ch = s.chan()
    line = ('want ' + hex16(s.tid)).encode().ljust(size, b' ')
    ch.send(line)
    _one_error_then_served(ch, s.tid)


def test_line_split_over_several_writes(serve):
    s = serve()
    ch = s.chan()
    line = ('want ' + hex16(s.tid) + '\n').encode()
    for piece in (line[:2], line[2:5], line[5:9], line[9:-1]):
        assert ch.write(piece) == len(piece)
        ch.expect_nothing(within=0.05)
    ch.write(b'\n')
    assert ch.have().tid == s.tid
    for c in b'ack\n':                      # one byte a write
        ch.write(bytes([c]))
    ch.expect_nothing(within=0.1)
    assert ch.want(s.tid).tid == s.tid      # so the ack was taken


def test_crlf_line_end(serve):
    s = serve()
    ch = s.chan()
    ch.write(('want %s\r\n' % hex16(s.tid)).encode())
    assert ch.have().tid == s.tid
    ch.write(b'ack\r\n')
    ch.expect_nothing(within=0.1)
    ch.write(('want %s\r' % hex16(s.tid)).encode())
    ch.write(b'\n')
    assert ch.have().tid == s.tid


def test_megabytes_without_newline_are_bounded(serve):
    s = serve()
    ch = s.chan()
    rss = vmrss(s.mnt.pid)
    chunk = b'x' * (128 * KiB)
    for _ in range(64 * MiB // len(chunk)):
        assert ch.write(chunk) == len(chunk)   # every byte accepted
    ch.expect_nothing(within=0.1)
    grown = vmrss(s.mnt.pid) - rss
    assert grown < 16 * MiB, 'wcfs grew by %d MiB for a 64 MiB line' % (grown // MiB)
    ch.write(b'\n')
    _one_error_then_served(ch, s.tid)


def test_client_that_never_reads_gets_EIO_past_64KiB_of_replies(serve):
    s = serve()
    ch = s.chan()
    ch.send('x')
    reply = len(ch.readline()) + 1          # bytes of one error reply
    batch = 100
    bound = 64 * KiB // (reply * batch)     # batches sure to stay under the bound
    written = 0
    with pytest.raises(OSError) as e:
        for _ in range(bound + 3):
            ch.write(b'x\n' * batch)
            written += 1
        os.read(ch.fd, 1)                   # still there after bound + 3 batches?
    assert e.value.errno == errno.EIO
    assert written >= bound, 'dropped after %d of %d bytes of replies' % (
        written * batch * reply, 64 * KiB)
    for op in (lambda: os.read(ch.fd, 4096), lambda: os.write(ch.fd, b'ack\n')):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EIO
    # other channels do not notice
    assert s.chan().want(s.tid).tid == s.tid


def test_client_that_reads_its_replies_is_not_dropped(serve):
    s = serve()
    ch = s.chan()
    for _ in range(10):                     # 10 x 27 KiB of replies, each read
        ch.write(b'x\n' * 1000)
        for _ in range(1000):
            ch.error()
    assert ch.want(s.tid).tid == s.tid


def test_want_after_the_last_transaction_is_error_on_zeo(serve):
    s = serve()
    ch = s.chan()
    ch.send('want ' + hex16(s.tid + 1))
    ch.error()
    ch.send('want ffffffffffffffff')
    ch.error()
    assert ch.want(s.tid).tid == s.tid


def test_want_after_the_last_transaction_is_error_on_file(tmp_path, wcfs_mount):
    path = str(tmp_path / 'Data.fs')
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    try:
        w = Writer(db)
        _, oid, last = w.new_file(BS, {0: b'a', 1: b'b'})
    finally:
        db.close()
    mnt = wcfs_mount('file://' + path)
    with Chan(mnt.bigfile(oid)) as ch:
        ch.send('want ' + hex16(last + 1))
        ch.error()
        h = ch.want(last)
        assert (h.tid, h.wait, h.ranges) == (last, False, [])


def test_want_before_the_file_existed_is_error(database, serve):
    w = Writer(database.db())
    before = w.touch_other()
    s = serve()
    assert s.first > before
    ch = s.chan()
    for cat in (before, 0):
        ch.send('want ' + hex16(cat))
        ch.error()
    assert ch.want(s.first).tid == s.tid


# ---- §4.6 reading the channel ----

def test_read_returns_every_pending_message(serve):
    s = serve()
    ch = s.chan()
    ch.write(b'x\ny\nwant ' + hex16(s.tid).encode() + b'\n')
    data = os.read(ch.fd, 4096)
    lines = data.decode().split('\n')
    assert len(lines) == 4 and lines[3] == '', data
    assert lines[0].startswith('error ') and lines[1].startswith('error ')
    assert Have(lines[2]).tid == s.tid


def test_nonblocking_read_with_nothing_pending_is_EAGAIN(serve):
    s = serve()
    ch = s.chan(nonblock=True)
    for _ in range(2):
        with pytest.raises(BlockingIOError) as e:
            os.read(ch.fd, 4096)
        assert e.value.errno == errno.EAGAIN
        ch.subscribe(s.tid)                 # reads its have


class Interrupted(Exception):
    pass


def test_blocked_read_is_interrupted_by_signal_EINTR(serve):
    # Python retries a read that gives EINTR unless the signal handler
    # raises. SIGUSR1 rather than SIGALRM, which pytest-timeout uses; sent to
    # this thread, which is the one blocked.
    s = serve()
    ch = s.chan(nonblock=False)
    me = threading.get_ident()
    unblocked, fallback = threading.Event(), threading.Event()

    def handler(signum, frame):
        raise Interrupted()

    def signal_then_unblock():
        time.sleep(0.5)
        signal.pthread_kill(me, signal.SIGUSR1)
        if not unblocked.wait(5):           # the read was not interrupted: end it
            fallback.set()
            os.pwrite(ch.fd, b'x\n', 0)

    prev = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=signal_then_unblock, daemon=True)
        start = time.monotonic()
        t.start()
        with pytest.raises(Interrupted):
            os.read(ch.fd, 4096)
        took = time.monotonic() - start
    finally:
        signal.signal(signal.SIGUSR1, prev)
    unblocked.set()
    t.join(10)
    assert not fallback.is_set(), 'the blocked read did not end when the signal came'
    assert took < 3, 'the read ended %.1f s after the signal' % took
    assert ch.want(s.tid).tid == s.tid      # nothing was lost or left over


def readable(fd, timeout=0):
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLIN for _, ev in p.poll(timeout * 1000))


def test_poll_reports_readable_exactly_when_a_message_is_pending(serve):
    s = serve()
    ch = s.chan(nonblock=False)
    assert not readable(ch.fd)
    assert select.select([ch.fd], [], [], 0)[0] == []
    ch.send('want ' + hex16(s.tid))
    assert readable(ch.fd)
    assert select.select([ch.fd], [], [], 0)[0] == [ch.fd]
    assert Have(os.read(ch.fd, 4096).decode().strip()).tid == s.tid
    assert not readable(ch.fd)
    ch.ack()
    assert not readable(ch.fd)
    # a poll that waits wakes up when an update comes
    for wait in (lambda: readable(ch.fd, timeout=20),
                 lambda: select.select([ch.fd], [], [], 20)[0] == [ch.fd]):
        done = {}
        t = threading.Thread(target=lambda: done.setdefault('ready', wait()), daemon=True)
        t.start()
        time.sleep(0.3)
        assert t.is_alive(), 'poll returned with nothing pending'
        new = s.touch(1)
        t.join(10)
        assert not t.is_alive() and done['ready'], 'poll did not wake up for the update'
        assert ch.have().tid == new
        ch.ack()
        wait_head(s.dir, new)


def test_pread_and_pwrite_from_two_threads(serve):
    s = serve()
    ch = s.chan(nonblock=False)
    got = []
    t = threading.Thread(target=lambda: got.append(os.pread(ch.fd, 4096, 0)), daemon=True)
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not got, 'pread returned with nothing pending'
    want = ('want %s\n' % hex16(s.tid)).encode()
    assert os.pwrite(ch.fd, want, 0) == len(want)
    t.join(10)
    assert got and Have(got[0].decode().strip()).tid == s.tid
    # blocked in pread while the other thread acks, then an update comes
    got.clear()
    t = threading.Thread(target=lambda: got.append(os.pread(ch.fd, 4096, 0)), daemon=True)
    t.start()
    time.sleep(0.3)
    os.pwrite(ch.fd, b'ack\n', 0)
    time.sleep(0.3)
    assert t.is_alive() and not got, 'pread returned on an ack, which has no reply'
    new = s.touch(2)
    t.join(10)
    assert got and Have(got[0].decode().strip()).tid == new
    os.pwrite(ch.fd, b'ack\n', 0)
    wait_head(s.dir, new)


def read_quietly(fd):
    """os.read for a thread: a read that fails when the mount goes is no news."""
    try:
        return os.read(fd, 4096)
    except OSError:
        return None


@pytest.mark.slow
def test_1000_channels_blocked_in_read_leave_data_reads_alone(serve):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = MAX_CHANNELS + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    s = serve(nfiles=3, nblk=128)           # 8 MiB files, none read yet
    baseline = time.monotonic()
    assert s.data(1) == s.content[1][s.tid]
    baseline = time.monotonic() - baseline
    chans = [s.chan(0, nonblock=False) for _ in range(1000)]
    stack = threading.stack_size(256 * KiB)
    try:
        readers = [threading.Thread(target=read_quietly, args=(ch.fd,), daemon=True)
                   for ch in chans]
        for t in readers:
            t.start()
    finally:
        threading.stack_size(stack)
    time.sleep(1)
    assert all(t.is_alive() for t in readers), 'a read returned with nothing pending'
    assert stat_int(s.mnt, 'channels') >= 1000
    took = time.monotonic()
    assert s.data(2) == s.content[2][s.tid]
    took = time.monotonic() - took
    assert s.chan(1).want(s.tid).tid == s.tid   # the protocol still answers
    # opens past one uid's share of the bound: EMFILE
    with pytest.raises(OSError) as e:
        for _ in range(MAX_CHANNELS + 1 - len(s.channels)):
            s.chan(1)
    assert e.value.errno == errno.EMFILE
    assert len(s.channels) == MAX_CHANNELS - MAX_CHANNELS // 5
    assert 'invalidations' in s.mnt.log(), 'the refused open is not logged'
    # every blocked read ends once it has a reply
    for ch in chans:
        os.pwrite(ch.fd, b'x\n', 0)
    for t in readers:
        t.join(10)
        assert not t.is_alive()
    assert took < 3 * baseline + 1, 'data read took %.2f s beside 1000 blocked channels ' \
        '(%.2f s without)' % (took, baseline)
