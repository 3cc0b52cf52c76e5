"""The long-term holdback simulation: three promotions against a fixed holdback; writes docs/holdback-lift.png.

Seeded simulated days through the real routing table and the real lift report (see
``lockstep.ops.holdback_simulation``). Run: ``flock /tmp/lockstep-heavy.lock .venv/bin/python
benchmarks/holdback_simulation.py`` (about 216,000 logged requests).
"""

from __future__ import annotations

from lockstep.ops.holdback_simulation import main

if __name__ == "__main__":
    main()
