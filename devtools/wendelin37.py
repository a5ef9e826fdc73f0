"""wendelin.core 0.13 in a helper process, to check the format against the real thing.

wendelin.core installs from PyPI on Python <= 3.7 only. ./setup.sh makes
VENV (.venv37 at the top of the tree, git-ignored) with pyenv's Python 3.7
where it can: numpy < 1.22, wendelin.core 0.13 (built here), ZODB and ZEO
< 6. The helper talks to the same ZEO server as the test, by its address.

    reason = unavailable()              # None, or why VENV cannot run wendelin.core
    out = run(script, zeo.addr, 'a1')   # stdout of script run in VENV

run() executes the text of script as __main__ in VENV's python, with these
globals besides the builtins:

    ZEO_ADDR    (host, port) of the ZEO server
    open_db()   a ZODB.DB on a new ZEO ClientStorage of ZEO_ADDR; the script closes it
    ARGS        the further arguments of run(), as strings

env adds environment variables (e.g. WENDELIN_CORE_ZBLK_FMT=ZBlk1, which
wendelin.core reads at import). A script that exits non-zero, or outlives
timeout (then it is killed), raises WendelinError with its stderr.
"""

import functools
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / '.venv37'
PYTHON = VENV / 'bin' / 'python'
TIMEOUT = 120

# argv: script path, host, port, ARGS...
_BOOT = '''\
import sys
import ZEO.ClientStorage
import ZODB
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ZEO_ADDR = (host, port)
g = {'__name__': '__main__', 'ZEO_ADDR': ZEO_ADDR, 'ARGS': sys.argv[4:],
     'open_db': lambda: ZODB.DB(ZEO.ClientStorage.ClientStorage(ZEO_ADDR))}
with open(path) as f:
    code = compile(f.read(), path, 'exec')
exec(code, g)
'''


class WendelinError(Exception):
    """A script run by run() failed."""


@functools.lru_cache(maxsize=None)
def unavailable():
    """-> None when VENV runs wendelin.core 0.13, else the reason it cannot."""
    if not PYTHON.exists():
        return ('%s is missing: ./setup.sh makes it where pyenv has Python 3.7 '
                '(see what it printed)' % VENV)
    check = 'import wendelin.bigarray.array_zodb, ZEO, pkg_resources as p; ' \
            'print(p.get_distribution("wendelin.core").version)'
    p = subprocess.run([str(PYTHON), '-c', check], capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode != 0:
        return '%s cannot import wendelin.core and ZEO: %s' % (PYTHON, p.stderr.strip()[-500:])
    if p.stdout.strip() != '0.13':
        return '%s has wendelin.core %s, not 0.13' % (PYTHON, p.stdout.strip())
    return None


def run(script, zeo_addr, *args, env=None, timeout=TIMEOUT):
    """Run script (Python source text) in VENV against the ZEO server at zeo_addr; -> its stdout."""
    reason = unavailable()
    if reason:
        raise WendelinError(reason)
    with tempfile.NamedTemporaryFile('w', suffix='.py', prefix='wendelin37-') as f:
        f.write(script)
        f.flush()
        argv = [str(PYTHON), '-c', _BOOT, f.name, zeo_addr[0], str(zeo_addr[1])] + [str(a) for a in args]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               env=dict(os.environ, **(env or {})))
        except subprocess.TimeoutExpired as e:
            raise WendelinError('wendelin.core script outlived %ss; stderr:\n%s'
                                % (timeout, e.stderr or '')) from None
    if p.returncode != 0:
        raise WendelinError('wendelin.core script exited with %d; stderr:\n%s'
                            % (p.returncode, p.stderr))
    return p.stdout
