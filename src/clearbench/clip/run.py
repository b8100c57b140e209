"""`python -m clearbench clip <step>`: train (original or --gold), unlearn, table.

Every step takes `--hp` (one JSON object: the track's params, merged over train.DEFAULT_HP)
and `--threads`. Outputs are written atomically; a model folder's model.json comes last and a
step's summary JSON after everything else, so a summary means the step finished.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clearbench.clip import model as cm
from clearbench.clip import report
from clearbench.clip import train as ct
from clearbench.clip.data import load_clip_data
from clearbench.clip.task import ClipTask, build_task
from clearbench.compute import resolve_device
from clearbench.io import atomic_path, write_json_atomic
from clearbench.vision.protocol import merge

__all__ = ["ClipTask", "main"]


def parse_hp(text: str | None) -> dict:
    """--hp: a JSON object merged over the defaults; a one-line ValueError otherwise."""
    if not text:
        over = {}
    else:
        try:
            over = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--hp is not valid JSON: {err}") from None
    if not isinstance(over, dict):
        raise ValueError("--hp must be a JSON object")
    unknown = sorted(set(over) - set(ct.DEFAULT_HP))
    if unknown:
        raise ValueError(f"--hp: unknown key(s) {', '.join(unknown)}")
    hp = merge(ct.DEFAULT_HP, over)
    t = hp["train"]
    for key in ("epochs", "batch_size"):
        if not isinstance(t.get(key), int) or t[key] < 1:
            raise ValueError(f"--hp: train.{key} must be a positive integer, got {t.get(key)!r}")
    if not isinstance(t.get("lr"), int | float) or not t["lr"] > 0:
        raise ValueError(f"--hp: train.lr must be a positive number, got {t.get('lr')!r}")
    if not isinstance(hp["method_hp"], dict):
        raise ValueError("--hp: method_hp must be an object {method: {kwarg: value}}")
    return hp


def data_of(a, hp, split=None):
    """The data with the targets of `split` (default: the only --split)."""
    for flag, path in [("--full", a.full), ("--real-faces", a.real_faces)] + [
        ("--split", p) for p in a.split
    ]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: no such file: {path}")
    return load_clip_data(
        a.full, a.real_faces, split or a.split[0], hp["image_size"], hp["eval_fraction"], hp["seed"]
    )


def one_split(a) -> None:
    if len(a.split) != 1 or len(a.eval) != 1 or len(a.summary) != 1:
        what = "--gold" if a.step == "train" else a.step
        raise ValueError(f"{what} takes one --split, --eval and --summary")


def jsonable(v):
    """The methods' info dict as JSON (tensors and numpy scalars to numbers; NaN/inf to None)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
        return jsonable(v)
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def has_non_finite(v) -> bool:
    if isinstance(v, dict):
        return any(has_non_finite(x) for x in v.values())
    if isinstance(v, list | tuple):
        return any(has_non_finite(x) for x in v)
    if isinstance(v, torch.Tensor):
        return v.is_floating_point() and not bool(torch.isfinite(v).all())
    return isinstance(v, float | np.floating) and not math.isfinite(v)


def finish(model, tok, data, hp, a, **record) -> dict:
    """Save the model, evaluate it on each --split's groups, write the eval tables and (last)
    the summaries. The photos and the train/eval partition do not depend on the split: only
    which authors are the targets does."""
    if len(a.eval) != len(a.split) or len(a.summary) != len(a.split):
        raise ValueError("give one --eval and one --summary per --split")
    cm.save_clip(model, tok, a.out, **{k: v for k, v in record.items() if k != "info"})
    for i, (split, eval_path, summary_path) in enumerate(
        zip(a.split, a.eval, a.summary, strict=True)
    ):
        data = data if i == 0 else data_of(a, hp, split)
        df = ct.evaluate(model, tok, data, hp["template"])
        with atomic_path(eval_path) as tmp:
            df.to_parquet(tmp, index=False)
        summary = {**ct.summary(df), **jsonable(record)}
        write_json_atomic(summary_path, summary)
    return summary


def cmd_train(a, hp) -> dict:
    if a.gold:
        one_split(a)  # the gold model of one split trains without its targets
    data = data_of(a, hp)
    spec = hp["model"]
    tok = None
    if not spec.get("checkpoint"):
        tok = cm.train_clip_tokenizer(cm.prompts(data.names, hp["template"]), hp["vocab_size"])
    model, tok = cm.build_clip(spec, tok, hp["seed"])
    model.to(resolve_device(hp["device"]))
    start = time.perf_counter()
    info = ct.train_clip(model, tok, data, hp, gold=a.gold)
    seconds = round(time.perf_counter() - start, 3)
    return finish(model, tok, data, hp, a, name="gold" if a.gold else "original",
                  status=info["status"], rte_seconds=seconds, info=info)  # fmt: skip


def cmd_unlearn(a, hp) -> dict:
    try:
        from clearbench.clip import methods
    except ImportError as err:
        raise ValueError(f"the clip unlearning methods cannot be imported: {err}") from None

    names = sorted(getattr(methods, "METHODS", None) or [])
    if names and a.method not in names:
        raise ValueError(f"unknown clip method '{a.method}' (known: {', '.join(names)})")
    one_split(a)
    data = data_of(a, hp)
    model, tok, _ = cm.load_clip(a.original)
    model.to(resolve_device(hp["device"]))
    task = build_task(model, tok, data, hp["template"])
    method_hp = dict(hp["method_hp"].get(a.method, {}))
    status, info = "ok", {}
    start = time.perf_counter()
    try:
        info = methods.unlearn_clip(model, task, a.method, method_hp, hp["seed"]) or {}
    except FloatingPointError as err:
        status, info = "diverged", {"error": str(err).splitlines()[0] if str(err) else "nan"}
    seconds = round(time.perf_counter() - start, 3)
    model.eval()
    if status == "ok" and (not cm.is_finite(model) or has_non_finite(info)):
        status = "diverged"
    if isinstance(info, dict) and info.get("status") == "diverged":
        status = "diverged"
    return finish(model, tok, data, hp, a, name=a.method, method=a.method, status=status,
                  rte_seconds=seconds, info=info)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clearbench clip", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    for name, text in (
        ("train", "contrastive training of the original (or --gold) model"),
        ("unlearn", "original model + method -> unlearned model, eval table, summary"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--full", required=True, help="CLEAR full.parquet (the authors)")
        s.add_argument("--real-faces", required=True, help="real_faces.parquet")
        s.add_argument(
            "--split",
            required=True,
            nargs="+",
            help="the forget split's parquet (targets); the original: one per split",
        )
        s.add_argument("--out", required=True, help="model folder")
        s.add_argument(
            "--eval",
            required=True,
            nargs="+",
            help="per-photo zero-shot table (.parquet), one per --split",
        )
        s.add_argument("--summary", required=True, nargs="+",
                       help="accuracies, status, RTE (.json), one per --split")  # fmt: skip
        s.add_argument("--hp", help="the clip track's params as one JSON object")
        s.add_argument("--threads", type=int, default=1)
        if name == "train":
            s.add_argument("--gold", action="store_true", help="without the target identities")
        else:
            s.add_argument("--original", required=True, help="model folder written by train")
            s.add_argument("--method", required=True)
    report.add_table_args(sub.add_parser("table", help="summaries -> CSV, Markdown, PNG"))
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["table"]:
        return report.main(argv)
    a = parser().parse_args(argv)
    hp = parse_hp(a.hp)
    torch.set_num_threads(max(1, a.threads))
    torch.manual_seed(hp["seed"])
    summary = cmd_train(a, hp) if a.step == "train" else cmd_unlearn(a, hp)
    print(json.dumps(summary))
    return 0
