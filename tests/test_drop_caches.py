"""Views never fault while the kernel drops its caches (issue 15, item 0).

Two runs of tests/test_isolation_stress.py in 60 lost a reader to SIGBUS
with nothing in wcfs's log, each time while another process wrote
/proc/sys/vm/drop_caches. What that does to a wcfs mount:

- 1: every clean page of head/data and @<tid>/data that no process maps
  now is dropped; the next fault on it is a FUSE READ, answered from the
  head wcfs has then. A reply shorter than asked makes the kernel shrink
  the file (fuse_short_read), and a page mapped past that is SIGBUS; a
  read answered with an error is SIGBUS too.
- 2: every dentry and inode nobody holds is dropped; the next lookup is a
  fresh FUSE LOOKUP, and an inode made afresh takes the size in its
  answer whatever the kernel had been told since the request was sent
  (its attribute version starts again).
- 3: both.

wcfs is built so that neither can hurt a view: head/data is only mapped
where it is as of the view's `at`, head moves once every view acked, a
read serves the head of its moment, and the kernel refuses any size in an
answer to a request sent before wcfs's last notification (test_sigbus.py).
This test holds that up against the conditions of those two runs, made
denser: the writer of test_isolation_stress.py (growth, shrinking, holes,
new blktabs, a commit every few ms), reader processes that move two views
each (one to the last tid, one to random older ones, and close and open
them now and then), a drop_caches loop cycling through 1, 2 and 3, and
wcfs run by a launcher (this file, `launch`) that answers some getattrs,
lookups and reads of data files a few ms after it read the head, as a
descheduled worker thread does on a loaded machine (so that answers made
from the head before a commit arrive after it). The readers do not touch
their views: they read them through /proc/self/mem, where a page that
would be SIGBUS is EIO, so a fault is reported with the mapping and the
sizes the kernel holds instead of killing the reader.

It passed on the code that lost those two readers, and so did
bench/stress_isolation.py --drop-caches: what killed them was a δ history
made of PostgreSQL polls, each the net δ of several commits
(test_folded_commits.py). It stays as a check that the kernel's caches
cannot hurt a view; a fault here says which mapping, at which offset, and
which sizes the kernel held.
"""

import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `launch` and `reader`
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from stresshelp import Writer, move_views, probe, read_log  # noqa: E402

DROP_CACHES = '/proc/sys/vm/drop_caches'
DROP_EVERY = 0.05       # seconds between two writes of drop_caches
DROPS = '231'           # what each write asks, in turn
LATE = 0.01             # at most this long between reading the head and answering
LATE_SHARE = 0.3        # of getattrs, lookups and reads of data files
NREADERS = 3
WRITE_SECONDS = 30
MIN_COMMITS = 100
MIN_CHECKS = 30         # per reader


def launch(argv):
    """Run wcfs with argv, answering a share of the getattrs, lookups and
    reads of data files up to LATE seconds after the answer was made."""
    from wcfs_lib.kernel import fs
    import wcfs

    getattr_now, read_now = fs.WCFS.getattr, fs.WCFS.read

    def late():
        if random.random() < LATE_SHARE:
            time.sleep(random.uniform(0, LATE))

    def getattr_late(self, path, fh=None):
        st = getattr_now(self, path, fh)
        if path.endswith('/data'):
            late()
        return st

    def read_late(self, path, size, offset, fi):
        reply = read_now(self, path, size, offset, fi)
        late()
        return reply

    fs.WCFS.getattr = getattr_late
    fs.WCFS.read = read_late
    return wcfs.main(argv)


# ---- a reader (another process) ----

def reader(mountpoint, oid, logpath, stoppath, seed):
    """Views `latest` (moved to the last tid) and `lagging` (to random
    ones), checked twice a round; prints one JSON line: counts and
    mismatches, or the first fault."""
    from wcfs_lib import client

    rng = random.Random(seed)
    mem = os.open('/proc/self/mem', os.O_RDONLY)
    checks, mismatches = 0, []
    with client.connect(mountpoint) as wc:
        views = {}
        while not os.path.exists(stoppath):
            recs = read_log(logpath)
            move_views(wc, oid, views, recs, rng, close_chance=0.1)
            for _ in range(2):
                for name, view in views.items():
                    rec = next(r for r in reversed(recs) if r['tid'] == view.at)
                    got = probe(view, mem, mountpoint)
                    checks += 1
                    if isinstance(got, dict):
                        got['view'] = name
                        print(json.dumps({'fault': got}), flush=True)
                        return
                    if got != rec['blocks']:
                        mismatches.append('%s @%016x' % (name, view.at))
                time.sleep(rng.uniform(0, 0.02))
    print(json.dumps({'checks': checks, 'mismatches': mismatches[:20]}), flush=True)


# ---- the test ----

def drop_caches(stop):
    """Write 2, 3 and 1 to drop_caches in turn until stop is set."""
    n = 0
    while not stop.wait(DROP_EVERY):
        with open(DROP_CACHES, 'w') as f:
            f.write(DROPS[n % len(DROPS)])
        n += 1


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not os.access(DROP_CACHES, os.W_OK), reason='drop_caches needs root')
def test_views_never_fault_while_the_kernel_drops_caches(database, tmp_path):
    from zhelp import LaunchedWCFS

    logpath = tmp_path / 'content.log'
    stoppath = tmp_path / 'stop'
    w = Writer(database, logpath, seed=2)
    mnt = LaunchedWCFS([__file__, 'wcfs', '--revdir-timeout', '3'], database.zurl, tmp_path)
    stop = threading.Event()
    dropper = threading.Thread(target=drop_caches, args=(stop,), daemon=True)
    readers = []
    try:
        readers = [subprocess.Popen([sys.executable, '-X', 'faulthandler',
                                     os.path.abspath(__file__), 'reader', mnt.path,
                                     '%x' % w.oid, str(logpath), str(stoppath), str(i)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for i in range(NREADERS)]
        dropper.start()
        commits, start = 0, time.monotonic()
        while time.monotonic() - start < WRITE_SECONDS or commits < MIN_COMMITS:
            w.step()
            commits += 1
            time.sleep(w.rng.uniform(0, 0.005))
            if any(r.poll() is not None for r in readers):
                break
        stoppath.touch()
        stop.set()
        dropper.join()
        reports = []
        for i, r in enumerate(readers):
            out, err = r.communicate(timeout=120)
            last = out.strip().splitlines()[-1:] if out else []
            if r.returncode != 0 or not last:
                pytest.fail('reader %d ended with status %s after %d commits:\n%s'
                            % (i, r.returncode, commits, err), pytrace=False)
            reports.append(json.loads(last[0]))
    finally:
        stop.set()
        stoppath.touch()
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait()
        mnt.close()
    print('commits: %d (%s)' % (commits, ', '.join('%s %d' % kv for kv in sorted(w.kinds.items()))))
    for i, report in enumerate(reports):
        print('reader %d: %s' % (i, report))
        assert 'fault' not in report, 'reader %d: a page would be SIGBUS: %s' % (i, report)
        assert report['mismatches'] == [], 'reader %d' % i
        assert report['checks'] >= MIN_CHECKS, 'reader %d' % i


if __name__ == '__main__':
    if sys.argv[1] == 'wcfs':
        sys.exit(launch(sys.argv[2:]))
    if sys.argv[1] == 'reader':
        reader(sys.argv[2], int(sys.argv[3], 16), sys.argv[4], sys.argv[5], int(sys.argv[6]))
