from setuptools import find_packages, setup

setup(
    name='wcfs',
    version='0.1.0',
    description='FUSE filesystem exposing ZBigFile data of a ZODB database as plain files',
    license='GPL-3.0-or-later',
    python_requires='>=3.11',
    py_modules=['wcfs'],
    packages=find_packages(include=['wcfs_lib', 'wcfs_lib.*']),
    install_requires=[
        'ZODB',
        'ZEO',
        'zodburi',
        'mfusepy',
        'zodbpickle',
        'BTrees',
        'persistent',
        'transaction',
        'python-daemon',
        'lockfile',
        'numpy',
    ],
    # postgres:// and zconfig:// ZURLs of RelStorage on PostgreSQL. An extra,
    # not a dependency: ZEO is the usual deployment, and psycopg2 builds
    # against libpq with a C compiler, which a ZEO-only machine need not have.
    extras_require={
        'postgresql': ['RelStorage[postgresql]'],
    },
    entry_points={
        'console_scripts': ['wcfs=wcfs:main'],
    },
)
