"""On-demand benchmarks (not part of the test suite); figures go into ``bench/RESULTS.md``."""
