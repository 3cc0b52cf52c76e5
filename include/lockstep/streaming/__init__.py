"""The streaming loader: record changes from a broker stream, through the store's write path.

At least once and idempotent: a message's id is stored with its change, so a redelivery
changes nothing; a message is acknowledged only after its transaction commits.
"""
