"""What `cream bench` and `cream demo` time with: the engines, interleaved latency measurement,
the runner and the machine record. The repository's own benchmarks and studies (bench/) are not
part of the package."""
