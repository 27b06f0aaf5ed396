"""Orbax checkpoints of the train state plus the config, at `workdir/checkpoints/<step>`.

Saves are asynchronous (training continues while arrays are written), every `save_every` steps or when
forced (preemption, end of training), keeping the last `keep` checkpoints and, with `keep_period`, every
checkpoint whose step is a multiple of it (the probed steps, so `embed.step` can name any of them).
Restoring takes the abstract state with its shardings, so arrays land directly on the devices they belong
to, on any mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from gandl import workdir as layout
from gandl.models.config import ModelConfig
from gandl.train import state as state_lib

STATE = "state"
CONFIG = "config"


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` that knows GAN-DL's two items: state and config."""

    def __init__(self, workdir: str, save_every: int, keep: int = 3, async_save: bool = True, keep_period: int = 0):
        self.directory = layout.checkpoints(workdir)
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_period:
            policies.append(ocp.checkpoint_managers.EveryNSteps(keep_period))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, enable_async_checkpointing=async_save,
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies)),
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


def restore_run(workdir: str, mesh: jax.sharding.Mesh, step: int | None = None
                ) -> tuple[ml_collections.ConfigDict, Any, int]:
    """(config, train state, step) of checkpoint `step` (default: the latest) of a workdir.

    The state's template is rebuilt from the config saved with the checkpoint, so no config file is needed.
    """
    ckpt = Checkpointer(workdir, save_every=1)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first (mode=train)")
        config = ml_collections.ConfigDict(ckpt.restore_config(step))
        with jax.set_mesh(mesh):
            template = state_lib.create(ModelConfig.from_mapping(config.model), config.train, config.seed, mesh)
            state, _ = ckpt.restore(abstract_like(template), step)
        return config, state, step
    finally:
        ckpt.close()


def abstract_like(state: Any) -> Any:
    """Shape, dtype and sharding of every array in `state`, the template orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
