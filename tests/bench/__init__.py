"""Tests of the benchmarks' bookkeeping (never their timings)."""
