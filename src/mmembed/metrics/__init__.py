"""torchmetrics Metrics for the evaluation protocols (retrieval recall, STS Spearman, accuracy)."""
