from setuptools import setup

setup(
    name='wcfs',
    version='0.1.0',
    description='FUSE filesystem exposing ZBigFile data of a ZODB database as plain files',
    license='GPL-3.0-or-later',
    python_requires='>=3.11',
    py_modules=['wcfs'],
    packages=['wcfs_lib', 'wcfs_lib.zstorage'],
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
    entry_points={
        'console_scripts': ['wcfs=wcfs:main'],
    },
)
