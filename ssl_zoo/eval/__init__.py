"""The evaluation stage: one protocol (linear, kNN, zero-shot, retrieval, diagnostics) on
frozen features, for checkpoints of every method and for weights made elsewhere."""
