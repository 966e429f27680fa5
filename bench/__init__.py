"""Benchmarks (installed as cream_rt.bench): speed and parity against plain references."""
