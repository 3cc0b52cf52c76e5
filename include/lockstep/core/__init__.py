"""Foundations every pipeline shares: errors, configuration, atomic files, fault injection, locks."""
