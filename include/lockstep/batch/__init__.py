"""Batch serving: top-k per key precomputed for each serving version into the operational table.

Other systems read the table (``GET /related/{record_id}``, ``GET /recommendations/{user_id}``)
for the version routing assigns to the caller; a version takes batch traffic only once its
rows are complete, so the table moves in lockstep with the model.
"""
