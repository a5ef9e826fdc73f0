"""Byte ranges of a file: half-open [start, stop), sorted and merged; the
arithmetic that wcfs and its clients both do on δR (SPEC 4.2)."""


def blocks_to_ranges(blocks, blksize):
    """Set of blocks -> merged half-open byte ranges [(start, stop)]."""
    return merge_ranges((blk * blksize, (blk + 1) * blksize) for blk in blocks)


def merge_ranges(ranges):
    out = []
    for start, stop in sorted(ranges):
        if start >= stop:
            continue
        if out and out[-1][1] >= start:
            if stop > out[-1][1]:
                out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out


def whole(size):
    """The one range of a whole file of `size` bytes."""
    return [(0, size)] if size else []


def resized_range(old_size, new_size):
    """The bytes that appear or disappear as a file's size changes (holes
    included): one range whatever the sizes, never a list of blocks."""
    if old_size == new_size:
        return []
    return [(min(old_size, new_size), max(old_size, new_size))]


def clip(ranges, lo, hi):
    """The parts of `ranges` within [lo, hi), merged."""
    return merge_ranges((max(a, lo), min(b, hi)) for a, b in ranges)


def subtract(ranges, minus):
    """The parts of `ranges` outside every range of `minus`, merged."""
    out = []
    minus = merge_ranges(minus)
    for start, stop in merge_ranges(ranges):
        for a, b in minus:
            if b <= start or a >= stop:
                continue
            if a > start:
                out.append((start, a))
            start = max(start, b)
            if start >= stop:
                break
        if start < stop:
            out.append((start, stop))
    return out
