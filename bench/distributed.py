"""Scale-out: `agentkit run` in one process vs `agentkit run --ray` with 1 and 2 actors, side by side.

    python bench/distributed.py classify --limit 60
    python bench/distributed.py invoice --limit 12
    python bench/distributed.py knn --limit 1000 --repeat 20 --configs run,ray1,ray2

Each configuration is the real command line, timed as a whole (model loading and Ray's start included),
on the same inputs, one after another (never two at once), run from the repository root (Ray's workers
import from the driver's working folder, where ``bench/workflows.py`` would stand for ``workflows``):

- ``run``: ``agentkit run`` with llama.cpp on 1 thread (``AGENTKIT_THREADS=1``);
- ``ray1`` / ``ray2``: ``agentkit run --ray local --actors 1|2`` (1 CPU and 1 llama.cpp thread per actor);
- ``faults``: ``ray2`` again with one actor's process SIGKILLed after a third of the inputs and the
  driver SIGKILLed after two thirds, then the same command run again to finish: ``lost`` counts the
  inputs without a record and ``duplicated`` the inputs with more than one.

``classify``: SMS spam (the test side of ../shared/datasets/sms_spam_collection's split) on the
embedded 0.5B → 1.5B ladder with 8 retrieved examples from the train side. ``invoice``: the shipped
invoice workflow on SROIE receipts (test side). ``knn``: the SMS task on the model-free ``knn`` tier:
what a batch costs besides the models (reading, keys, Ray, writing); ``--repeat R`` runs each input R
times (each repeat is its own input with its own record), for a batch long enough to outweigh Ray's start.

Accuracy is printed beside each configuration. Ends with one JSON line: ``n``, ``items_per_min_run``,
``items_per_min_1``, ``items_per_min_2``, ``scaling`` (2 actors vs 1), ``overhead_vs_run`` (Ray with 1
actor vs ``agentkit run``, as extra time), ``lost``, ``duplicated``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import DATASETS, ROOT, emit, print_table

from agentkit.data import read_jsonl, sample, split_records

AGENTKIT = Path(sys.executable).with_name("agentkit")
TARGETS = Path(__file__).with_name("distributed_targets.py")


def _workflows_bench():
    """bench/workflows.py's invoice scoring (its module name is taken by the workflows package)."""
    spec = importlib.util.spec_from_file_location("bench_workflows", Path(__file__).with_name("workflows.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_inputs(records: list[dict], folder: Path) -> Path:
    path = folder / "inputs.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({"id": r["id"], "input": r["input"]}) + "\n")
    return path


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]


def _actor_pids() -> list[int]:
    """The processes of this machine's Ray pool actors (their process title names the actor class)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"ray::MapWorker" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _lines(out: Path) -> int:
    return len(out.read_bytes().splitlines()) if out.exists() else 0


def run_config(name: str, command: list[str], env: dict[str, str], out: Path, n: int, faults: bool) -> float:
    """Seconds the command took (with ``faults``: both runs, kills included)."""
    t0 = time.perf_counter()
    if not faults:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode not in (0, 1):  # 1: some inputs failed (their records say why)
            raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
        return time.perf_counter() - t0
    with (out.parent / f"{name}.log").open("wb") as log:
        driver = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        while _lines(out) < n // 3 and driver.poll() is None:
            time.sleep(0.05)
        pids = _actor_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
        print(f"  {name}: killed actor {pids[:1]} at {_lines(out)} records", file=sys.stderr)
        while _lines(out) < 2 * n // 3 and driver.poll() is None:
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        print(f"  {name}: killed the driver at {_lines(out)} records; running again", file=sys.stderr)
    again = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if again.returncode not in (0, 1):
        raise SystemExit(f"{name} (resumed) failed: {again.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=["classify", "invoice", "knn"])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default="run,ray1,ray2,faults", help="which configurations, in this order")
    p.add_argument("--repeat", type=int, default=1, help="run each input this many times (each its own record)")
    args = p.parse_args()
    default = "sroie2019/dev.jsonl" if args.workload == "invoice" else "sms_spam_collection/dev.jsonl"
    args.data = args.data or DATASETS / default
    records = list(read_jsonl(args.data))
    items = sample(split_records(records, seed=args.seed).test, args.limit, seed=args.seed)
    n = len(items) * args.repeat
    target = {"classify": f"{TARGETS}:sms", "knn": f"{TARGETS}:sms_knn", "invoice": "invoice"}[args.workload]
    if args.workload == "invoice":
        scoring = _workflows_bench()
        _, gold, fields = scoring.invoice_items(args.data, args.limit, args.seed)

    def accuracy(by_id: dict) -> float:
        if args.workload != "invoice":
            return sum((by_id[r["id"]].get("value") == r["expected"]) for r in items) / len(items)
        right = 0
        for r in items:
            out = by_id[r["id"]].get("value") or {}
            g = gold[str(r["id"])]
            right += all(
                scoring.field_right("issuer" if o == "issuer" else f, out.get(o), g[f])
                for f, o in fields.items()
                if g.get(f) not in (None, "")
            )
        return right / len(items)

    env = dict(os.environ, AGENTKIT_THREADS="1", BENCH_DATA=str(args.data), BENCH_SEED=str(args.seed),
               PYTHONPATH=str(ROOT))  # fmt: skip
    figures: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = _write_inputs(items * args.repeat, Path(tmp))
        for name in args.configs.split(","):
            out = Path(tmp) / f"{name}.jsonl"
            command = [str(AGENTKIT), "run", target, str(inputs), "--out", str(out)]
            if name != "run":
                command += ["--ray", "local", "--actors", "1" if name == "ray1" else "2", "--actor-cpus", "1"]
            print(f"{name}: {' '.join(command[1:])}", file=sys.stderr)
            seconds = run_config(name, command, env, out, n, faults=name == "faults")
            found = _records(out)
            per_key = Counter(r["key"] for r in found)
            last = {r["id"]: r for r in found}
            lost = n - len(per_key)  # every input has its own key, repeats included
            duplicated = sum(1 for count in per_key.values() if count > 1)
            acc = accuracy(last) if not lost else float("nan")
            figures[name] = {"s": seconds, "items_per_min": n / seconds * 60, "acc": acc, "lost": lost,
                             "duplicated": duplicated, "failed": sum(not r["ok"] for r in last.values())}  # fmt: skip
            rows.append([name, f"{seconds:.1f}", f"{n / seconds * 60:.1f}", f"{acc:.3f}", lost, duplicated,
                         figures[name]["failed"]])  # fmt: skip
            print(f"  {rows[-1]}", file=sys.stderr)
    print_table(rows, ["config", "wall s", "items/min", "accuracy", "lost", "duplicated", "failed"])

    def rate(name: str) -> float | None:
        return round(figures[name]["items_per_min"], 2) if name in figures else None

    one, two, run = rate("ray1"), rate("ray2"), rate("run")
    emit({
        "bench": f"distributed/{args.workload}",
        "data": str(args.data),
        "n": n,
        "items_per_min_run": run,
        "items_per_min_1": one,
        "items_per_min_2": two,
        "items_per_min_faults": rate("faults"),
        "scaling": round(two / one, 3) if one and two else None,
        "overhead_vs_run": round(run / one - 1, 3) if run and one else None,
        "accuracy": {k: round(v["acc"], 4) for k, v in figures.items()},
        "lost": sum(v["lost"] for v in figures.values()),
        "duplicated": sum(v["duplicated"] for v in figures.values()),
    })  # fmt: skip


if __name__ == "__main__":
    main()
