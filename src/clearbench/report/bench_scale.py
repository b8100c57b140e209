"""Scale benchmark: the paper's models timed at the paper's batch sizes, and from those times the
GPU-hours of the whole `paper` reproduction (`python -m clearbench bench-scale`; the estimate
itself is gpu_hours.py).

What runs (random weights built from configs, nothing downloaded), per job kind:
  text    Llama-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000): a LoRA training
          step (the pipeline's `optimize`: AdamW, clipping), a frozen forward (what an unlearning
          method pays for the original or the reference), an evaluation batch (answer NLL) and
          greedy generation with the KV cache (the prefill, then each new token)
  vlm     LLaVA-1.5-7B: that Llama behind CLIP ViT-L/14 at 336 px (576 image tokens, features
          of layer -2, the 2-layer GELU projector), the same measurements with an image per row
  vision  vmapped ensembles of ResNet-18 (`vision.chunk` models, as one vision job trains): a
          training step at the train and the unlearn batch size, one model at the pretraining
          batch size, and an embedding batch (how every vision job scores its models)
  clip    CLIP ViT-B/32: a contrastive step of both towers, a forward and backward pass of the
          image tower (synthesis, Lipschitz steps) and a forward pass without gradient
Batch sizes, sequence lengths, LoRA, chunk and image size come from the profile (default
config/paper.yaml over params.yaml, as Snakemake layers them). Sequences are max_len long: the
upper bound of a batch padded to the profile's limit (TOFU QA average ~55 Llama tokens, the
longest ~150; `--text-len` measures a typical batch instead).

Scales: `paper` (the real sizes, for a GPU) or a scaled-down config of the same architectures for
a CPU (`small`, `tiny`: see SCALES). A CPU or scaled-down measurement gives an extrapolation,
printed as such, never as GPU-hours.
"""

from __future__ import annotations

import copy
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from clearbench.compute import peak_memory_mb, resolve_device, to_device, torch_dtype
from clearbench.io import write_text_atomic
from clearbench.models.factory import build_model
from clearbench.report import gpu_hours
from clearbench.report.gpu_hours import CLEAR, clip_keys, key, lm_keys, vision_keys
from clearbench.train.loop import optimize
from clearbench.train.qa import answer_outputs, sequence_nll
from clearbench.train.text import add_lora, prepare_for_training
from clearbench.train.vlm import frozen_tower_lora
from clearbench.vision import ensemble as ens
from clearbench.vision import model as vm
from clearbench.vision.protocol import opt_of

GEN_TOKENS = 8  # new tokens of the timed generation (per-token time extrapolates to max_new_tokens)

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)  # fmt: skip
LLAMA2_VOCAB = 32000
CLIP_VIT_L_336 = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                      num_hidden_layers=24, num_attention_heads=16, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, projection_dim=768)  # fmt: skip
LLAVA_VOCAB = 32064  # llava-hf/llava-1.5-7b-hf: Llama's 32000, <image>, padding to 64
LLAVA_KEYS = dict(
    vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu"
)
# openai/clip-vit-base-patch32, the clip track's `paper` model
CLIP_VIT_B_32 = dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12)  # fmt: skip
CLIP_TEXT_B_32 = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77)  # fmt: skip
CLIP_VOCAB, CLIP_PROJECTION = 49408, 512
CLIP_PROMPT_TOKENS = 16  # "a photo of {name}": about 8-12 BPE tokens, padded
RESNET18 = dict(
    embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"
)


@dataclass(frozen=True)
class Scale:
    """Divisors applied to the paper's sizes. Heads keep their size (Llama 128, CLIP 64), so
    width divides the head count; CLIP keeps 14 px patches, so image tokens fall as image**2;
    ResNet-18 keeps its depths. Language batch sizes stay the paper's."""

    name: str
    width: int = 1  # hidden and MLP sizes of every model
    depth: int = 1  # Llama and CLIP layers
    vocab: int = 1
    seq: int = 1  # text tokens per sequence
    image: int = 1  # image side (CLIP and ResNet)
    models: int = 1  # models of a vision ensemble
    batch: int = 1  # vision batch sizes

    def transformer(self, arch: dict, min_layers: int) -> dict:
        heads = max(1, arch["num_attention_heads"] // self.width)
        return arch | dict(
            hidden_size=heads * (arch["hidden_size"] // arch["num_attention_heads"]),
            intermediate_size=arch["intermediate_size"] // self.width,
            num_hidden_layers=max(min_layers, arch["num_hidden_layers"] // self.depth),
            num_attention_heads=heads,
        )

    def llama(self) -> dict:
        return self.transformer(LLAMA2_7B, 1)

    def clip(self) -> dict:
        patch = CLIP_VIT_L_336["patch_size"]
        side = max(patch, CLIP_VIT_L_336["image_size"] // self.image // patch * patch)
        return self.transformer(CLIP_VIT_L_336, 2) | dict(image_size=side)  # layer -2: 2 layers

    def resnet(self) -> dict:
        return RESNET18 | dict(
            embedding_size=max(4, RESNET18["embedding_size"] // self.width),
            hidden_sizes=[max(4, h // self.width) for h in RESNET18["hidden_sizes"]],
        )

    def vocab_size(self, vocab: int) -> int:
        return max(64, vocab // self.vocab)

    def tokens(self, n: int) -> int:
        return max(8, n // self.seq)

    def image_side(self, side: int) -> int:
        return max(16, side // self.image)

    def ensemble(self, models: int, batch: int) -> tuple[int, int]:
        return max(1, models // self.models), max(1, batch // self.batch)


SCALES = {
    "paper": Scale("paper"),
    # a CPU minute or two: Llama 4 x 512 (MLP 1376), CLIP 3 x 128 at 112 px (64 image tokens),
    # 128 text tokens, ResNet-18 at 1/8 width on 37 px, 8 models x batch 64
    "small": Scale("small", width=8, depth=8, vocab=8, seq=4, image=3, models=4, batch=4),
    # seconds (the test): Llama 2 x 128, CLIP 2 x 64 at 56 px (16 image tokens), 64 text
    # tokens, ResNet-18 at 1/32 width on 18 px, 4 models x batch 32
    "tiny": Scale("tiny", width=32, depth=16, vocab=32, seq=8, image=6, models=8, batch=8),
}


@dataclass
class Timing:
    """One measured unit: median seconds, what it processes (tokens or model-images) and the
    peak memory of the job kind that measured it."""

    key: str
    seconds: float
    items: float
    unit: str  # tok | img (model-images: images x models of the ensemble)
    shape: str
    peak_mb: float | None
    repeats: int

    @property
    def per_second(self) -> float:
        return self.items / self.seconds


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class Env:
    device: object  # torch.device
    dtype: object  # torch.dtype
    steps: int
    gradient_checkpointing: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def repeat(self, fn) -> float:
        """Median seconds of `steps` calls after one warm-up call."""
        fn()
        times = []
        for _ in range(self.steps):
            start = self.now()
            fn()
            times.append(self.now() - start)
        return statistics.median(times)

    def memory(self):
        """A function that returns the peak memory (MB) of the job kind starting now."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return partial(peak_memory_mb, self.device)
        # the RSS peak never falls: a kind that reuses memory freed by an earlier one shows less
        start = rss_peak_mb()
        return lambda: rss_peak_mb() - start

    def memory_source(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated per job kind"
        return "cpu: growth of the process's peak RSS per job kind (a lower bound)"

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def step_seconds(ticks: list[float]) -> float:
    """Median time between consecutive step starts, the first (warm-up) step left out."""
    return statistics.median(b - a for a, b in pairwise(ticks[1:]))


def progress(msg: str) -> None:
    print(f"bench-scale: {msg}", file=sys.stderr, flush=True)


def attempt(fn, keys: list[str], failed: dict, env: Env, cleanup=None) -> list[Timing]:
    """fn's timings; out of memory is a result (the kind's keys in `failed`), not a crash."""
    try:
        return fn()
    except (torch.cuda.OutOfMemoryError, MemoryError):
        progress(f"out of memory: {', '.join(keys)}")
        failed.update(dict.fromkeys(keys, "out of memory"))
    # out of the handler: the traceback, and the tensors its frames hold, are gone
    if cleanup:
        cleanup()
    env.free()
    return []


# ------------------------------------------------------------------------ language models


@contextmanager
def building(env: Env):
    """Parameters created directly on the device in the dtype: a 7B model never passes through
    float32 in host memory."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(env.dtype)
    try:
        with torch.device(env.device):
            yield
    finally:
        torch.set_default_dtype(old)


@dataclass
class LMShape:
    """The shape of a language batch: vocabulary, text tokens, image tokens and image side per
    row (the last two 0 for text)."""

    vocab: int
    text_len: int
    n_image: int = 0
    image_side: int = 0

    @property
    def seq_len(self) -> int:
        return self.n_image + self.text_len

    @property
    def prompt_len(self) -> int:  # generation prompts: a question, a quarter of the sequence
        return self.n_image + max(4, self.text_len // 4)

    def batch(self, rows: int, text_len: int | None = None, labels: bool = True) -> dict:
        """Random ids: BOS, the image placeholders, then text; the second half of the text is
        the scored answer."""
        gen = torch.Generator().manual_seed(rows)
        n = self.text_len if text_len is None else text_len
        image_token = self.vocab - 1
        text = torch.randint(3, image_token, (rows, n), generator=gen)
        text[:, 0] = 1  # BOS
        images = torch.full((rows, self.n_image), image_token)
        ids = torch.cat([text[:, :1], images, text[:, 1:]], 1)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if labels:
            out["labels"] = ids.clone()
            out["labels"][:, : self.n_image + n // 2] = -100
        if self.n_image:
            side = self.image_side
            out["pixel_values"] = torch.randn(rows, 3, side, side, generator=gen)
        return out

    def prompts(self, rows: int) -> dict:
        return self.batch(rows, self.prompt_len - self.n_image, labels=False)


def lm_model(track: str, scale: Scale, env: Env, text_len: int):
    """Llama-2-7B (text) or LLaVA-1.5-7B (vlm) with random weights, and its batch shape."""
    if track == "text":
        vocab = scale.vocab_size(LLAMA2_VOCAB)
        with building(env):
            model = build_model({"config": scale.llama()}, vocab_size=vocab, seed=0)
        return model.eval(), LMShape(vocab, text_len)
    vocab, clip = scale.vocab_size(LLAVA_VOCAB), scale.clip()
    spec = {"config": {"vision_config": clip, "text_config": scale.llama(), **LLAVA_KEYS}}
    with building(env):
        model = build_model(spec, vocab_size=vocab, seed=0, image_token_id=vocab - 1)
    n_image = (clip["image_size"] // clip["patch_size"]) ** 2
    return model.eval(), LMShape(vocab, text_len, n_image, clip["image_size"])


def answers_nll(model, batch):
    return answer_outputs(model, batch).nll()


def lm_eval(model, track: str, shape: LMShape, b: int, env: Env, nll) -> list[Timing]:
    """One evaluation batch: answer NLL (`nll(model, batch)`) of `b` sequences, then greedy
    generation from `b` prompts (KV cache): the prefill with the first token, then each further
    token."""
    peak = env.memory()
    batch = to_device(shape.batch(b), model)
    prompts = to_device(shape.prompts(b), model)

    def generate(n):
        model.generate(**prompts, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       use_cache=True, pad_token_id=0, eos_token_id=2)  # fmt: skip

    with torch.no_grad():
        score_s = env.repeat(lambda: nll(model, batch))
        first = env.repeat(lambda: generate(1))
        full = env.repeat(lambda: generate(GEN_TOKENS))
    token = (full - first) / (GEN_TOKENS - 1)
    if token <= 0:  # timer noise on a tiny model: the mean over the whole generation
        token = full / GEN_TOKENS
    timing = partial(Timing, unit="tok", peak_mb=peak(), repeats=env.steps)
    seq, prompt = shape.seq_len, shape.prompt_len
    return [
        timing(key(track, "score", b), score_s, b * seq, shape=f"{b}x{seq}"),
        timing(key(track, "prefill", b), first, b * prompt, shape=f"{b}x{prompt}"),
        timing(key(track, "token", b), token, b, shape=f"{b}x1 (KV cache)"),
    ]


def lm_train(model, track: str, shape: LMShape, b: int, env: Env, nll) -> list[Timing]:
    """A LoRA training step of answer NLL through the pipeline's `optimize`, timed between
    consecutive steps: one warm-up step, `steps` timed steps, one more to close the last
    interval. Then a frozen forward with the adapter disabled, as an unlearning objective runs
    the original."""
    peak = env.memory()
    batch = to_device(shape.batch(b), model)
    ticks = []

    def step_loss(_):
        ticks.append(env.now())
        return nll(model, batch).mean()

    k = key(track, "train", b)
    optimize(model, range(env.steps + 2), step_loss, lr=1e-5, weight_decay=0.01, desc=k)

    def frozen():
        with model.disable_adapter(), torch.no_grad():
            answer_outputs(model, batch)

    frozen_s = env.repeat(frozen)
    timing = partial(Timing, items=b * shape.seq_len, unit="tok", shape=f"{b}x{shape.seq_len}",
                     peak_mb=peak(), repeats=env.steps)  # fmt: skip
    return [timing(k, step_seconds(ticks)), timing(key(track, "frozen", b), frozen_s)]


def bench_language(
    track: str, cfg: dict, scale: Scale, env: Env, text_len: int | None, failed: dict
) -> list[Timing]:
    """Both job kinds of a language track on one model: evaluation first (the bare model, as an
    evaluation job loads it merged), then LoRA training (peft wraps the model in place)."""
    model, shape = lm_model(track, scale, env, text_len or scale.tokens(cfg[track]["max_len"]))
    # as each track's finetuning and evaluation compute it: the text track over the full
    # logits (train/qa.sequence_nll), the vlm with the LM head on the answer positions only
    nll = sequence_nll if track == "text" else answers_nll
    sizes, out = lm_keys(cfg)[track], []
    for b in sorted(sizes["eval"]):
        progress(f"{track} eval batch {b} x {shape.seq_len} tokens")
        keys = [key(track, op, b) for op in ("score", "prefill", "token")]
        out += attempt(partial(lm_eval, model, track, shape, b, env, nll), keys, failed, env)
    finetune = cfg[track]["finetune"]
    lora = finetune["lora"] | (frozen_tower_lora(finetune) if track == "vlm" else {})
    compute = {"quantize": "none", "gradient_checkpointing": env.gradient_checkpointing}
    model = add_lora(prepare_for_training(model, compute), lora)
    for b in sorted(sizes["train"]):
        progress(f"{track} LoRA train step batch {b} x {shape.seq_len} tokens")
        keys = [key(track, "train", b), key(track, "frozen", b)]
        run_step = partial(lm_train, model, track, shape, b, env, nll)
        out += attempt(run_step, keys, failed, env, cleanup=model.zero_grad)
    del model
    env.free()
    return out


# --------------------------------------------------------------------------------- vision


class Ticked:
    """A vision task whose every loss call is timed (run_steps has no other hook)."""

    def __init__(self, task, env: Env):
        self.task, self.env, self.ticks = task, env, []
        self.n_steps = task.n_steps

    def loss(self, t, rows, student, ctx):
        self.ticks.append(self.env.now())
        return self.task.loss(t, rows, student, ctx)


def vision_ensemble(cfg: dict, scale: Scale, n_models: int):
    """`n_models` ResNet-18 identity models stacked for vmap (as vision jobs build them)."""
    dim = cfg["vision"]["model"].get("embedding_dim", 512)
    spec = {"config": scale.resnet(), "embedding_dim": max(4, dim // scale.width)}
    base = vm.build_model(spec, CLEAR["authors"], seed=0)
    nets = [copy.deepcopy(base).new_classes(CLEAR["authors"], k) for k in range(n_models)]
    return ens.stack(nets)


def vision_train(cfg: dict, state, env: Env, b: int, side: int) -> float:
    """Training steps of an ensemble (margin softmax over half the identities, as a protocol
    model trains), timed between consecutive steps; pixels stay on the host as in the jobs."""
    m, gen = state.n, torch.Generator().manual_seed(0)
    pixels = torch.randn(2 * b, 3, side, side, generator=gen)
    own = CLEAR["authors"] // 2  # a protocol model trains on about half the identities
    labels = torch.randint(own, (2 * b,), generator=gen).numpy()
    mask = np.zeros((m, CLEAR["authors"]), bool)
    mask[:, :own] = True
    plan = ens.index_plan([np.arange(2 * b)] * m, env.steps + 2, b, list(range(m)))
    task = Ticked(ens.IdentityTask(pixels, labels, plan, mask, cfg["vision"].get("loss")), env)
    ens.run_steps(state, task, opt_of(cfg["vision"]["train"]), m > 1, device=env.device)
    return step_seconds(task.ticks)


def vision_embed(cfg: dict, state, env: Env, b: int, side: int) -> float:
    """One eval-mode embedding batch of the ensemble (scoring; an unlearning method's teacher),
    the pixels copied to the device per batch as vision.ensemble.embed does."""
    state = state.to(env.device)
    fwd = ens.make_forward(vm.template(state.config), state.n > 1)
    pixels = torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return env.repeat(lambda: fwd(state.params, state.buffers, pixels.to(env.device), False))


def bench_vision(cfg: dict, scale: Scale, env: Env, failed: dict) -> list[Timing]:
    side = scale.image_side(cfg["vision"]["image_size"])

    def unit(fn, k: str, m: int, b: int) -> list[Timing]:  # fn's seconds on a fresh ensemble
        peak = env.memory()
        seconds = fn(cfg, vision_ensemble(cfg, scale, m), env, b, side)
        return [Timing(k, seconds, m * b, "img", f"{m}x{b}x{side}px", peak(), env.steps)]

    out = []
    for op, what, fn in (("train", "train step", vision_train),
                         ("embed", "embedding batch", vision_embed)):  # fmt: skip
        for models, batch in sorted(vision_keys(cfg)[op]):
            k = key("vision", op, f"{models}x{batch}")
            m, b = scale.ensemble(models, batch)
            progress(f"vision {what} {m} models x batch {b} at {side} px")
            out += attempt(partial(unit, fn, k, m, b), [k], failed, env)
            env.free()
    return out


# ----------------------------------------------------------------------------------- clip


def clip_model(scale: Scale, env: Env):
    """The clip track's dual encoder at `scale` (32 px patches kept: image tokens fall as
    image**2), random weights, float32 as the clip jobs train it."""
    from transformers import CLIPConfig, CLIPModel

    patch = CLIP_VIT_B_32["patch_size"]
    side = max(patch, CLIP_VIT_B_32["image_size"] // scale.image // patch * patch)
    vision = scale.transformer(CLIP_VIT_B_32, 1) | dict(image_size=side)
    text = scale.transformer(CLIP_TEXT_B_32, 1) | dict(vocab_size=scale.vocab_size(CLIP_VOCAB))
    config = CLIPConfig(text_config=text, vision_config=vision,
                        projection_dim=max(16, CLIP_PROJECTION // scale.width))  # fmt: skip
    return CLIPModel(config).to(env.device), side


def clip_step(model, op: str, b: int, side: int, env: Env):
    """One timed call of a clip unit on random inputs (see gpu_hours.clip_keys)."""
    from clearbench.clip.methods import image_features, text_features

    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(b, 3, side, side, generator=gen).to(env.device)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(vocab, (b, CLIP_PROMPT_TOKENS), generator=gen).to(env.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def train():
        img = torch.nn.functional.normalize(image_features(model, pixels), dim=-1)
        txt = torch.nn.functional.normalize(text_features(model, {"input_ids": ids}), dim=-1)
        logits = img @ txt.T * model.logit_scale.exp()
        target = torch.arange(b, device=env.device)
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        (loss + torch.nn.functional.cross_entropy(logits.T, target)).backward()
        opt.step()

    def image():
        model.zero_grad()
        image_features(model, pixels).sum().backward()

    def embed():
        with torch.no_grad():
            image_features(model, pixels)

    return env.repeat({"train": train, "image": image, "embed": embed}[op])


def bench_clip(cfg: dict, scale: Scale, env: Env, failed: dict) -> list[Timing]:
    out = []
    for op, batches in clip_keys(cfg).items():
        for b in sorted(batches):
            k = key("clip", op, b)
            progress(f"clip {op} batch {b}")

            def unit(op=op, b=b, k=k):
                peak = env.memory()
                model, side = clip_model(scale, env)
                seconds = clip_step(model, op, b, side, env)
                return [Timing(k, seconds, b, "img", f"{b}x{side}px", peak(), env.steps)]

            out += attempt(unit, [k], failed, env)
            env.free()
    return out


def measure(
    cfg: dict, scale: Scale, env: Env, text_len: int | None = None
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Every unit the profile's tracks need, measured on `env`'s device, and the units that
    could not be measured (key -> why)."""
    torch.manual_seed(0)
    out: list[Timing] = []
    failed: dict[str, str] = {}
    for track in ("text", "vlm"):
        if track in cfg["tracks"]:
            out += bench_language(track, cfg, scale, env, text_len, failed)
    if "vision" in cfg["tracks"]:
        out += bench_vision(cfg, scale, env, failed)
    if "clip" in cfg["tracks"]:
        out += bench_clip(cfg, scale, env, failed)
    return {t.key: t for t in out}, failed


# ------------------------------------------------------------------------------------ run


def format_measurements(timings: dict[str, Timing], failed: dict[str, str], header: str) -> str:
    lines = [header, f"{'unit':24} {'shape':22} {'s/unit':>10} {'throughput':>16} {'peak MB':>9}"]
    for t in timings.values():
        peak = "-" if t.peak_mb is None else f"{t.peak_mb:,.0f}"
        rate = f"{t.per_second:,.0f} {t.unit}/s"
        lines.append(f"{t.key:24} {t.shape:22} {t.seconds:10.4f} {rate:>16} {peak:>9}")
    lines += [f"{k:24} {why.upper()}" for k, why in failed.items()]
    return "\n".join(lines)


def hours_label(env: Env, scale: Scale) -> tuple[str, bool]:
    """What the estimate's hours are, and whether they are GPU-hours of the paper's models."""
    if env.cuda and scale.name == "paper":
        return f"{torch.cuda.get_device_name(env.device)} GPU-hours", True
    where = "a CPU" if not env.cuda else "a GPU with scaled-down models"
    return f"hours on {where} (scale {scale.name}): NOT GPU-hours", False


def warning(env: Env, scale: Scale) -> str:
    bar = "!" * 78
    return "\n".join([
        bar,
        f"!! {'CPU' if not env.cuda else 'SCALED-DOWN'} EXTRAPOLATION ({env.device.type}, scale "
        f"{scale.name}): NOT GPU-HOURS.",
        "!! These hours are what the paper DAG's jobs would take with THESE models on THIS",
        "!! device. For GPU-hours run `python -m clearbench bench-scale` on a GPU (scale paper).",
        bar,
    ])  # fmt: skip


def report_estimate(cfg: dict, path: Path, jobs: list, timings: dict, env: Env, scale: Scale):
    """Print the estimate of the DAG's jobs from the timings; its part of the summary."""
    work, skipped = gpu_hours.plan_dag(jobs, cfg)
    rows = gpu_hours.estimate(work, {k: t.seconds for k, t in timings.items()})
    label, is_gpu = hours_label(env, scale)
    print(f"\nestimate: the {cfg.get('profile', path.stem)} DAG ({path.name}), {len(jobs)} jobs")
    print(gpu_hours.format_estimate(rows, label, skipped))
    if cfg.get("profile") != "paper":
        print("note: the jobs' work uses the paper's data sizes (TOFU, the published CLEAR),"
              f" not those of the {cfg.get('profile')} profile")  # fmt: skip
    if not is_gpu:
        print(warning(env, scale))
    return {
        "estimate": [asdict(r) | {"hours": r.hours} for r in rows],
        "not_counted": skipped,
        "total_hours": sum(r.hours for r in rows),
        "hours_unit": label,
        "gpu_hours": is_gpu,
        "paper_a100_hours": gpu_hours.PAPER_HOURS,
        "aim_h100_hours": gpu_hours.AIM_HOURS,
    }


def setup(configfile, device, dtype, scale, steps, gradient_checkpointing):
    """The profile's path and params, the Env to measure in and the Scale of the models."""
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    path = Path(configfile)
    path = (path if path.is_absolute() or path.exists() else gpu_hours.ROOT / path).resolve()
    cfg = gpu_hours.load_config(path)
    dev = resolve_device(device)
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    name = ("paper" if dev.type == "cuda" else "small") if scale == "auto" else scale
    if name not in SCALES:
        raise ValueError(f"--scale must be one of auto, {', '.join(SCALES)}, got '{scale}'")
    if gradient_checkpointing is None:
        gradient_checkpointing = bool(cfg["compute"].get("gradient_checkpointing", False))
    env = Env(dev, torch_dtype(dtype), steps, gradient_checkpointing)
    return path, cfg, env, SCALES[name]


def dry_run(path: Path) -> tuple[list, str | None]:
    """The DAG's jobs, or none and why (the measurements still run)."""
    progress(f"dry-run of the DAG of {path.name}")
    try:
        return gpu_hours.dag_jobs(path), None
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        progress(f"error: {err}")
        return [], str(err)


def run(
    configfile: str | Path = gpu_hours.DEFAULT_CONFIG,
    device: str = "auto",
    dtype: str | None = None,
    scale: str = "auto",
    steps: int = 3,
    gradient_checkpointing: bool | None = None,
    text_len: int | None = None,
    out: str | Path | None = None,
    with_estimate: bool = True,
) -> dict:
    """Measure, estimate, print (tables on stdout, progress on stderr); the summary as a dict
    (also written to `out` as JSON with every measurement)."""
    path, cfg, env, sc = setup(configfile, device, dtype, scale, steps, gradient_checkpointing)
    dtype = str(env.dtype).removeprefix("torch.")
    # the DAG first: a broken profile stops before minutes of measuring
    jobs, dag_error = dry_run(path) if with_estimate else ([], None)
    timings, failed = measure(cfg, sc, env, text_len)
    checkpointing = "on" if env.gradient_checkpointing else "off"
    header = (
        f"measurements: {env.device.type}, {dtype}, scale {sc.name}, median of {steps} after"
        f" a warm-up, gradient checkpointing {checkpointing}; memory: {env.memory_source()}"
    )
    print(format_measurements(timings, failed, header))
    summary = {
        "configfile": str(path),
        "device": env.device.type,
        "dtype": dtype,
        "scale": asdict(sc),
        "steps": steps,
        "gradient_checkpointing": env.gradient_checkpointing,
        "memory": env.memory_source(),
        "measurements": [asdict(t) | {"per_second": t.per_second} for t in timings.values()],
        "failed": failed,
    }
    if jobs:
        summary |= report_estimate(cfg, path, jobs, timings, env, sc)
    if dag_error:
        summary["dag_error"] = dag_error
    if out:
        write_text_atomic(out, json.dumps(summary, indent=2) + "\n")
    return summary
