"""Process settings for serving on CPUs, applied before torch loads.

Measured in benchmarks/README.md ("Serving under load", "Soak"), both on the defaults
of torch's CPU build:

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's idle threads sleep instead of spinning between
  forward passes. Spinning threads steal the cores that tokenise and answer the next
  requests. On 2 busy cores this took flagops from 0.10-0.29x of infinity-emb's texts/s
  to 0.83-1.63x (both servers with the setting).
  libgomp reads the variable once, when torch is imported, so it is set before that.
* At most 2 glibc malloc arenas (what ``MALLOC_ARENA_MAX=2`` does): with the default
  (8 per core) every new pair of batch size and padded length grew resident memory in
  steps for the whole 10-minute soak; with 2 it levelled off after two minutes. Set at
  run time through ``mallopt``, since glibc reads the variable only at process start.

A variable already in the environment wins: these are defaults, not overrides. The
images and the rendered InferenceService set both variables explicitly as well.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

OMP_WAIT_POLICY = "PASSIVE"
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def tune_process() -> dict[str, str]:
    """Apply the serving defaults this process does not set already; return what applies."""
    applied = {}
    if "OMP_WAIT_POLICY" not in os.environ:
        if "torch" in sys.modules:
            log.warning("torch is already imported: OMP_WAIT_POLICY=%s comes too late for this process", OMP_WAIT_POLICY)
        else:
            os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    applied["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "")
    if "MALLOC_ARENA_MAX" in os.environ:
        applied["MALLOC_ARENA_MAX"] = os.environ["MALLOC_ARENA_MAX"]  # glibc applied it at start
    elif set_malloc_arenas(MALLOC_ARENAS):
        applied["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)
    return applied


def set_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at ``n``; False where the C library is not glibc."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False
