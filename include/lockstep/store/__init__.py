"""The record store and its tables: records and change log, routing table, schema, database, demo corpus."""
