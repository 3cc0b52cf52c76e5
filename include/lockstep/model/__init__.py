"""Embedding models: the built-in family, the MLflow registry seam, offline evaluation."""
