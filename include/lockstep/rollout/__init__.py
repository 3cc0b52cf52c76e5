"""Staged promotion: pure strategies and gates, log analysis, records, the steps and the deferring operator."""
