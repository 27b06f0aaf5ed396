"""Orbax checkpoints of the train state plus the config, at `workdir/checkpoints/<step>`.

Saves are asynchronous (training continues while arrays are written), every `save_every` steps or when
forced (preemption, end of training), keeping the last `keep` checkpoints. Restoring takes the abstract
state with its shardings, so arrays land directly on the devices they belong to, on any mesh.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

STATE = "state"
CONFIG = "config"


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` that knows GAN-DL's two items: state and config."""

    def __init__(self, workdir: str, save_every: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=keep,
                                                 enable_async_checkpointing=async_save),
            item_names=(STATE, CONFIG))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, config: dict, force: bool = False) -> bool:
        """Start saving (returns at once when async); True if this step is saved at all."""
        return self.manager.save(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config)}), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """State (placed per `abstract_state`'s shardings) and config of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(abstract_state), CONFIG: ocp.args.JsonRestore()}))
        return out[STATE], out[CONFIG]

    def restore_config(self, step: int | None = None) -> dict:
        """Only the config saved with `step` (default: the latest), e.g. to rebuild the state's template."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self.manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def reached_preemption(self, step: int) -> bool:
        """Whether any process got a preemption notice (needs jax.distributed); all agree on the step."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """Shape, dtype and sharding of every array in `state`, the template orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
