"""What the tests, the demo and the benchmarks start and end on this machine:
never installed (not in setup.py, not in the Debian package), never imported
by wcfs_lib.

procs       free ports, spawning, ending by pid, waiting for a condition, left mounts
zeoserver   a private ZEO server (runzeo)
pgcluster   a private PostgreSQL cluster, and one RelStorage database in it
wcfsproc    a wcfs process on one mount point
served      what both database servers give: ZODB.DBs that write and load zbig's classes
py2str      ZBigFiles whose state is Python 2 str, as Python 2 databases hold it
wendelin37  wendelin.core 0.13 on Python 3.7 in a helper process (.venv37), run against a ZEO server
"""
