"""Production settings plus the benchmark's one-INSERT ceiling endpoint (bench.urls).

Used only by the processes `make bench` starts; everything else is config.settings, read from the
environment the benchmark sets (DEBUG off, PostgreSQL, a Redis broker, a shared Redis cache).
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
