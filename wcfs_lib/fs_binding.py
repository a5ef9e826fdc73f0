"""mfusepy on libfuse3: the one place that imports it.

mfusepy picks libfuse2 when both are installed unless FUSE_LIBRARY_NAME says
otherwise, and libfuse2 has neither poll nor explicit data invalidation.
"""

import os

os.environ.setdefault('FUSE_LIBRARY_NAME', 'fuse3')

import mfusepy as fuse  # noqa: E402  (FUSE_LIBRARY_NAME must be set first)

libfuse = fuse._libfuse

if fuse.fuse_version_major != 3:
    raise ImportError('wcfs needs libfuse 3, mfusepy loaded libfuse %d' % fuse.fuse_version_major)
