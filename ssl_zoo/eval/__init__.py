"""Evaluation of frozen backbones: feature extraction and kNN classification."""
