"""Orbax checkpoints of the train state plus the config, at `workdir/checkpoints/<step>`.

Saves are asynchronous (training continues while arrays are written), every `save_every` steps or when
forced (preemption, end of training), keeping the last `keep` checkpoints and, with `keep_period`, every
checkpoint whose step is a multiple of it (the probed steps, so `embed.step` can name any of them).
Restoring takes the abstract state with its shardings, so arrays land directly on the devices they belong
to, on any mesh.

Each finished save gets a completion record (`<step>/complete.json`, gandl.fileio) listing every file with
its size and checksum. A restore checks it first, so a damaged checkpoint is named in one line (its step,
folder and file) before orbax reads a byte of it, and "the latest" means the newest intact one: damaged
newer ones are logged and passed over, never silently replaced by step 0.

The train state is saved as `state_lib.saved_tree` (no fields for training options that are off), so
checkpoints from before an option existed restore as a run without it; a run resuming one with options whose
state it does not hold is refused in one line (`check_options`), as is one of another model or seed
(`check_model`). A saved config lacking fields added since reads them as their defaults (`saved_config`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from gandl import console, errors, fileio
from gandl import workdir as layout
from gandl._tf import tf
from gandl.defaults import Config, Train, saved_config
from gandl.models.config import ModelConfig
from gandl.train import state as state_lib

STATE = "state"
CONFIG = "config"
RECORD = "complete.json"


class CorruptCheckpointError(fileio.FileFault):
    """A checkpoint whose files do not match its completion record, or that orbax cannot read."""


class OptionsChanged(errors.UserError, ValueError):
    """A checkpoint saved with other training options than those of the run resuming it (said in one line)."""


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
                cleanup_tmp_directories=True,  # what a failed or killed save left (one run per workdir: the lock)
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies)),
            item_names=(STATE, CONFIG))
        self._unrecorded: list[int] = []  # steps saved by this object whose completion record is not written yet

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, config: dict, force: bool = False) -> bool:
        """Start saving (returns at once when async); True if this step is saved at all."""
        with self._write_faults():
            self._record_saved()
            saved = self.manager.save(step, args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(_saved(state)), CONFIG: ocp.args.JsonSave(config)}), force=force)
        if saved:
            self._unrecorded.append(step)
        return saved

    @contextlib.contextmanager
    def _write_faults(self) -> Iterator[None]:
        """A save that fails on the disk (full, read-only) as one `FileFault` naming the checkpoint folder and the
        file tensorstore names; earlier checkpoints stay as they are."""
        try:
            yield
        except fileio.FileFault:
            raise
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore wrap OS errors in many types
            cause = _root_cause(error)
            if not isinstance(error, OSError) and not console.DISK_FAULT.search(cause):
                raise
            raise fileio.FileFault(f"{self.directory}: cannot write a checkpoint ({cause})") from error

    def _record_saved(self) -> None:
        """Write the completion records of this object's saves once they are on disk (process 0 writes them)."""
        if not self._unrecorded:
            return
        self.manager.wait_until_finished()
        for step in self._unrecorded:
            self._write_record(step)
        self._unrecorded = []

    def _write_record(self, step: int) -> None:
        """The completion record of checkpoint `step`, listing its files as they are now (process 0 writes it)."""
        folder = self.step_dir(step)
        if jax.process_index() == 0 and tf.io.gfile.isdir(folder):  # not already dropped by the keep policy
            files = [os.path.join(root, name) for root, _, names in tf.io.gfile.walk(folder) for name in names]
            fileio.write_record(os.path.join(folder, RECORD), files, step=step)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """State (placed per `abstract_state`'s shardings) and config of `step` (default: the newest intact one)."""
        state, config, _ = self.restore_intact(lambda config: abstract_state, step)
        return state, config

    def restore_intact(self, template: Callable[[dict], Any], step: int | None = None, set_aside: bool = False
                       ) -> tuple[Any, dict, int]:
        """(state, config, step) of checkpoint `step`, or of the newest intact one; `template(config)` gives the
        abstract state to restore into.

        Each checkpoint is checked against its completion record first. A damaged named `step` is an error; without
        one, damaged newer checkpoints are logged and passed over, and with `set_aside` (a run that will save those
        steps again) moved to `<step>.damaged`. Only when every checkpoint is damaged does it fail, naming them.
        """
        saved = sorted(self.manager.all_steps(), reverse=True)
        if not saved or (step is not None and step not in saved):
            raise FileNotFoundError(f"no checkpoint{'' if step is None else f' of step {step}'} in {self.directory}"
                                    + (f" (it holds steps {saved[::-1]})" if saved else ""))
        steps = [step] if step is not None else saved
        damaged = []
        for candidate in steps:
            try:
                config = self._restore(candidate, {CONFIG: ocp.args.JsonRestore()})[CONFIG]
                abstract = template(config)
                state = self._restore(candidate, {STATE: ocp.args.StandardRestore(_saved(abstract))})[STATE]
            except CorruptCheckpointError as e:
                if step is not None:
                    raise
                logging.warning("%s; %s", e, "trying the one before" if candidate != steps[-1] else "none is left")
                damaged.append(candidate)
                continue
            if not tf.io.gfile.exists(os.path.join(self.step_dir(candidate), RECORD)):
                # Saved by a run killed between orbax's commit and the record: orbax has just read all of it, so the
                # record is written now, and later restores check the files against it.
                self._write_record(candidate)
            if damaged and set_aside:
                self._set_aside(damaged)
            if damaged:
                logging.warning("using step %d, the newest intact checkpoint in %s", candidate, self.directory)
            return (state_lib.TrainState(**state) if isinstance(abstract, state_lib.TrainState) else state,
                    config, candidate)
        raise CorruptCheckpointError(f"no intact checkpoint in {self.directory}: steps {damaged} are damaged (see "
                                     "above); move them away to start from step 0")

    def _restore(self, step: int, items: dict) -> dict:
        """orbax's restore of `items` of `step`, after checking the step's files against its completion record.

        Without a record (a checkpoint older than records, or a run killed between save and record) orbax's own
        error is what tells a damaged checkpoint; with an intact record an orbax error is not damage and passes.
        """
        folder = self.step_dir(step)
        problems = fileio.verify_record(os.path.join(folder, RECORD))
        if problems:
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise CorruptCheckpointError(f"the checkpoint of step {step} in {folder} is damaged: "
                                         f"{'; '.join(problems[:3])}{more}")
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore wrap read errors in many types
            if problems is not None:
                raise
            raise CorruptCheckpointError(f"the checkpoint of step {step} in {folder} cannot be read: "
                                         f"{_root_cause(e)}") from None

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints out of orbax's way (`<step>.damaged`), so the run can save those steps again."""
        if jax.process_index() == 0:
            for step in steps:
                target = f"{self.step_dir(step)}.damaged"
                while tf.io.gfile.exists(target):
                    target += "+"
                tf.io.gfile.rename(self.step_dir(step), target)
                logging.warning("moved the damaged checkpoint of step %d to %s", step, target)
        multihost_utils.sync_global_devices("damaged checkpoints set aside")  # before any process lists steps again
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """Whether any process got a preemption notice (needs jax.distributed); all agree on the step."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Block until pending async saves are on disk, with their completion records."""
        with self._write_faults():
            self.manager.wait_until_finished()
            self._record_saved()

    def close(self) -> None:
        with self._write_faults():
            self._record_saved()
            self.manager.close()


def restore_run(workdir: str, mesh: jax.sharding.Mesh, step: int | None = None
                ) -> tuple[Config, Any, int]:
    """(config, train state, step) of checkpoint `step` (default: the latest) of a workdir.

    The state's template is rebuilt from the config saved with the checkpoint, so no config file is needed.
    Without `step`, damaged newer checkpoints are passed over (logged) for the newest intact one.
    """
    ckpt = Checkpointer(workdir, save_every=1)

    def template(saved: dict) -> Any:
        config = saved_config(saved)
        return abstract_like(state_lib.create(ModelConfig.of_run(config), Train.from_mapping(config.train),
                                              config.seed, mesh))

    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first (mode=train)")
        with jax.set_mesh(mesh):
            state, config, step = ckpt.restore_intact(template, step)
        return saved_config(config), state, step
    finally:
        ckpt.close()


def check_options(saved: dict, train: Train, directory: str) -> None:
    """Refuse to resume a checkpoint (config `saved`) whose state holds other training options' state than a
    run of `train` would: switching ADA or the contrastive head on or off midway has no state to go on from, and
    D trained for one objective is not a start for the other."""
    before = Train.from_mapping(saved_config(saved).train)
    if state_lib.options(before) != state_lib.options(train):
        said = "train.objective={!r}, train.augment={!r}, train.contrastive_weight={}".format
        raise OptionsChanged(f"the checkpoints in {directory} were saved with "
                             f"{said(before.objective, before.augment, before.contrastive_weight)}, this run has "
                             f"{said(train.objective, train.augment, train.contrastive_weight)}: resume with the "
                             "options they were saved with, or train in a new workdir")


def check_model(saved: dict, model: ModelConfig, seed: int, directory: str) -> None:
    """Refuse to resume a checkpoint (config `saved`) of another model or seed, naming each changed field: another
    model's arrays have other shapes (orbax would fail deep inside the restore), and a resumed run draws from the
    saved PRNG state, so another seed would be silently ignored."""
    before = saved_config(saved)
    was = {**_fields("model", ModelConfig.of_run(before)), "seed": before.seed}
    now = {**_fields("model", model), "seed": seed}
    changed = [f"{k}={was[k]!r} -> {now[k]!r}" for k in was if was[k] != now[k]]
    if changed:
        raise OptionsChanged(f"the checkpoints in {directory} were saved with other settings ({'; '.join(changed)}): "
                             "resume with the ones they were saved with, or train in a new workdir")


def _fields(section: str, config: ModelConfig) -> dict[str, Any]:
    """`config`'s fields as `section.field` -> value."""
    return {f"{section}.{k}": v for k, v in dataclasses.asdict(config).items()}


def _saved(state: Any) -> Any:
    """What orbax saves of `state` (or restores into it, an abstract state): a train state as its saved tree."""
    return state_lib.saved_tree(state) if isinstance(state, state_lib.TrainState) else state


def abstract_like(state: Any) -> Any:
    """Shape, dtype and sharding of every array in `state`, the template orbax restores into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost error behind `error` (orbax wraps tensorstore's, which names the file)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
