"""Run a batch on a Ray cluster: the same records as ``agentkit run``, written once each, resumable.

:class:`RayExecutor` is an :data:`agentkit.runner.Executor`: :func:`agentkit.runner.run_batch` (and
``agentkit run --ray``) reads the inputs, computes their resume keys and skips the finished ones as
it always does; the executor puts the rest into a Ray Dataset and maps it through a pool of actors,
each of which loads the target once (its models held for the whole run, llama.cpp with as many
threads as the actor has CPUs) and runs every input it is given with :func:`agentkit.runner.run_one`
— the node's own ladder, so a larger tier sees only what escalates. Records stream back to the
driver, which is the only writer of the output file.

Exactly once: Ray restarts an actor that dies and retries its batch on another, so an input can be
answered twice; the driver writes the first record of each key and drops the second. An input whose
batch fails every retry (a worker that dies on it each time) gets a failure record naming that, and
``--retry-failed`` runs it again later. A driver that is killed loses only the records not yet
written: the next run with the same output goes on from there.

Every actor checks that the target it loaded has the driver's configuration hash, so a worker with
other code or other settings is refused instead of writing records under the wrong name.

Ray is imported only when a run starts (``pip install 'agentkit[ray]'``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agentkit.errors import AgentkitError, ConfigError
from agentkit.runner import Item, TargetSource, encode_record, run_one, target_fingerprint

__all__ = ["RayExecutor"]


@dataclass
class RayExecutor:
    """Runs a batch's inputs on a Ray cluster through a pool of actors.

    Args:
        source: where each actor loads the target from (:meth:`TargetSource.find`).
        address: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``); ``None`` or
            ``"local"`` starts Ray on this machine for the run (and stops it after). If Ray is
            already initialized in this process, that cluster is used.
        actors: actors in the pool (default: the cluster's CPUs // ``actor_cpus``).
        actor_cpus: CPUs each actor reserves; also its llama.cpp threads (``threads``).
        actor_gpus: GPUs each actor reserves (for ``vllm-offline`` or ``hf`` tiers).
        threads: llama.cpp threads per actor (default: ``actor_cpus``, at least 1).
        batch_size: inputs per Ray task. A task that fails every retry costs its whole batch a
            failure record, so keep it small; inputs take seconds each, so 1 costs little.
        max_retries: how often a batch is retried on a new actor after its actor died.
    """

    source: TargetSource
    address: str | None = None
    actors: int | None = None
    actor_cpus: float = 1.0
    actor_gpus: float = 0.0
    threads: int | None = None
    batch_size: int = 1
    max_retries: int = 3

    def __call__(self, target: Any, todo: Sequence[tuple[str, Item]]) -> Iterator[dict[str, Any]]:
        if not todo:
            return
        local = self.address in (None, "", "local")
        ray = _import_ray(local=local)
        started = _connect(ray, "local" if local else str(self.address))
        try:
            yield from self._run(ray, target, todo)
        except ray.exceptions.RayError as e:
            raise AgentkitError(f"the Ray run stopped: {_first_line(e)}") from e
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, target: Any, todo: Sequence[tuple[str, Item]]) -> Iterator[dict[str, Any]]:
        from ray.data import DataContext

        # a worker that dies is reported in its inputs' records; Ray Data's own log of it (a traceback
        # per lost block) would bury the run's output
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        context = DataContext.get_current()
        context.enable_progress_bars = False  # agentkit run shows its own
        context.max_errored_blocks = -1  # a block that fails every retry: its inputs are run again, alone
        context.print_on_execution_start = False
        _check_fits(ray, self.actor_cpus, self.actor_gpus)
        actors = self.actors or max(1, int(_cluster_cpus(ray) // max(self.actor_cpus, 1e-9)))
        rows: dict[str, dict[str, Any]] = {key: {"key": key, "item": pickle.dumps(item)} for key, item in todo}
        blocks = max(1, min(len(rows), actors * 16, math.ceil(len(rows) / self.batch_size)))
        yield from self._pass(ray, target, rows, blocks, actors, self.batch_size, in_flight=None)
        if rows:  # blocks that failed every retry lost every input in them: those go again, one a task and one
            # task an actor at a time, so that an input that kills its actor takes no other input with it
            yield from self._pass(ray, target, rows, len(rows), actors, 1, in_flight=1)
        tries = self.max_retries + 1
        for key, row in rows.items():
            item: Item = pickle.loads(row["item"])
            reason = f"the worker running this input died each of the {tries} times it ran it (see the cluster's logs)"
            yield {"key": key, "id": item.id, "ok": False, "reason": reason, "cost_usd": 0.0, "latency_s": 0.0}

    def _pass(
        self,
        ray: Any,
        target: Any,
        rows: dict[str, dict[str, Any]],
        blocks: int,
        actors: int,
        batch_size: int,
        *,
        in_flight: int | None,
    ) -> Iterator[dict[str, Any]]:
        """Map ``rows`` through the actor pool; yield each record once and take its row out of ``rows``."""
        from ray.data import ActorPoolStrategy

        threads = self.threads or max(1, int(self.actor_cpus))
        with warnings.catch_warnings():
            # Ray 2.60 names no parameter for an actor's retries yet: they go as remote args, which it
            # warns will be renamed (the extra pins Ray, so this call is the one that is tested)
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray.data.from_items(list(rows.values()), override_num_blocks=blocks).map_batches(
                _Worker,
                fn_constructor_kwargs={
                    "source": self.source,
                    "fingerprint": target_fingerprint(target),
                    "threads": threads,
                },
                batch_size=batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(size=min(actors, blocks), max_tasks_in_flight_per_actor=in_flight),
                num_cpus=self.actor_cpus,
                num_gpus=self.actor_gpus or None,
                max_restarts=-1,  # a dead actor is replaced
                max_task_retries=self.max_retries,  # and its block run again, up to this often
            )
        for row in dataset.iter_rows():
            record = json.loads(row["record"])
            if rows.pop(record["key"], None) is not None:  # a retried block's second answer is dropped
                yield record


class _Worker:
    """A pool actor: loads the target once, then runs batches of inputs."""

    def __init__(self, source: TargetSource, fingerprint: tuple[str, str], threads: int) -> None:
        os.environ["AGENTKIT_THREADS"] = str(threads)  # read when each llama.cpp model loads
        target, _ = source.load()
        found = target_fingerprint(target)
        if tuple(found) != tuple(fingerprint):
            raise ConfigError(
                f"this worker loaded {found[0]!r} with config {found[1]}, the run is {fingerprint[0]!r} with "
                f"config {fingerprint[1]}: the worker's code or settings differ from the driver's"
            )
        self.target = target

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        keys, records = [], []
        for key, blob in zip(batch["key"], batch["item"], strict=True):
            item: Item = pickle.loads(blob)
            _, line = encode_record({"key": str(key)} | run_one(self.target, item))
            keys.append(str(key))
            records.append(line)
        return {"key": keys, "record": records}


def _cluster_cpus(ray: Any) -> float:
    """The CPUs of the cluster ``ray`` is connected to."""
    return float(ray.cluster_resources().get("CPU", 1.0))


def _check_fits(ray: Any, cpus: float, gpus: float) -> None:
    """An actor that no node can hold would wait for one for ever: refuse it now."""
    nodes: list[dict[str, float]] = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes):
        largest: dict[str, float] = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        raise ConfigError(
            f"no node of the cluster has {cpus:g} CPUs and {gpus:g} GPUs for an actor "
            f"(the largest has {largest.get('CPU', 0.0):g} CPUs, {largest.get('GPU', 0.0):g} GPUs)",
            hint="lower --actor-cpus / --actor-gpus, or add larger nodes",
        )


def _import_ray(*, local: bool) -> Any:
    if local:  # a Ray started for one run on this machine listens on 127.0.0.1 only (Ray reads this on import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library, installed with the extra
    except ImportError as e:
        raise ConfigError("running on Ray needs its extra", hint="pip install 'agentkit[ray]'") from e
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Connect to the cluster at ``address`` (``local``: start one here); whether this call connected
    (and so disconnects after the run)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's own warnings about its internals
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if address == "local":
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = "a new local Ray" if address == "local" else f"the Ray cluster at {address}"
        raise ConfigError(f"cannot connect to {where}: {_first_line(e)}") from e
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):  # Ray wraps the cause in a traceback: its last line says what happened
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    return lines[0].strip()[:500] if lines else text[:500]
