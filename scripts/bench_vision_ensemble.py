"""Vectorized ensemble vs a per-model loop: the same models, plan and data, timed in one run.

    python scripts/bench_vision_ensemble.py [--threads 2] [--batch 64] [--epochs 2] [--models 16]

Uses the `vision` section of params.yaml and the CLEAR photos in data/clear (run
`snakemake --cores 2 data` first). Prints one JSON line: both times, their ratio and the largest
weight difference between the two results. In float64 the two trainers agree to 1e-13
(tests/test_vision.py); in float32 rounding differences grow over steps at lr 0.1, so expect
differences of order 1e-2 after a few steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from clearbench.vision import ensemble as ens
from clearbench.vision import model as vm
from clearbench.vision import protocol as P

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--models", type=int, default=16)
    p.add_argument("--data", default=str(ROOT / "data" / "clear"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    hp = P.merge(P.DEFAULT_HP, {k: v for k, v in params["vision"].items() if k != "methods"})
    hp = P.merge(hp, dict(seed=params["seed"], n_models=args.models))
    full, split = Path(args.data) / "full.parquet", Path(args.data) / "vision_split.parquet"
    if not full.exists():
        print(f"error: {full} not found: build the data first", file=sys.stderr)
        return 2
    data = P.vision_data(full, split, hp["image_size"], hp["n_enroll"])
    mask = P.assignment_for(data, hp).train
    rows = range(args.models)
    base = vm.build_model(hp["model"], 1, seed=hp["seed"])
    nets = [copy.deepcopy(base).new_classes(data.n_classes, k) for k in rows]
    pools = P.pools(data, mask)
    plan = ens.index_plan(
        pools,
        ens.steps_for(pools, args.epochs, args.batch),
        args.batch,
        [P.seed_of(hp["seed"], k) for k in rows],
    )
    task = ens.IdentityTask(data.pixels, data.labels, plan, mask, hp["loss"])
    opt = P.opt_of(hp["train"])
    result = ens.compare_ensemble_vs_loop(ens.stack(nets, list(rows)), task, opt, args.models)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0 if np.isfinite(result["max_abs_diff"]) else 1


if __name__ == "__main__":
    sys.exit(main())
