"""The long-term holdback group: a sticky share of users frozen on one version.

Rollouts never move these users and retention never deletes their version; a scheduled
report gives the lift of the current champion over the holdback, per day.
"""
