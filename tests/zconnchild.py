"""A reader process for tests/test_zconn.py: a ZODB connection of its own and
the wcfs array of root['A'], checked at every transaction boundary.

    python zconnchild.py ZURL MOUNTPOINT [at=TID]

Until its stdin closes it loops: a transaction boundary, then one line

    <at> <shape> <sha1 at start> <sha1 a moment later> <first's shape> <sha1 of first>

where `at` is the connection's snapshot, the sha1s are of a fresh
`client.asarray(root['A'])` read twice in the same transaction (other
processes commit in between), and `first` is the array made at the first
boundary, which follows the connection in its own shape. With at=TID the
connection is historical (db.open(at=...)). Prints `ready` first.
"""

import hashlib
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import transaction  # noqa: E402
import ZODB  # noqa: E402
import zodburi  # noqa: E402
from ZODB.utils import p64  # noqa: E402

from wcfs_lib import client, zbig  # noqa: E402
from wcfs_lib.client.zconn import snapshot_at  # noqa: E402

PAUSE = 0.01        # seconds between the two reads of one transaction: commits land in it


def sha1(a):
    return hashlib.sha1(a.tobytes(order='A')).hexdigest()


def shape(a):
    return 'x'.join(str(n) for n in a.shape) or '-'


def stdin_closed():
    if not select.select([0], [], [], 0)[0]:
        return False
    return not os.read(0, 100)


def main(zurl, mountpoint, *opts):
    zbig.install()
    factory, dbkw = zodburi.resolve_uri(zurl)
    db = ZODB.DB(factory(), **dbkw)
    at = dict(o.split('=', 1) for o in opts).get('at')
    tm = transaction.TransactionManager()
    conn = db.open(tm, at=p64(int(at, 16)) if at else None)
    wc = client.connect(mountpoint)
    print('ready', flush=True)
    first = None
    while not stdin_closed():
        tm.begin()
        a = client.asarray(conn.root()['A'], wc=wc)
        if first is None:
            first = a
        h1 = sha1(a)
        time.sleep(PAUSE)
        print('%016x %s %s %s %s %s' % (snapshot_at(conn), shape(a), h1, sha1(a),
                                        shape(first), sha1(first)), flush=True)
    conn.close()
    db.close()


if __name__ == '__main__':
    main(*sys.argv[1:])
