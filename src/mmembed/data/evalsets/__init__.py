"""Readers for evaluation benchmarks in their original, unchanged file formats.

One module per family: `sts` (STS12-16, STS-B, SICK-R), `captions` (COCO JSON, Karpathy splits,
Flickr8k-style CSV), `cir` (CIRR, FashionIQ), `zeroshot` (class list + images). Missing or
incomplete folders raise `BenchmarkLayoutError` (from `layout`) naming the path and the layout.
"""
