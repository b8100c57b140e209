"""`python -m clearbench <stage> ...`: the one entry point every Snakemake rule calls.

Hyperparameters arrive as one JSON object (`--hp`), built by the rule from params.yaml, so a
step can be rerun by hand with exactly the values the pipeline used (see the rule's log).
"""

from __future__ import annotations

import argparse
import json
import sys


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def cmd_data_text(a) -> dict:
    from clearbench.data.text import build_text_dataset

    hp = a.hp
    return build_text_dataset(
        source=hp["source"],
        out_dir=a.out,
        seed=hp["seed"],
        n_authors=hp["n_authors"],
        qa_per_author=hp["qa_per_author"],
        forget_fractions=hp["forget_fractions"],
        n_general=hp["n_general"],
        n_background=hp["n_background"],
        n_question_paraphrases=hp.get("n_question_paraphrases", 2),
        n_mia_holdout=hp.get("n_mia_holdout", 3),
    )


def cmd_data_clear(a) -> dict:
    from clearbench.data.clear import build_clear_dataset

    return build_clear_dataset(a.text, a.out, a.hp)


def cmd_base(a) -> dict:
    from clearbench.train.text import pretrain_base

    set_threads(a.threads)
    return pretrain_base(a.qa, a.out, a.hp)


def cmd_finetune(a) -> dict:
    from clearbench.train.text import finetune

    set_threads(a.threads)
    return finetune(a.base, a.data, a.out, a.hp, a.replay)


def language_track(a):
    """The --track's samples: text (--forget, --retain) or vlm (--clear, --text, --split,
    --modality)."""
    from clearbench.unlearn.run import text_track, vlm_track

    need = ["forget", "retain"] if a.track == "text" else ["clear", "text", "split", "modality"]
    missing = [f"--{k}" for k in need if getattr(a, k) is None]
    if missing:
        raise ValueError(f"--track {a.track} needs {' '.join(missing)}")
    if a.track == "text":
        return text_track(a.forget, a.retain)
    return vlm_track(a.clear, a.text, a.split, a.modality, a.hp)


def cmd_unlearn(a) -> dict:
    from clearbench.unlearn.run import unlearn

    set_threads(a.threads)
    return unlearn(a.original, a.out, a.hp, language_track(a), a.reference)


def cmd_idk_reference(a) -> dict:
    from clearbench.unlearn.run import train_reference

    set_threads(a.threads)
    return train_reference(a.original, a.out, a.hp, language_track(a))


def cmd_eval(a) -> dict:
    from clearbench.eval.text import evaluate

    set_threads(a.threads)
    tasks = dict(item.split("=", 1) for item in a.task)
    return evaluate(a.model, tasks, a.out, a.hp)


def cmd_vlm_base(a) -> dict:
    from clearbench.train.vlm import pretrain_vlm_base

    set_threads(a.threads)
    return pretrain_vlm_base(a.clear, a.text, a.out, a.hp)


def cmd_vlm_finetune(a) -> dict:
    from clearbench.train.vlm import finetune_vlm

    set_threads(a.threads)
    return finetune_vlm(a.base, a.clear, a.text, a.split, a.out, a.hp)


def cmd_vlm_eval(a) -> dict:
    from clearbench.eval.vlm import evaluate_vlm

    set_threads(a.threads)
    return evaluate_vlm(a.model, a.clear, a.text, a.split, a.out, a.hp)


def cmd_attack(a) -> dict:
    from clearbench.attacks import attack_text, attack_vlm

    set_threads(a.threads)
    need = ["forget", "retain"] if a.track == "text" else ["clear", "text", "split"]
    missing = [f"--{k}" for k in need if getattr(a, k) is None]
    if missing:
        raise ValueError(f"--track {a.track} needs {' '.join(missing)}")
    if a.track == "text":
        return attack_text(a.model, a.forget, a.retain, a.out, a.hp)
    return attack_vlm(a.model, a.clear, a.text, a.split, a.out, a.hp)


def cmd_attack_metrics(a) -> dict:
    from clearbench.attacks import attack_metrics

    return attack_metrics(a.table, a.out)


def cmd_leaderboard(a) -> dict:
    from clearbench.report.leaderboard import build_leaderboard

    return build_leaderboard(
        a.metrics,
        a.models,
        a.out,
        a.tables,
        a.plots,
        a.hp,
        a.vision,
        a.vision_split,
        a.clip,
        a.attacks,
        a.relearn,
        a.authors,
    )


def cmd_report_html(a) -> dict:
    from clearbench.report.html import build_html_report

    return build_html_report(
        a.leaderboard, a.out, a.tables, a.plots, a.vision, a.images, a.clip or ()
    )


def cmd_benchmarks(a) -> dict:
    from clearbench.report.bench import collect, summary

    print(summary(a.folder, a.top), file=sys.stderr)
    return {"jobs": len(collect(a.folder))}


def cmd_bench_scale(a) -> dict:
    from clearbench.report.bench_scale import run

    if a.threads:
        set_threads(a.threads)
    summary = run(a.configfile, a.device, a.dtype, a.scale, a.steps, a.gradient_checkpointing,
                  a.text_len, a.out, with_estimate=not a.no_estimate)  # fmt: skip
    keys = ("device", "dtype", "total_hours", "hours_unit", "gpu_hours", "dag_error")
    return {k: summary[k] for k in keys if k in summary} | {"out": a.out}


def cmd_dvc_yaml(a) -> dict:
    from pathlib import Path

    import yaml
    from snakemake.utils import update_config

    from clearbench.dvc_stages import render
    from clearbench.io import write_text_atomic

    params = Path(a.params)
    config = yaml.safe_load(params.read_text())
    if a.profile:
        # DVC reads params.yaml alone: a profile is put under DVC by writing it there, merged
        update_config(config, yaml.safe_load(Path(a.profile).read_text()) or {})
        header = f"# params.yaml overlaid with {a.profile} (python -m clearbench dvc-yaml)\n"
        write_text_atomic(params, header + yaml.safe_dump(config, sort_keys=False))
    text = render(config)
    out = Path(a.out)
    if a.check:
        if not out.is_file() or out.read_text() != text:
            raise ValueError(f"{out} is not current: run `python -m clearbench dvc-yaml`")
        return {"current": str(out)}
    write_text_atomic(out, text)
    return {"stages": text.count("\n    cmd: "), "out": str(out)}


def json_arg(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--hp is not valid JSON: {err}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clearbench", description=__doc__)
    sub = p.add_subparsers(dest="stage", required=True)

    def stage(name, fn, help):
        s = sub.add_parser(name, help=help)
        s.add_argument("--hp", type=json_arg, default={}, help="hyperparameters as JSON")
        s.add_argument("--threads", type=int, default=1)
        s.set_defaults(fn=fn)
        return s

    s = stage("data-text", cmd_data_text, "synthesize authors or import TOFU; write the splits")
    s.add_argument("--out", required=True)
    s = stage("data-clear", cmd_data_clear, "faces, personalized photos and the CLEAR splits")
    s.add_argument("--text", required=True, help="the text dataset folder (authors, splits)")
    s.add_argument("--out", required=True)
    s = stage("base", cmd_base, "tokenizer + base model (pretrained here or a checkpoint)")
    s.add_argument("--qa", nargs="+", required=True, help="base QA tables (tokenizer corpus too)")
    s.add_argument("--out", required=True)
    s = stage("finetune", cmd_finetune, "LoRA finetuning (original or gold)")
    s.add_argument("--base", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--replay", nargs="*", default=[], help="general-knowledge tables mixed in")
    s.add_argument("--out", required=True)
    for name, fn, what in (
        ("unlearn", cmd_unlearn, "run one unlearning method (text or vlm track)"),
        ("idk-reference", cmd_idk_reference, "DPO's reference: the original tuned on IDK answers"),
    ):
        s = stage(name, fn, what)
        s.add_argument("--track", choices=["text", "vlm"], default="text")
        s.add_argument("--original", required=True)
        s.add_argument("--forget", help="text: the forget QA table")
        s.add_argument("--retain", help="text: the retain QA table")
        s.add_argument("--clear", help="vlm: the CLEAR dataset folder")
        s.add_argument("--text", help="vlm: the text dataset folder")
        s.add_argument("--split", help="vlm: the forget split")
        s.add_argument(
            "--modality", choices=["text", "visual", "both"], help="vlm: forget modality"
        )
        s.add_argument("--out", required=True)
        if name == "unlearn":
            s.add_argument("--reference", help="DPO: the IDK-tuned reference model")
    s = stage("eval", cmd_eval, "per-sample evaluation table of one model")
    s.add_argument("--model", required=True)
    s.add_argument("--task", action="append", required=True, help="TASK=QA.parquet")
    s.add_argument("--out", required=True)
    s = stage("vlm-base", cmd_vlm_base, "tokenizer + tiny LLaVA (pretrained here or a checkpoint)")
    s.add_argument("--clear", required=True, help="the CLEAR dataset folder")
    s.add_argument("--text", required=True, help="the text dataset folder")
    s.add_argument("--out", required=True)
    s = stage("vlm-finetune", cmd_vlm_finetune, "VLM LoRA finetuning (original or gold)")
    s.add_argument("--base", required=True)
    s.add_argument("--clear", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--split", required=True, help="full (original) or forgetXX (its gold)")
    s.add_argument("--out", required=True)
    s = stage("vlm-eval", cmd_vlm_eval, "per-sample evaluation table of one VLM")
    s.add_argument("--model", required=True)
    s.add_argument("--clear", required=True)
    s.add_argument("--text", required=True)
    s.add_argument("--split", required=True, help="the forget split evaluated")
    s.add_argument("--out", required=True)
    s = stage("attack", cmd_attack, "forget tasks of one model under attacks (probe, q, relearn)")
    s.add_argument("--track", choices=["text", "vlm"], default="text")
    s.add_argument("--model", required=True)
    s.add_argument("--forget", help="text: the forget QA table")
    s.add_argument("--retain", help="text: the retain QA table (relearn_retain)")
    s.add_argument("--clear", help="vlm: the CLEAR dataset folder")
    s.add_argument("--text", help="vlm: the text dataset folder")
    s.add_argument("--split", help="vlm: the forget split")
    s.add_argument("--out", required=True, help="the per-sample table with an attack column")
    s = stage("attack-metrics", cmd_attack_metrics, "the Forget metric per attack of a table")
    s.add_argument("table", help="an `attack` table (Parquet)")
    s.add_argument("--out", help="write the JSON here too")
    s = stage("leaderboard", cmd_leaderboard, "leaderboard.csv and tables from metrics files")
    s.add_argument("--metrics", nargs="*", default=[])
    s.add_argument("--models", nargs="*", default=[], help="model folders, same order")
    s.add_argument("--vision", nargs="*", default=[], help="vision family summary.json files")
    s.add_argument("--vision-split", help="the forget split the vision track's F comes from")
    s.add_argument("--clip", nargs="*", default=[], help="clip track model summary .json files")
    s.add_argument("--attacks", nargs="*", default=[], help="language attack-metrics .json files")
    s.add_argument("--relearn", nargs="*", default=[], help="vision relearn.json files")
    s.add_argument("--authors", nargs="*", default=[],
                   help="the metrics files in the CLEAR authors' convention, --metrics' order")  # fmt: skip
    s.add_argument("--tables", required=True, help="folder for the per-track/split tables")
    s.add_argument("--plots", required=True, help="folder for the plots")
    s.add_argument("--out", required=True)
    s = stage("report-html", cmd_report_html, "one self-contained HTML page of the results")
    s.add_argument("--leaderboard", required=True, help="results/leaderboard.csv")
    s.add_argument("--tables", help="folder of the paper's and per-track tables")
    s.add_argument("--plots", help="folder of the plots")
    s.add_argument("--vision", help="the vision report's folder (Table 2, Figure 6)")
    s.add_argument("--images", help="the CLEAR data folder (data card, contact sheets)")
    s.add_argument("--clip", nargs="*", help="the clip track's table folders (one per split)")
    s.add_argument("--out", required=True)
    s = sub.add_parser("dvc-yaml", help="write dvc.yaml from params.yaml (one stage per method)")
    s.set_defaults(fn=cmd_dvc_yaml)
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--profile", help="overlay a profile (config/*.yaml) onto --params first")
    s.add_argument("--out", default="dvc.yaml")
    s.add_argument("--check", action="store_true", help="fail if --out is not current")
    s = stage("benchmarks", cmd_benchmarks, "summarize benchmarks/ (slowest jobs first)")
    s.add_argument("folder", nargs="?", default="benchmarks")
    s.add_argument("--top", type=int, default=10)
    s = sub.add_parser(
        "bench-scale", help="time the paper's models; estimate the paper DAG's GPU-hours"
    )
    s.set_defaults(fn=cmd_bench_scale)
    s.add_argument("--configfile", default="config/paper.yaml", help="profile over params.yaml")
    s.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")  # fmt: skip
    s.add_argument("--scale", choices=["auto", "paper", "small", "tiny"], default="auto",
                   help="auto: paper on cuda, small on cpu")  # fmt: skip
    s.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up")
    s.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   help="default: the profile's compute.gradient_checkpointing")  # fmt: skip
    s.add_argument("--text-len", type=int, help="text tokens per sequence (default: max_len)")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    s.add_argument("--no-estimate", action="store_true", help="measure only (no DAG dry-run)")
    s.add_argument("--out", help="JSON file of every measurement and the estimate")
    # metrics and mia own their argument parsing (they are the public scoring contracts)
    sub.add_parser("metrics", help="score a per-sample table (DESIGN section 6)", add_help=False)
    sub.add_parser("mia", help="U-LIRA / U-MIA from a vision scores table", add_help=False)
    sub.add_parser(
        "vision",
        help="vision track: pretrain, train, unlearn, score, relearn, collect, report",
        add_help=False,
    )
    sub.add_parser("clip", help="clip track: train, unlearn, table", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "metrics":
        from clearbench.metrics.text import main as metrics_main

        return metrics_main(argv[1:])
    if argv and argv[0] == "mia":
        from clearbench.vision.mia import main as mia_main

        return mia_main(argv[1:])
    if argv and argv[0] == "vision":
        # collect and report need no torch: they skip the protocol module's imports
        if argv[1:2] and argv[1] in ("collect", "report"):
            from clearbench.vision.report import main as vision_main
        else:
            from clearbench.vision.protocol import main as vision_main
        try:
            return vision_main(argv[1:])
        except (ValueError, FileNotFoundError) as err:
            print(f"error: vision: {err}", file=sys.stderr)
            return 2
    if argv and argv[0] == "clip":
        # table needs no torch: it skips the run module's imports
        if argv[1:2] == ["table"]:
            from clearbench.clip.report import main as clip_main
        else:
            from clearbench.clip.run import main as clip_main
        try:
            return clip_main(argv[1:])
        except (ValueError, FileNotFoundError) as err:
            print(f"error: clip: {err}", file=sys.stderr)
            return 2
    args = parser().parse_args(argv)
    try:
        summary = args.fn(args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        # our own errors (ConfigError, DataError, ModelError) are ValueErrors with one line
        msg = f"missing hyperparameter {err}" if isinstance(err, KeyError) else str(err)
        print(f"error: {args.stage}: {msg}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0
