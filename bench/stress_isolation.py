"""Stress (issue 15): tests/test_isolation_stress.py N times in a row (default
60) beside heavy load; prints how many runs passed and the first failure's
output; exit status 1 if any run failed.

The load: bench_soak.py running the whole time (its own database server,
wcfs mount, writer and reader processes; --soak-db picks its database), and
--busy processes that spin (`while True: pass`), and with --drop-caches a
process that writes 3 to /proc/sys/vm/drop_caches every so many seconds
(the kernel then drops clean pages, dentries and inodes of every
filesystem: wcfs's readers fault pages in again and look paths up afresh;
global, so it slows everything else on the machine too). Each run is the venv's
pytest on the test file (both databases, or --database's one), with its
output kept in a file; a run that passes prints one line, the first that
fails has its output printed at the end (from pytest's FAILURES on, --lines
lines of it, without the PostgreSQL server's log); the
outputs are kept (the directory is named) unless every run passed. If the
soak ends on its own, its last lines are shown and another is started.

Every process started here is in a session of its own, ended by its pid:
pytest with SIGINT (its fixtures then stop their mounts and servers),
bench_soak.py with SIGTERM (it stops its own and prints its figures, shown
at the end), the busy loops and the drop_caches loop with SIGKILL; also on
^C or SIGTERM.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

BENCH = Path(__file__).resolve().parent
TEST = 'tests/test_isolation_stress.py'
SOAK_START_TIMEOUT = 300        # seconds for bench_soak.py to have its readers running
SOAK_STOP_TIMEOUT = 300         # it stops its readers, wcfs and database, and reports
RUN_TIMEOUT = 1800              # one pytest run (two tests of at most 300 s each, and set-up)
PYTEST_STOP_TIMEOUT = 120       # for pytest's teardown after SIGINT
DROP_CACHES = '''
import sys, time
while True:
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3')
    time.sleep(float(sys.argv[1]))
'''


def interrupt(signum, frame):
    raise KeyboardInterrupt('signal %s' % signal.Signals(signum).name)


def start(argv, out):
    with open(out, 'ab') as f:
        return subprocess.Popen(argv, cwd=common.ROOT, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc, sig, timeout):
    """Send sig to proc (by pid), wait; SIGKILL after timeout. -> its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print('stress: pid %d did not end within %d s of %s: SIGKILL'
                  % (proc.pid, timeout, signal.Signals(sig).name), file=sys.stderr)
            proc.kill()
            proc.wait()
    return proc.returncode


def tail(path, lines):
    return '\n'.join(Path(path).read_text(errors='replace').splitlines()[-lines:])


POSTGRES_LOG_LINE = re.compile(r'^\d{4}-\d\d-\d\d [\d:.]+ \w+ \[\d+\] ')


def failure(path, lines):
    """pytest's report of a failed run: from its FAILURES section on, at most
    `lines` lines, but the PostgreSQL server's log lines (the fixture prints
    its log at teardown: thousands of warnings), and its last line."""
    text = Path(path).read_text(errors='replace').splitlines()
    start = next((i for i, line in enumerate(text) if ' FAILURES ' in line), 0)
    kept = [line for line in text[start:] if not POSTGRES_LOG_LINE.match(line)]
    out = kept[:lines]
    if len(kept) > lines:
        out += ['[... %d lines]' % (len(kept) - lines - 1), kept[-1]]
    dropped = len(text) - start - len(kept)
    if dropped:
        out.append('[%d lines of the PostgreSQL log left out]' % dropped)
    return '\n'.join(out)


class Soak:
    """bench_soak.py as the load, started again should it end."""

    def __init__(self, db, dir):
        self.db = db
        self.dir = dir
        self.proc = None
        self.out = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.out = self.dir / ('soak%d.out' % self.starts)
        self.proc = start([sys.executable, str(BENCH / 'bench_soak.py'), '--db', self.db,
                           '--duration', str(10 ** 7)], self.out)
        common.wait_for(self.running, SOAK_START_TIMEOUT, 'bench_soak.py to run its readers')

    def running(self):
        if self.proc.poll() is not None:
            raise RuntimeError('bench_soak.py exited with %s:\n%s'
                               % (self.proc.returncode, tail(self.out, 40)))
        return 'readers running' in self.out.read_text(errors='replace')

    def keep_up(self):
        """Start the soak again if it ended on its own."""
        if self.proc.poll() is not None:
            print('stress: bench_soak.py ended (%s):\n%s' % (self.proc.returncode,
                                                             tail(self.out, 20)))
            self.start()

    def stop(self):
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, SOAK_STOP_TIMEOUT)
            print('stress: the load: %s' % tail(self.out, 30))


def run_test(n, dir, kselect):
    """One pytest run; -> (passed, seconds, path of its output)."""
    out = dir / ('run%d.out' % n)
    argv = [sys.executable, '-m', 'pytest', TEST, '-q', '-p', 'no:cacheprovider']
    if kselect:
        argv += ['-k', kselect]
    t = time.monotonic()
    proc = start(argv, out)
    try:
        proc.wait(RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        with open(out, 'a') as f:
            f.write('\nstress: the run took more than %d s: SIGINT\n' % RUN_TIMEOUT)
    finally:
        stop(proc, signal.SIGINT, PYTEST_STOP_TIMEOUT)
    return proc.returncode == 0, time.monotonic() - t, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('-n', '--runs', type=int, default=60, help='runs of the test (default 60)')
    p.add_argument('--database', choices=('both', 'zeo', 'postgres'), default='both',
                   help="the test's database: both (the test as it is), or one of them")
    p.add_argument('--soak-db', choices=common.DATABASES, default='zeo',
                   help="bench_soak.py's database (default zeo)")
    p.add_argument('--no-soak', action='store_true', help='no bench_soak.py beside the runs')
    p.add_argument('--busy', type=int, default=0, metavar='N',
                   help='processes that spin beside the runs (default 0)')
    p.add_argument('--drop-caches', type=float, metavar='SECONDS',
                   help='write 3 to /proc/sys/vm/drop_caches every SECONDS beside the runs '
                        '(root only)')
    p.add_argument('--lines', type=int, default=200,
                   help="lines of the first failure's report to print (default 200)")
    args = p.parse_args()
    if args.runs < 1 or args.busy < 0:
        p.error('--runs must be positive, --busy not negative')
    if args.drop_caches is not None and args.drop_caches <= 0:
        p.error('--drop-caches must be positive')
    signal.signal(signal.SIGTERM, interrupt)

    dir = Path(tempfile.mkdtemp(prefix='wcfs-stress-'))
    kselect = None if args.database == 'both' else args.database
    soak = None if args.no_soak else Soak(args.soak_db, dir)
    busy = []
    passed, failures, interrupted = 0, [], None
    ran = 0
    try:
        for _ in range(args.busy):
            busy.append(start([sys.executable, '-c', 'while True: pass'], os.devnull))
        if args.drop_caches:
            busy.append(start([sys.executable, '-c', DROP_CACHES, str(args.drop_caches)],
                              dir / 'drop_caches.out'))
        if soak:
            soak.start()
        print('stress: %d runs of %s (%s) beside %s, %d busy loops%s; outputs in %s'
              % (args.runs, TEST, args.database,
                 'no soak' if soak is None else 'bench_soak.py --db %s' % args.soak_db,
                 args.busy, ', drop_caches every %g s' % args.drop_caches
                 if args.drop_caches else '', dir), flush=True)
        for n in range(1, args.runs + 1):
            if soak:
                soak.keep_up()
            ok, seconds, out = run_test(n, dir, kselect)
            ran = n
            load = os.getloadavg()[0]
            if ok:
                passed += 1
            else:
                failures.append(out)
            print('run %d/%d: %s in %.0f s (load average %.1f)'
                  % (n, args.runs, 'passed' if ok else 'FAILED', seconds, load), flush=True)
    except KeyboardInterrupt as e:
        interrupted = str(e) or 'SIGINT'
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):     # the rest is bounded: let it end
            signal.signal(sig, signal.SIG_IGN)
        for proc in busy:
            stop(proc, signal.SIGKILL, 10)
        if soak:
            soak.stop()

    if failures:
        print('stress: the first failure (%s):\n%s'
              % (failures[0], failure(failures[0], args.lines)))
    else:
        shutil.rmtree(dir, ignore_errors=True)
    print('stress: %d of %d runs passed%s (%d asked); %d failed; kernel %s: %s'
          % (passed, ran, ' (interrupted: %s)' % interrupted if interrupted else '',
             args.runs, len(failures), common.kernel(),
             common.verdict(passed == args.runs)))
    return 0 if passed == args.runs else 1


if __name__ == '__main__':
    sys.exit(main())
