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
