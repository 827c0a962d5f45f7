"""Benchmark evaluation in plain PyTorch: embed each benchmark's inputs once, score them with
`mmembed.metrics`, and write the numbers with their protocol (`suite.evaluate_suite`)."""
