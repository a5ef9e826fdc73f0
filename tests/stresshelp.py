"""The writer of the isolation stress tests and its log (test_isolation_stress,
test_drop_caches): random commits to one ZBigFile, each commit's content
logged by tid as block hashes, which readers in other processes check their
views against."""

import ctypes
import hashlib
import json
import os
import random
import sys

BS = 64 * 1024


def block_hashes(data, blksize=BS):
    return [hashlib.sha1(data[i:i + blksize]).hexdigest() for i in range(0, len(data), blksize)]


class Writer:
    """Random changes to one ZBigFile, each commit's content logged by tid."""

    def __init__(self, database, logpath, seed):
        from wcfs_lib import zbig
        from zhelp import Writer as ZWriter

        self.rng = random.Random(seed)
        self.w = ZWriter(database.db())
        self.f = zbig.ZBigFile(BS)
        for blk in range(24):
            self.f.write_block(blk, self.rng.randbytes(BS), self.rng.choice(zbig.KINDS))
        self.oid, tid = self.w.add(self.f)
        self.log = open(logpath, 'a')
        self.kinds = {}                 # what each commit did, for the report
        self.record(tid)

    def record(self, tid):
        data = self.f.read()
        self.log.write(json.dumps({'tid': tid, 'size': len(data),
                                   'blocks': block_hashes(data)}) + '\n')
        self.log.flush()

    def step(self):
        """One random commit."""
        rng, f = self.rng, self.f
        nblk = f.size() // BS
        kind = rng.choice(('ZBlk0', 'ZBlk1'))
        what = rng.choices(['block', 'short', 'chunks', 'hole', 'grow', 'shrink',
                            'blktab', 'other'], [30, 10, 30, 8, 8, 8, 1, 5])[0]
        if nblk < 4 and what in ('shrink', 'hole'):
            what = 'grow'
        if nblk > 80 and what == 'grow':
            what = 'shrink'
        if what == 'block':
            for _ in range(rng.randint(1, 4)):
                f.write_block(rng.randrange(nblk), rng.randbytes(BS), kind)
        elif what == 'short':           # trailing zeros, stripped when stored
            f.write_block(rng.randrange(nblk), rng.randbytes(rng.randrange(1, BS)), kind)
        elif what == 'chunks':          # a few bytes here and there: one ZData of a ZBlk1
            for _ in range(rng.randint(1, 5)):
                f.write(rng.randrange(nblk * BS - 100), rng.randbytes(rng.randint(1, 100)), kind)
        elif what == 'hole':
            f.delete_block(rng.randrange(nblk - 1))
        elif what == 'grow':            # past the end, often leaving holes
            f.write_block(nblk + rng.choice((0, 0, 1, 5, 20)), rng.randbytes(BS), kind)
        elif what == 'shrink':
            f.truncate(rng.randint(nblk // 2, nblk - 1) * BS)
        elif what == 'blktab':
            f.replace_blktab()
        if what == 'other':
            tid = self.w.touch_other()
        else:
            tid = self.w.commit()
        self.kinds[what] = self.kinds.get(what, 0) + 1
        self.record(tid)
        return tid


def move_views(wc, oid, views, recs, rng, close_chance):
    """A reader's round of moves over the log's records `recs`: view
    `latest` to the last tid, `lagging` now and then to a random one; a
    view is now and then closed and opened anew. -> ['open' or 'resync']."""
    pick = {'latest': recs[-1]}
    if 'lagging' not in views or rng.random() < 0.15:
        pick['lagging'] = rng.choice(recs)
    moves = []
    for name, rec in pick.items():
        view = views.get(name)
        if view is not None and rng.random() < close_chance:
            view.close()
            view = None
        if view is None:
            views[name] = wc.open(oid, at=rec['tid'])
            moves.append('open')
        else:
            view.resync(rec['tid'])
            moves.append('resync')
    return moves


def read_log(path):
    """-> the complete records of the log, oldest first."""
    with open(path) as f:
        text = f.read()
    return [json.loads(line) for line in text.split('\n')[:-1]]


# ---- reading a view without dying of SIGBUS ----

def cached_size(path):
    """The size the kernel holds for path, without asking wcfs; or why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)     # struct statx; stx_size at offset 40
    AT_FDCWD, AT_STATX_DONT_SYNC, STATX_SIZE = -100, 0x4000, 0x200
    if libc.statx(AT_FDCWD, os.fsencode(path), AT_STATX_DONT_SYNC, STATX_SIZE, buf) != 0:
        return os.strerror(ctypes.get_errno())
    return int.from_bytes(buf.raw[40:48], sys.byteorder)


def mappings(lo, hi):
    """The lines of /proc/self/maps over [lo, hi), offsets made relative to lo."""
    out = []
    with open('/proc/self/maps') as f:
        for line in f:
            fields = line.split()
            a, b = (int(x, 16) for x in fields[0].split('-'))
            if b > lo and a < hi:
                out.append('%d-%d +%s %s' % (a - lo, b - lo, int(fields[2], 16),
                                             ' '.join(fields[5:])))
    return out


def probe(view, mem, mountpoint):
    """-> the sha1 of each block of the view, read through /proc/self/mem;
    or, where a page would be SIGBUS, a dict that says where and why."""
    with view._lock:
        base, size, at, overlaid = view._base, view.size, view.at, list(view._overlaid)
    data = bytearray()
    for off in range(0, size, BS):
        want = min(BS, size - off)
        try:
            chunk = os.pread(mem, want, base + off)
        except OSError as e:
            chunk, error = b'', e.strerror
        else:
            error = 'read %d bytes of %d' % (len(chunk), want)
        if len(chunk) != want:
            fdir = os.path.join(mountpoint, view.name)
            with open(os.path.join(fdir, 'head', 'at')) as f:
                head_at = f.read().strip()
            return {'offset': off + len(chunk), 'error': error, 'at': '%016x' % at,
                    'size': size, 'overlaid': overlaid, 'mappings': mappings(base, base + size),
                    'kernel head/data size': cached_size(os.path.join(fdir, 'head', 'data')),
                    'kernel @at/data size': cached_size(os.path.join(fdir, '@%016x' % at,
                                                                     'data')),
                    'head/at': head_at}
        data += chunk
    return block_hashes(bytes(data))
