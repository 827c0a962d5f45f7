"""Backbones, prompts, pooling, the embedder and LoRA: plain PyTorch / transformers code."""
