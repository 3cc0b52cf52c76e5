"""The retraining pipeline: data validation, fit, and the steps the retrain DAG calls."""
