"""Benchmark tasks, one typed class per file (a subclass of `base.Benchmark`), each named by `_target_` in its
own config file (conf/benchmark/*.yaml). A suite is a list of these objects (`evaluation.suite.evaluate_suite`)."""
