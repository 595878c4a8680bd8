"""Benchmarks of quantface-jax: speed, memory and quality measurements, run as modules
(``python -m benchmarks.<name>``; ``python -m benchmarks.gpu`` drives the GPU suites). Every results
file is written by `benchmarks.results` in one schema (see benchmarks/README.md)."""
