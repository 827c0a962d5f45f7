"""Datasets, collators and benchmark readers: plain PyTorch / datasets code."""
