"""Missing or corrupt artifacts stop with one line naming the file; every writer is atomic."""

import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from clearbench.cli import main as cli
from clearbench.io import atomic_path, write_json_atomic

LN2 = math.log(2)


def one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in err, (word, err)
    return err


def eval_rows(n=3, task="forget", pert=(LN2, LN2)):
    return pd.DataFrame(
        {
            "task": [task] * n,
            "sample_id": [f"{task}-{i}" for i in range(n)],
            "gt_loss": [LN2] * n,
            "para_loss": [LN2] * n,
            "perturbed_losses": [list(pert)] * n,
            "generation": ["the answer"] * n,
            "answer": ["the answer"] * n,
        }
    )


def truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


# -- corrupt inputs ------------------------------------------------------------------------------


def test_truncated_per_sample_table(tmp_path, capsys):
    from clearbench.eval.text import write_table

    good = tmp_path / "good.parquet"
    write_table(eval_rows(), good)
    bad = truncated(good, tmp_path / "cut.parquet")
    out = tmp_path / "m.json"
    assert cli(["metrics", str(bad), "--out", str(out)]) == 2
    one_line_error(capsys, bad)
    assert not out.exists()
    assert cli(["metrics", str(good), "--gold", str(bad)]) == 2  # the gold table too
    one_line_error(capsys, bad)


def test_truncated_data_table(tmp_path):
    from clearbench.data.text import QA_SCHEMA, DataError, read_qa, write_table

    row = {"sample_id": "s0", "author_id": 1, "author": "A", "question": "q", "answer": "a",
           "paraphrased_answer": None, "perturbed_answers": ["b"]}  # fmt: skip
    good = tmp_path / "forget.parquet"
    write_table([row], QA_SCHEMA, good)
    bad = truncated(good, tmp_path / "cut.parquet")
    with pytest.raises(DataError, match=r"cannot read .*cut\.parquet") as err:
        read_qa(bad)
    assert "\n" not in str(err.value)


def test_empty_table_of_an_ok_model_is_an_error(tmp_path, capsys):
    from clearbench.eval.text import EVAL_SCHEMA, write_table

    empty = tmp_path / "empty.parquet"
    write_table(pd.DataFrame(columns=EVAL_SCHEMA.names), empty)
    assert cli(["metrics", str(empty)]) == 2
    one_line_error(capsys, empty, "no rows")
    # a table from elsewhere (no status recorded) counts as ok: refused as well
    pd.DataFrame(columns=EVAL_SCHEMA.names).astype({"gt_loss": float}).to_parquet(empty)
    assert cli(["metrics", str(empty)]) == 2
    one_line_error(capsys, empty, "no rows")


def test_empty_table_of_a_diverged_model_is_legitimate(tmp_path, capsys):
    from clearbench.eval.text import unevaluated
    from clearbench.models.factory import save_chain

    save_chain(tmp_path / "m", base="unused", adapters=[], status="diverged")
    out = tmp_path / "m.parquet"
    assert unevaluated(str(tmp_path / "m"), str(out)) == {"status": "diverged", "rows": 0}
    assert cli(["metrics", str(out)]) == 0
    assert capsys.readouterr().err == ""


def test_row_without_perturbed_losses_in_a_task_with_options(tmp_path, capsys):
    df = eval_rows(3)
    df.at[1, "perturbed_losses"] = []
    path = tmp_path / "model.parquet"
    df.to_parquet(path)
    assert cli(["metrics", str(path)]) == 2
    one_line_error(capsys, path, "'forget'", "'forget-1'", "perturbed")
    # a null cell is the same thing
    df.at[1, "perturbed_losses"] = None
    df.to_parquet(path)
    assert cli(["metrics", str(path)]) == 2
    one_line_error(capsys, path, "'forget-1'")


def scores_table(roles=("target", "shadow")):
    rows = []
    for model, role in enumerate(r for r in roles for _ in range(2)):
        for sample, group in enumerate(("forget", "holdout", "retain")):
            rows.append(
                {"model": model, "role": role, "group": group, "identity": sample,
                 "sample_id": sample, "phi": float(model + sample), "correct": True}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_scores_table_missing_a_role(tmp_path, capsys):
    from clearbench.vision import report

    path = tmp_path / "scores.parquet"
    scores_table(("target",)).to_parquet(path)
    assert cli(["mia", str(path)]) == 2
    one_line_error(capsys, path, "shadow")

    meta = tmp_path / "meta.json"
    write_json_atomic(meta, {"status": ["ok", "ok"], "rte_seconds": 1.0})
    out, summary = tmp_path / "family.parquet", tmp_path / "summary.json"
    with pytest.raises(ValueError, match=r"scores\.parquet: no rows with role 'shadow'"):
        report.collect([str(path)], [str(meta)], str(out), str(summary))
    assert not out.exists() and not summary.exists()  # nothing downstream gets it

    scores_table().to_parquet(path)
    assert cli(["mia", str(path)]) == 0


def test_truncated_scores_table(tmp_path, capsys):
    good = tmp_path / "good.parquet"
    scores_table().to_parquet(good)
    bad = truncated(good, tmp_path / "cut.parquet")
    assert cli(["mia", str(bad)]) == 2
    one_line_error(capsys, bad)
    assert cli(["vision", "collect", "--scores", str(bad), "--meta", str(bad),
                "--out", str(tmp_path / "o.parquet"), "--summary", str(tmp_path / "s.json")]) == 2  # fmt: skip
    one_line_error(capsys, bad)


TINY = {"intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 32}  # fmt: skip


def test_adapter_with_a_wrong_shape(tmp_path):
    from clearbench.models.factory import ModelError, build_model, load_model, save_chain
    from clearbench.train.text import add_lora

    base = tmp_path / "base"
    build_model({"config": {**TINY, "hidden_size": 16}}, vocab_size=50).save_pretrained(base)
    save_chain(base, base=str(base), adapters=[])
    other = build_model({"config": {**TINY, "hidden_size": 8}}, vocab_size=50)
    lora = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    add_lora(other, lora).save_pretrained(tmp_path / "m" / "adapter")
    save_chain(tmp_path / "m", base=str(base), adapters=[str(tmp_path / "m" / "adapter")])
    load_model(base)  # the base alone is fine
    with pytest.raises(ModelError, match=r"/m: cannot merge adapter") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value)


def test_checkpoint_with_a_wrong_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    from clearbench.models.factory import ModelError, build_model, load_checkpoint

    path = tmp_path / "ckpt"
    build_model({"config": {**TINY, "hidden_size": 16}}, vocab_size=50).save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    name = next(k for k in weights if k.endswith("q_proj.weight"))
    weights[name] = weights[name][:8].contiguous()
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"cannot load checkpoint .*ckpt") as err:
        load_checkpoint(str(path))
    assert "\n" not in str(err.value)


def test_model_folder_without_model_json_is_refused(tmp_path):
    from clearbench.models.factory import ModelError, build_model, load_model

    build_model({"config": {**TINY, "hidden_size": 16}}, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"base": ')  # half-written by some other tool
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path)


# -- atomic writes -------------------------------------------------------------------------------


class Crash(Exception):
    pass


def half_then_crash(where):
    with open(where, "wb") as f:
        f.write(b"PAR1 half a file")
    raise Crash


def only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(Crash), atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != path
        half_then_crash(tmp)
    assert only(tmp_path) == []
    path.write_text("old")
    with pytest.raises(Crash), atomic_path(path) as tmp:
        half_then_crash(tmp)
    assert path.read_text() == "old" and only(tmp_path) == ["x.png"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and only(tmp_path) == ["x.png"]


def test_per_sample_table_write_is_atomic(tmp_path, monkeypatch):
    from clearbench.eval.text import write_table

    monkeypatch.setattr(pq, "write_table", lambda table, where, **kw: half_then_crash(where))
    with pytest.raises(Crash):
        write_table(eval_rows(), tmp_path / "t.parquet")
    assert only(tmp_path) == []


def test_scores_and_leaderboard_writes_are_atomic(tmp_path, monkeypatch):
    from clearbench.report import leaderboard
    from clearbench.vision import mia

    monkeypatch.setattr(
        pd.DataFrame, "to_parquet", lambda self, where, **kw: half_then_crash(where)
    )
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda self, where, **kw: half_then_crash(where))
    with pytest.raises(Crash):
        mia.write_parquet_atomic(scores_table(), tmp_path / "scores.parquet")
    with pytest.raises(Crash):
        leaderboard.write_table(pd.DataFrame({"a": [1]}), str(tmp_path), "t")
    assert only(tmp_path) == []


def test_json_and_text_writes_are_atomic(tmp_path, monkeypatch):
    from pathlib import Path

    from clearbench.metrics.text import main as metrics

    table = tmp_path / "m.parquet"
    eval_rows().to_parquet(table)
    real = Path.write_text

    def crash(self, text, *a, **kw):
        real(self, text[: len(text) // 2])
        raise Crash

    monkeypatch.setattr(Path, "write_text", crash)
    with pytest.raises(Crash):
        metrics([str(table), "--out", str(tmp_path / "out" / "m.json")])
    with pytest.raises(Crash):
        write_json_atomic(tmp_path / "out" / "model.json", {"base": "b"})
    assert only(tmp_path / "out") == []


def test_torch_state_write_is_atomic(tmp_path, monkeypatch):
    import torch

    from clearbench.vision import ensemble

    state = ensemble.State({"w": torch.zeros(2, 3)}, {}, {}, [0, 1], {"status": ["ok", "ok"]})
    monkeypatch.setattr(torch, "save", lambda obj, where, **kw: half_then_crash(where))
    with pytest.raises(Crash):
        state.save(tmp_path / "state.pt")
    assert only(tmp_path) == []


def test_truncated_vision_files(tmp_path):
    import torch

    from clearbench.io import ArtifactError
    from clearbench.vision import ensemble
    from clearbench.vision.model import ModelError
    from clearbench.vision.protocol import load_images

    good = tmp_path / "state.pt"
    ensemble.State({"w": torch.zeros(2, 3)}, {}, {}, [0, 1], {"status": ["ok", "ok"]}).save(good)
    bad = truncated(good, tmp_path / "cut.pt")
    with pytest.raises(ModelError, match=r"cannot read .*cut\.pt") as err:
        ensemble.State.load(bad)
    assert "\n" not in str(err.value)

    table = tmp_path / "full.parquet"
    scores_table().to_parquet(table)
    with pytest.raises(ArtifactError, match=r"cannot read .*half\.parquet"):
        load_images(truncated(table, tmp_path / "half.parquet"))
