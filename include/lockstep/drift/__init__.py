"""Drift checks: the statistics (pure) and the steps the drift DAG calls."""
