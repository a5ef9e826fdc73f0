"""The kernel side: the FUSE operations (path to node, the model, errno), the
libfuse binding, kernel cache notifications, mount points."""
