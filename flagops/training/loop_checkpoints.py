"""Checkpoints for the hand-written training loops (Activation Beacon, LLaRA, Visualized-BGE).

The HF Trainer recipes checkpoint through the Trainer (``common.prepare_checkpoints``); these
loops are a few lines of AdamW each, so they save their own state in the same place, beside the
output (``common.checkpoint_dir``), stamped the same way (``common.stamp``: a checkpoint of another config or
other data is wiped, never resumed), and removed once the model is saved.

A checkpoint is ``checkpoint-N/`` written under a temporary name and renamed whole, so a kill
while saving leaves nothing half-written where the resume looks. It holds one ``torch.save``
file: the step, the trainable parameters (a frozen base is not copied), the optimizer's and
schedule's state, torch's RNG state, the loop's log and whatever the loop passes as ``extra``
(its ``random.Random`` states, say) so the resumed steps draw the same batches and dropout as an
uninterrupted run would. Beside it a ``trainer_state.json`` with the step, which is what makes a
checkpoint "complete" to ``common.checkpoint_complete`` and the kill-and-resume harness.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from flagops.data.formats import atomic_path
from flagops.training import common

STATE_FILE = "loop_state.pt"
STEP_FILE = "trainer_state.json"  # common.checkpoint_complete reads this name


def files_digest(directory: str | Path) -> str:
    """Each file's name, size and mtime under ``directory``: a cheap stand-in for a model's identity
    (a re-checkout that only touches the files makes the run start over, never resume wrongly)."""
    rows = sorted(
        f"{p.relative_to(directory)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in Path(directory).rglob("*") if p.is_file()
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class LoopCheckpoints:
    """Save every ``every`` steps beside ``output``; ``restore`` the newest on a re-run (with ``resume``)."""

    def __init__(self, label: str, output: Path, stamp: str, every: int, resume: bool = True):
        self.label, self.every = label, every  # label: the step, as its log lines start
        self.dir, last = common.prepare_checkpoints(Path(output), stamp, resume)
        self.last = Path(last) if last else None

    def restore(self, model: torch.nn.Module, optimizer, schedule=None) -> tuple[int, Any, Any]:
        """(steps already done, the log so far, ``extra`` as saved); (0, [], None) with nothing to resume.
        The model's trainable parameters, the optimizer, the schedule and torch's RNG are set in place."""
        if self.last is None:
            return 0, [], None
        state = torch.load(self.last / STATE_FILE, map_location="cpu", weights_only=True)
        params = trainable(model)
        if set(params) != set(state["params"]):
            raise RuntimeError(f"{self.last}: its parameters are not this model's trainable ones; delete {self.dir} and run again")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        print(f"{self.label}: resuming from {self.last.name} (its steps 1-{state['step']} are not run again)")
        return state["step"], state["log"], state["extra"]

    def save(self, step: int, model: torch.nn.Module, optimizer, schedule=None, log: Any = None, extra: Any = None) -> None:
        """After step ``step`` (1-based): a checkpoint when it is a multiple of ``every``; the older one goes."""
        if step % self.every:
            return
        state = {
            "step": step,
            "params": {name: p.detach().cpu().clone() for name, p in trainable(model).items()},
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict() if schedule is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "log": [] if log is None else log,  # the loop's losses so far: a list, or a dict of lists
            "extra": extra,
        }
        with atomic_path(self.dir / f"checkpoint-{step}", is_dir=True) as tmp:
            torch.save(state, tmp / STATE_FILE)
            (tmp / STEP_FILE).write_text(json.dumps({"global_step": step}) + "\n", encoding="utf-8")
        for old in self.dir.glob("checkpoint-*"):
            if old.name != f"checkpoint-{step}":
                shutil.rmtree(old, ignore_errors=True)

    def finish(self) -> None:
        """The model is saved: the checkpoints have served."""
        shutil.rmtree(self.dir, ignore_errors=True)
