#!/usr/bin/env python3
"""wcfs: serve the ZBigFiles of a ZODB database as plain files (FUSE).

This module is the entry point: it parses the command line, sets up logging
and signals, and runs the server of wcfs_lib.service.server. See `man wcfs`.
"""

import argparse
import logging
import os
import signal
import sys

__version__ = '0.1.0'

DESCRIPTION = """\
Serve the data of every ZBigFile of the ZODB database at ZURL as plain files
under MOUNTPOINT: bigfile/<oid>/head/data (latest), bigfile/<oid>/@<tid>/data
(as of a transaction), head/at and head/invalidations (the isolation protocol).
ZURL is zeo://HOST:PORT, file:///PATH/Data.fs, postgres://USER@HOST:PORT/DB
(RelStorage) or zconfig:///PATH."""

EPILOG = """\
exit status: 0 success, 1 runtime failure, 2 usage error.
See wcfs(8) for the filesystem layout and the invalidation protocol."""

AUTOEXIT_DEFAULT = 60.0
MAX_DB_CONNECTIONS = 16     # PostgreSQL allows 100 by default, for every client


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def positive(text):
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


positive.__name__ = 'positive number'


def count(text):
    value = int(text)
    if not 1 <= value <= MAX_DB_CONNECTIONS:
        raise ValueError(text)
    return value


count.__name__ = 'number of connections (1..%d)' % MAX_DB_CONNECTIONS


def fuse_options(text):
    """-o a,b=c -> {'a': True, 'b': 'c'}"""
    opts = {}
    for item in filter(None, text.split(',')):
        key, eq, value = item.partition('=')
        opts[key] = value if eq else True
    return opts


fuse_options.__name__ = 'mount option list'


def make_parser():
    p = Parser(prog='wcfs', description=DESCRIPTION, epilog=EPILOG,
               usage='wcfs [options] ZURL MOUNTPOINT',
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('zurl', metavar='ZURL', help='the database: zeo://HOST:PORT, file:///PATH/Data.fs, '
                   'postgres://USER[:PASS]@HOST:PORT/DB or zconfig:///PATH')
    p.add_argument('mountpoint', metavar='MOUNTPOINT', help='an existing directory to mount on')
    p.add_argument('--version', action='version', version='wcfs ' + __version__)
    p.add_argument('-d', '--daemon', action='store_true',
                   help='detach once the filesystem serves; write a pid file')
    p.add_argument('--pidfile', metavar='PATH',
                   help='pid file for -d, in a directory no other user owns or may write '
                        '(default /run/wcfs/<real path of the mount point, / as ->.pid as root)')
    p.add_argument('--debug', action='store_true',
                   help='log every filesystem request and protocol message, through the log')
    p.add_argument('--logfile', metavar='PATH',
                   help='log to this file instead of stderr, or syslog with -d (SIGHUP reopens it)')
    p.add_argument('--autoexit', metavar='SECONDS', type=positive, nargs='?', const=AUTOEXIT_DEFAULT,
                   help='unmount and exit once nothing under the mount has been open for '
                        'SECONDS (default 60); write it as --autoexit=SECONDS')
    p.add_argument('--kill-timeout', metavar='SECONDS', type=positive, default=30.0,
                   help='how long a subscribed client may take to ack before it is killed (30)')
    p.add_argument('--revdir-timeout', metavar='SECONDS', type=positive, default=60.0,
                   help='how long an unused @<tid>/ directory lives (60)')
    p.add_argument('--db-timeout', metavar='SECONDS', type=positive, default=30.0,
                   help='how long a request waits for the database before EIO, '
                        'and start-up waits for it (30)')
    p.add_argument('--db-connections', metavar='N', type=count, default=8,
                   help='RelStorage: at most N database connections for loads (1..16), '
                        'N+3 in all with the two that poll and the first (8)')
    p.add_argument('--db-poll-interval', metavar='SECONDS', type=positive, default=0.01,
                   help='RelStorage: how often to ask the database for new commits (0.01)')
    p.add_argument('-o', dest='fuse_options', metavar='OPT[,OPT...]', type=fuse_options,
                   action='append', default=[], help='extra FUSE mount options, e.g. allow_other')
    return p


def parse_args(argv):
    # `--autoexit ZURL MOUNTPOINT` must not take ZURL as its value.
    argv = ['--autoexit=%g' % AUTOEXIT_DEFAULT if a == '--autoexit' else a for a in argv]
    opts = make_parser().parse_args(argv)
    merged = {}
    for d in opts.fuse_options:
        merged.update(d)
    opts.fuse_options = merged
    return opts


def setup_logging(opts, handler):
    handler.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s'))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if opts.debug else logging.INFO)
    for noisy in ('ZEO', 'txn'):
        logging.getLogger(noisy).setLevel(logging.DEBUG if opts.debug else logging.WARNING)
    # RelStorage logs a traceback for every failed connection; wcfs says
    # itself, in one line, that the database is away
    logging.getLogger('relstorage').setLevel(logging.DEBUG if opts.debug else logging.CRITICAL)
    # mfusepy ('fuse'): its DEBUG lines repeat the request lines of --debug,
    # with a traceback for every errno; its errors still come through.
    logging.getLogger('fuse').setLevel(logging.WARNING)


def reopen_log(handler):
    if isinstance(handler, logging.FileHandler):
        handler.acquire()
        try:
            handler.close()
            handler.stream = handler._open()
        finally:
            handler.release()


def install_signals(srv):
    """Signal handlers only record what was asked: the server's timer loop
    acts on it (a handler runs in the main thread between two bytecodes,
    maybe inside a log call holding the log's lock)."""
    signal.signal(signal.SIGTERM, lambda *_: srv.request_shutdown())
    signal.signal(signal.SIGINT, lambda *_: srv.request_shutdown())
    signal.signal(signal.SIGHUP, lambda *_: srv.request_log_reopen())


def serve(opts, handler, report):
    """Start the server, report(None) once it serves or report(why) if it
    cannot; serve until SIGTERM/SIGINT/autoexit. -> exit code."""
    from wcfs_lib.service import server
    setup_logging(opts, handler)
    srv = server.Server(opts, reopen_log=lambda: reopen_log(handler))
    install_signals(srv)
    try:
        srv.start()
    except server.UsageError as e:
        report(str(e))
        return 2
    except server.START_ERRORS as e:
        if type(handler) is not logging.StreamHandler:     # else report() says it on stderr
            logging.getLogger('wcfs').error('%s', e)
        report(str(e))
        return 1
    report(None)
    return srv.serve()


def main(argv=None):
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print('wcfs: %s (see wcfs --help)' % e, file=sys.stderr)
        return 2
    from wcfs_lib.service import daemon, server
    # The real path: the default pid file and the /proc fd links of clients
    # name the mount point so, whichever path to it was given.
    opts.mountpoint = os.path.realpath(opts.mountpoint)
    if opts.logfile:
        opts.logfile = os.path.abspath(opts.logfile)
    try:
        server.check_environment()
        server.check_zurl(opts.zurl)
    except server.UsageError as e:
        print('wcfs: %s' % e, file=sys.stderr)
        return 2
    if not opts.daemon:
        handler = logging.FileHandler(opts.logfile) if opts.logfile else logging.StreamHandler()

        def report(message):
            if message is not None:
                print('wcfs: %s' % message, file=sys.stderr)
        return serve(opts, handler, report)

    pidfile = os.path.abspath(opts.pidfile or daemon.default_pidfile(opts.mountpoint))
    try:
        daemon.claim_pidfile(pidfile)
    except daemon.PidFileError as e:
        print('wcfs: %s' % e, file=sys.stderr)
        return 1
    return daemon.detach(pidfile, lambda report: serve(
        opts, daemon.daemon_log_handler(opts.logfile), report))


if __name__ == '__main__':
    sys.exit(main())
