"""ZBigFiles written through a ZODB.DB and read back: the steps both the
writer's tests and the reader's round trip take, and the scripts of
operations they both run.

db, in store and commit, is a ZODB.DB with .tm (its own transaction
manager) and .conn (a connection of it), as the `db` fixtures make it.
"""

import random

from ZODB.utils import u64

MiB = 1 << 20


def store(db, f):
    """Put f in the root and commit; -> the tid."""
    db.conn.root()['f'] = f
    return commit(db)


def commit(db):
    db.tm.commit()
    return u64(db.storage.lastTransaction())


def oid(obj):
    return u64(obj._p_oid)


def randbytes(n, seed=0):
    return random.Random(seed).randbytes(n)


# ---- whole-file operations: (method, *args) of ZBigFile, in order ----

B = 4096
SCRIPTS = {
    'grow by writes': [('write', 0, b'abc'), ('write', 3 * B - 2, b'xyzw'),
                       ('write', 10 * B, b'\xff' * (2 * B + 5), 'ZBlk1')],
    'write inside a ZBlk1': [('write_block', 0, randbytes(B), 'ZBlk1', 1024),
                             ('write_block', 1, randbytes(B, 1), 'ZBlk1', 1024),
                             ('write', 100, b'\0' * 1500, 'ZBlk1'), ('write', B + 3, b'q', 'ZBlk1')],
    'switch kinds': [('write_block', 2, b'zero', 'ZBlk0'), ('write_block', 2, b'one', 'ZBlk1'),
                     ('write_block', 2, b'zero again', 'ZBlk0')],
    'holes and shrink': [('write', 0, randbytes(6 * B)), ('delete_block', 2),
                         ('delete_block', 5), ('truncate', 3 * B), ('truncate', 0)],
    'truncate past holes': [('write_block', 0, b'a'), ('write_block', 7, b'b'), ('truncate', 4 * B)],
    'set_blksize up': [('write', 0, randbytes(5 * B)), ('delete_block', 1), ('set_blksize', 4 * B)],
    'set_blksize down': [('set_blksize', 3 * B, 'ZBlk1'), ('write_block', 0, randbytes(2 * B + 5), 'ZBlk1'),
                         ('set_blksize', B, 'ZBlk1'), ('set_blksize', 2 * B)],
    'set_blksize keeps trailing zeros': [('write_block', 3, b''), ('set_blksize', 8 * B)],
    'replace_blktab': [('write_block', 0, b'a', 'ZBlk1'), ('write_block', 4, b'b'),
                       ('replace_blktab',), ('write', B, b'c', 'ZBlk1')],
}
