"""A training loop stopped right after checkpoint N, for the resume tests of the hand-written loops
(flagops.training.loop_checkpoints). An exception stands in for the SIGKILL the kill-and-resume
harness (tests/reliability/kill_resume.py) sends to a real run: what is on disk is the same, the
checkpoint and no model, since the loop writes its model only after its last step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from flagops.training.loop_checkpoints import LoopCheckpoints


class Killed(Exception):
    pass


@contextmanager
def killed_after(step: int) -> Iterator[None]:
    """Inside: the loop stops (``Killed``) as soon as its checkpoint of ``step`` is on disk."""
    real = LoopCheckpoints.save

    def save(self, at, *args, **kwargs):
        real(self, at, *args, **kwargs)
        if at == step:
            raise Killed(f"after checkpoint-{step}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LoopCheckpoints, "save", save)
        with pytest.raises(Killed):
            yield
