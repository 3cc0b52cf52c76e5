"""--source URLs: what they name, and the key that identifies a stream's messages in the store."""

from __future__ import annotations

import pytest

from lockstep.streaming.sources import SourceURLError, parse_source_url


def test_a_redis_url_names_host_port_stream_database_and_credentials():
    where = parse_source_url("redis://loader:s%40cret@cache.internal:6380/records%2Fv2?db=3")
    assert (where.host, where.port, where.stream, where.db) == ("cache.internal", 6380, "records/v2", 3)
    assert (where.username, where.password) == ("loader", "s@cret")


def test_the_key_leaves_out_credentials_and_fills_in_the_default_port():
    assert parse_source_url("redis://:pw@h/records").key == "redis://h:6379/records"
    assert parse_source_url("redis://h:6379/records").key == parse_source_url("redis://h/records").key


@pytest.mark.parametrize(("url", "problem"), [
    ("redis://h/records?database=1", "the only query option is db=N"),
    ("rediss://h/records", "the scheme must be redis:// or kafka://, got 'rediss'"),
    (f"redis://h/{'s' * 300}", "the limit is 256"),
])
def test_a_url_that_names_no_usable_stream_is_refused_naming_why(url, problem):
    with pytest.raises(SourceURLError) as refused:
        parse_source_url(url)
    assert problem in str(refused.value)
