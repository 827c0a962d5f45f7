"""Benchmark evaluation in plain PyTorch: each benchmark task is one typed class (`benchmarks/`, named by `_target_`
in conf/benchmark/); it embeds its inputs once, scores them with `mmembed.metrics`, and `suite.evaluate_suite`
writes the numbers with their protocol."""
