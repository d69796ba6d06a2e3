"""`make bench`: the measured paths of the platform against a pgbench baseline (see bench.run)."""
