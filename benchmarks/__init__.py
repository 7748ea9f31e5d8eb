"""The benchmark suite: ``python -m benchmarks.run [--quick]`` (``make bench``); see benchmarks/README.md."""
