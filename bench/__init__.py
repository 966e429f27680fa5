"""The repository's benchmarks, studies and test references (not installed; run from a checkout as
`python -m bench.NAME`). What `cream bench` itself runs is `cream_rt.benchmark`."""
