"""``LOCKSTEP_ONNX_THREADS``: the onnxruntime threads of one process running an ``onnx_text`` model.

0 (the default) lets the family decide: one thread per process when a build runs several
worker processes (each worker has its own onnxruntime pool, and N pools of N threads on N
cores only fight), else the core count. A number above 0 is used as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lockstep.core.config.environment import environment
from lockstep.core.config.values import count_setting

ONNX_THREADS_ENV = "LOCKSTEP_ONNX_THREADS"
MAX_ONNX_THREADS = 256


def onnx_threads(worker_processes: int = 1, env: Mapping[str, str] | None = None) -> int:
    """Intra-op threads for one process of ``worker_processes`` that embed at once."""
    env = environment() if env is None else env
    chosen = count_setting(env, ONNX_THREADS_ENV, 0, least=0, most=MAX_ONNX_THREADS)
    if chosen:
        return chosen
    return 1 if worker_processes > 1 else max(1, os.cpu_count() or 1)
