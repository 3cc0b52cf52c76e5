"""A deterministic stream of upserts and deletes, and the store it must leave behind."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Scenario:
    messages: list[dict] = field(default_factory=list)
    expected: dict[str, tuple[str, dict | None]] = field(default_factory=dict)  # live id -> (text, metadata)

    @property
    def deletes(self) -> int:
        return sum(1 for m in self.messages if m["op"] == "delete")


def scenario(n: int, records: int = 97, *, deletes: bool = True) -> Scenario:
    """``n`` messages over ``records`` ids: every fifth deletes its record if it is live, the rest upsert.

    ``deletes=False``: upserts only, for consumers that share a stream with no order between
    them (a delete could overtake the upsert it follows).

    Each upsert's text names its message (``version i``), so every change in the log can be
    traced to exactly one message.
    """
    s = Scenario()
    for i in range(n):
        rid = f"r{i % records}"
        if deletes and i % 5 == 4 and rid in s.expected:
            s.messages.append({"op": "delete", "id": rid})
            del s.expected[rid]
        else:
            meta = {"i": i, "tag": "even" if i % 2 == 0 else "odd"}
            text = f"record {rid} version {i}"
            s.messages.append({"op": "upsert", "id": rid, "text": text, "metadata": meta})
            s.expected[rid] = (text, meta)
    return s
