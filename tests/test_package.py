"""The Debian package (SPEC §5), built, linted, installed and run as an
administrator would: `dpkg-buildpackage -us -uc -b` on a copy of this tree,
lintian and mandoc with nothing to say, `apt-get install ./wcfs_*.deb`, then
/usr/sbin/wcfs, `man wcfs`, and the init script serving a real ZEO database
configured through /etc/default/wcfs, until `apt-get purge` removes it all.
The package alone serves PostgreSQL too: installed again, its /usr/sbin/wcfs
serves and follows a private cluster through a postgres:// ZURL and a
zconfig:// file, with RelStorage as the package carries it and Debian's psycopg2.

It changes the machine (installs and purges the package), so it runs only as
root on Debian, and not where a wcfs package is installed already. It needs
the build tools (debhelper, dh-python, lintian, mandoc: setup.sh) and the
network to PyPI and Debian: the build fetches the Python packages that the
package carries, and apt the Debian ones it depends on.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from devtools.procs import is_mounted, unmount_left, wait_for
from devtools.wcfsproc import ROOT
from wcfs_lib.zurl import masked
from zhelp import KiB, Writer, hex16

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DEBIAN_PATH = '/usr/sbin:/usr/bin:/sbin:/bin'   # Debian's python3, not pyenv's or .venv's
INIT = '/etc/init.d/wcfs'
DEFAULTS = '/etc/default/wcfs'
PIDFILE = '/run/wcfs/wcfs.pid'
BUILD_TOOLS = {'dh': 'debhelper', 'dh_python3': 'dh-python', 'lintian': 'lintian',
               'mandoc': 'mandoc', 'fakeroot': 'fakeroot'}
BS = 64 * KiB


def package_state():
    """dpkg's status of the wcfs package, '' when dpkg never heard of it."""
    r = subprocess.run(['dpkg-query', '-W', '-f=${db:Status-Abbrev}', 'wcfs'],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ''


def why_not_here():
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return 'needs root: it installs and purges the wcfs package'
    if not os.path.exists('/etc/debian_version'):
        return 'needs Debian: it builds and installs a .deb'
    if shutil.which('dpkg-buildpackage', path=DEBIAN_PATH) is None:
        return 'needs dpkg-buildpackage (dpkg-dev)'
    state = package_state()
    if state and not state.startswith('un'):
        return ('a wcfs package is installed here (dpkg: %s); this test would replace and purge it'
                % state)
    return None


WHY_NOT_HERE = why_not_here()
pytestmark.append(pytest.mark.skipif(WHY_NOT_HERE is not None, reason=str(WHY_NOT_HERE)))


def debian_env():
    """The environment of an administrator's shell: Debian's PATH, no venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('PYTHON') and k not in ('VIRTUAL_ENV', 'PIP_REQUIRE_VIRTUALENV')}
    env.update(PATH=DEBIAN_PATH, LC_ALL='C.UTF-8', DEBIAN_FRONTEND='noninteractive',
               # Where systemd runs, init-functions hands /etc/init.d/wcfs over to
               # systemctl; this test is about the init script itself.
               _SYSTEMCTL_SKIP_REDIRECT='1')
    return env


def run(argv, timeout=120, check=True, **kw):
    """Run argv as an administrator would; -> CompletedProcess (text, output captured)."""
    r = subprocess.run(argv, env=debian_env(), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError('%s exited with %d:\n%s%s' % (' '.join(map(str, argv)), r.returncode,
                                                           r.stdout[-6000:], r.stderr[-6000:]))
    return r


def copy_tree(dst):
    """Copy the files of this checkout that git would commit (tracked or not
    ignored, as they are in the work tree) to dst; symlinks stay symlinks."""
    if not (ROOT / '.git').exists():
        shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
            '.venv', '__pycache__', '.pytest_cache', '.hypothesis', '*.egg-info'))
        return
    r = subprocess.run(['git', '-C', str(ROOT), 'ls-files', '-z', '--cached', '--others',
                        '--exclude-standard'], capture_output=True, check=True)
    for rel in sorted(set(r.stdout.decode().split('\0')) - {''}):
        src, to = ROOT / rel, dst / rel
        if not os.path.lexists(src):
            continue                            # deleted in the work tree, not yet in git
        to.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), to)
        else:
            shutil.copy2(src, to)


def build(tmp):
    """Build the package from a copy of the tree; -> (.deb, .changes, the copy, its version)."""
    src = tmp / 'src'
    copy_tree(src)
    log = tmp / 'build.log'
    with open(log, 'w') as out:
        r = subprocess.run(['dpkg-buildpackage', '-us', '-uc', '-b'], cwd=src, env=debian_env(),
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                           timeout=600)
    assert r.returncode == 0, 'dpkg-buildpackage failed:\n' + log.read_text()[-8000:]
    version = run(['dpkg-parsechangelog', '-S', 'Version'], cwd=src).stdout.strip()
    # Architecture: any (the carried RelStorage has compiled extensions)
    arch = run(['dpkg-architecture', '-qDEB_HOST_ARCH']).stdout.strip()
    debs = list(tmp.glob('wcfs_%s_%s.deb' % (version, arch)))
    changes = list(tmp.glob('wcfs_%s_*.changes' % version))
    assert len(debs) == 1 and len(changes) == 1, sorted(p.name for p in tmp.iterdir())
    return debs[0], changes[0], src, version


def shipped_paths(deb):
    """The paths the .deb installs, as dpkg-deb -c lists them (./usr/...)."""
    return [line.split()[5] for line in run(['dpkg-deb', '-c', str(deb)]).stdout.splitlines()]


def install(deb):
    """apt-get install the .deb; refresh apt's lists once if Debian's packages are not found."""
    argv = ['apt-get', 'install', '-y', '--no-install-recommends', str(deb)]
    if run(argv, timeout=600, check=False).returncode != 0:
        run(['apt-get', 'update'], timeout=300)
        run(argv, timeout=600)


def configure(zurl, mountpoint, options):
    Path(DEFAULTS).write_text('ZURL="%s"\nMOUNTPOINT="%s"\nOPTIONS="%s"\n'
                              % (zurl, mountpoint, options))


def wcfs_pid(pidfile=PIDFILE):
    """The pid in pidfile (the init script's) if that process is a live wcfs, else None."""
    try:
        pid = int(Path(pidfile).read_text().split()[0])
        stat = Path('/proc/%d/stat' % pid).read_text()
    except (OSError, ValueError, IndexError):
        return None
    comm, state = stat[stat.index('(') + 1:stat.rindex(')')], stat.rsplit(')', 1)[1].split()[0]
    return pid if comm == 'wcfs' and state != 'Z' else None


def cleanup(mountpoint):
    """Whatever happened: stop wcfs, unmount, purge the package."""
    if os.path.exists(INIT):
        run([INIT, 'stop'], timeout=60, check=False)
    pid = wcfs_pid()
    if pid is not None:
        os.kill(pid, 9)
        wait_for(lambda: wcfs_pid() is None, 10, 'wcfs pid %d to die' % pid)
    unmount_left(mountpoint)
    if package_state():
        run(['apt-get', 'purge', '-y', 'wcfs'], timeout=300)


@pytest.fixture(scope='module')
def package(tmp_path_factory):
    """The package built once for the tests of this module; -> (.deb, .changes, the copy, its version)."""
    missing = [pkg for tool, pkg in BUILD_TOOLS.items()
               if shutil.which(tool, path=DEBIAN_PATH) is None]
    assert not missing, 'build tools missing: apt-get install %s (setup.sh)' % ' '.join(missing)
    return build(tmp_path_factory.mktemp('package'))


def test_package_builds_lints_installs_and_serves(package, zeo, tmp_path):
    # The data: one ZBigFile, written before wcfs starts.
    w = Writer(zeo.db())
    block0, block2 = os.urandom(BS), b'end of the file'
    f, oid, tid = w.new_file(BS, {0: block0, 2: block2})
    expected = block0 + bytes(BS) + block2.ljust(BS, b'\0')

    deb, changes, src, version = package
    # Debian's packages for what wcfs imports and does not carry (dh_python3
    # would drop those it cannot map without a word); RelStorage's psycopg2
    # and packaging among them.
    depends = run(['dpkg-deb', '-f', str(deb), 'Depends']).stdout
    for pkg in ('fuse3', 'python3-persistent', 'python3-transaction',
                'python3-zodbpickle', 'python3-zc.lockfile', 'python3-zope.interface',
                'python3-daemon', 'python3-lockfile', 'python3-numpy', 'python3-psycopg2',
                'python3-packaging'):
        assert pkg in depends.replace(',', ' ').split(), 'Depends lacks %s: %s' % (pkg, depends)
    # The carried extensions are for one Python X.Y: the package says which.
    assert 'python3 (<< ' in depends, 'Depends bounds no python3 version: %s' % depends
    # What ships is what runs: of this tree, /usr/lib/wcfs holds wcfs.py and
    # wcfs_lib only (not devtools, tests, bench, demo.py), beside the carried packages.
    shipped = {path.split('/')[4] for path in shipped_paths(deb)
               if path.startswith('./usr/lib/wcfs/') and path.split('/')[4]}
    ours = shipped & {p.name for p in src.iterdir()}
    assert ours == {'wcfs.py', 'wcfs_lib'}, 'the .deb ships of this tree: %s' % sorted(ours)
    # The trigger that tells wcfs of commits, for an administrator's psql -f (man wcfs).
    sql = {p for p in shipped_paths(deb) if p.startswith('./usr/share/wcfs/')}
    assert sql == {'./usr/share/wcfs/', './usr/share/wcfs/wcfs-notify.sql',
                   './usr/share/wcfs/wcfs-notify-remove.sql'}, sorted(sql)

    lint = run(['lintian', str(deb), str(changes)], timeout=600, check=False)
    complaints = [line for line in lint.stdout.splitlines() if line[:2] in ('E:', 'W:')]
    assert lint.returncode == 0 and not complaints, 'lintian:\n' + lint.stdout + lint.stderr
    man = run(['mandoc', '-T', 'lint', '-W', 'warning', str(src / 'man' / 'wcfs.8')], check=False)
    said = man.stdout + man.stderr
    assert man.returncode == 0 and said == '', 'mandoc:\n' + said

    # A mount point that every user can reach, so that allow_other can be seen at work
    # (pytest's tmp_path is private to root).
    mountpoint = Path(tempfile.mkdtemp(prefix='wcfs-package-', dir='/tmp')) / 'mnt'
    os.chmod(mountpoint.parent, 0o755)
    logfile = tmp_path / 'wcfs.log'
    try:
        install(deb)
        assert package_state() == 'ii'
        # debian/changelog and wcfs.py tell the same version: 0.1.0-1 is wcfs 0.1.0.
        upstream = version.rsplit('-', 1)[0]
        assert run(['/usr/sbin/wcfs', '--version']).stdout == 'wcfs %s\n' % upstream
        assert run(['man', '-w', 'wcfs']).stdout.strip() == '/usr/share/man/man8/wcfs.8.gz'
        if shutil.which('systemd-analyze', path=DEBIAN_PATH):
            unit = run(['systemd-analyze', 'verify', '/lib/systemd/system/wcfs.service'],
                       check=False)
            said = unit.stdout + unit.stderr
            assert unit.returncode == 0 and said == '', 'systemd-analyze verify:\n' + said

        # As installed, /etc/default/wcfs leaves the service unconfigured:
        # start says so and exits 0 (postinst starts the service).
        started = run([INIT, 'start'])
        assert 'not configured' in started.stdout + started.stderr
        assert wcfs_pid() is None and not mountpoint.exists()

        configure(zeo.zurl, mountpoint, '-o allow_other --logfile %s' % logfile)
        run([INIT, 'start'], timeout=60)
        # `wcfs -d` returns once the mount serves: no waiting here.
        pid = wcfs_pid()
        assert pid is not None, 'no live wcfs in %s after start' % PIDFILE
        assert is_mounted(mountpoint)
        assert (mountpoint / '.wcfs' / 'zurl').read_text() == zeo.zurl + '\n'
        run([INIT, 'status'])

        bigfile = mountpoint / 'bigfile' / hex16(oid)
        bigfile.mkdir()
        assert (bigfile / 'head' / 'at').read_text() == hex16(tid) + '\n'
        assert (bigfile / 'head' / 'data').read_bytes() == expected
        # allow_other: another user reads it too.
        data = str(bigfile / 'head' / 'data')
        other = run(['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups',
                     'sha256sum', data])
        assert other.stdout.split()[0] == run(['sha256sum', data]).stdout.split()[0]

        # The installed wcfs follows the database.
        f.write_block(1, b'new block 1')
        tid2 = w.commit()
        wait_for(lambda: (bigfile / 'head' / 'at').read_text() == hex16(tid2) + '\n', 10,
                 'head/at to reach %s' % hex16(tid2))
        block1 = (bigfile / 'head' / 'data').read_bytes()[BS:2 * BS]
        assert block1 == b'new block 1'.ljust(BS, b'\0')

        # A second start while it runs does not start another one.
        run([INIT, 'start'], timeout=60)
        assert wcfs_pid() == pid

        run([INIT, 'stop'], timeout=60)
        assert not is_mounted(mountpoint)
        assert not os.path.exists(PIDFILE)
        assert run([INIT, 'status'], check=False).returncode == 3
        assert 'unmounted' in logfile.read_text()
    finally:
        try:
            cleanup(mountpoint)
        finally:
            log = logfile.read_text() if logfile.exists() else ''
            print('--- wcfs log (%s):\n%s' % (logfile, log))
            shutil.rmtree(mountpoint.parent, ignore_errors=True)
    assert package_state() in ('', 'un')
    assert not os.path.exists(DEFAULTS) and not os.path.exists('/usr/lib/wcfs')


PROBE_CARRIED = '''
import os, sys
sys.path.insert(0, '/usr/lib/wcfs')
import BTrees.OOBTree, perfmetrics, relstorage.cache.cache
for m in (BTrees, perfmetrics, relstorage):
    print(os.path.dirname(os.path.dirname(m.__file__)))
print('python' if BTrees.OOBTree.OOBTree is BTrees.OOBTree.OOBTreePy else 'compiled')
'''


def test_installed_package_serves_and_follows_postgres(package, postgres, tmp_path):
    """postgres:// and zconfig:// with nothing but the package and what apt
    brings for it: RelStorage (carried) and psycopg2 (Debian's)."""
    deb = package[0]
    w = Writer(postgres.db())
    f, oid, tid = w.new_file(BS, {0: b'block 0', 1: b'block 1'})
    expected = bytearray(b'block 0'.ljust(BS, b'\0') + b'block 1'.ljust(BS, b'\0'))
    mountpoint, pidfile, logfile = tmp_path / 'mnt', tmp_path / 'wcfs.pid', tmp_path / 'wcfs.log'
    mountpoint.mkdir()
    try:
        install(deb)
        assert package_state() == 'ii'
        # What ships is what runs: none of this tree's test or dev modules.
        listed = run(['dpkg', '-L', 'wcfs']).stdout.split()
        dev = [p for p in listed if p.split('/')[:5] in (['', 'usr', 'lib', 'wcfs', d]
                                                         for d in ('tests', 'devtools', 'bench'))]
        assert not dev, 'dpkg -L wcfs lists test or dev modules: %s' % dev[:5]
        # /usr/sbin/wcfs's Python finds the carried BTrees (not Debian's older
        # one) and RelStorage, with their compiled parts: BTrees falls back to
        # pure Python without a word when its extensions do not load.
        probe = run(['/usr/bin/python3', '-I', '-c', PROBE_CARRIED]).stdout.split()
        assert probe == ['/usr/lib/wcfs'] * 3 + ['compiled'], probe

        for n, zurl in enumerate([postgres.zurl, postgres.zconfig()], start=2):
            # `wcfs -d` returns once the mount serves.
            run(['/usr/sbin/wcfs', '-d', '--pidfile', str(pidfile), '--logfile', str(logfile),
                 zurl, str(mountpoint)], timeout=60)
            pid = wcfs_pid(pidfile)
            assert pid is not None, '%s: no live wcfs in %s' % (masked(zurl), pidfile)
            assert (mountpoint / '.wcfs' / 'zurl').read_text() == masked(zurl) + '\n'
            bigfile = mountpoint / 'bigfile' / hex16(oid)
            bigfile.mkdir()
            assert (bigfile / 'head' / 'at').read_text() == hex16(tid) + '\n'
            assert (bigfile / 'head' / 'data').read_bytes() == expected

            new = b'block 1, commit %d' % n
            f.write_block(1, new)
            tid = w.commit()
            wait_for(lambda: (bigfile / 'head' / 'at').read_text() == hex16(tid) + '\n', 10,
                     '%s: head/at to reach %s' % (masked(zurl), hex16(tid)))
            expected[BS:] = new.ljust(BS, b'\0')
            assert (bigfile / 'head' / 'data').read_bytes() == expected

            os.kill(pid, 15)
            wait_for(lambda: wcfs_pid(pidfile) is None and not is_mounted(mountpoint), 30,
                     '%s: wcfs pid %d to unmount and exit on SIGTERM' % (masked(zurl), pid))
        # Debian's psycopg2 lets wcfs read records in binary (pqbinary.py)
        assert 'read as text' not in logfile.read_text()
    finally:
        try:
            pid = wcfs_pid(pidfile)
            if pid is not None:
                os.kill(pid, 9)
                wait_for(lambda: wcfs_pid(pidfile) is None, 10, 'wcfs pid %d to die' % pid)
            unmount_left(mountpoint)
            if package_state():
                run(['apt-get', 'purge', '-y', 'wcfs'], timeout=300)
        finally:
            log = logfile.read_text() if logfile.exists() else ''
            print('--- wcfs log (%s):\n%s' % (logfile, log))
    assert package_state() in ('', 'un')
    assert not os.path.exists('/usr/lib/wcfs')
