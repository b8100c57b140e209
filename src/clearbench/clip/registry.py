"""The clip track's unlearning methods by name: their hyperparameters (types and ranges) and
defaults. No torch: the workflow reads this to name its jobs and check params before any job;
the methods themselves (methods.py) are imported only by the jobs that unlearn.

Methods (Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with Synthetic Samples",
WACV 2025, and the Unlink paper):
  lipschitz  the paper's Lip: synthetic target images, Lipschitz loss on both towers, top-k
             tensors per tower, sigma and k raised until synthetic accuracy < goal_acc (zero-shot)
  emb        the paper's Emb baseline: the same without the division by ||eps|| (eq 7-9)
  amnesiac   Amns: synthetic target images relabelled with random other identities, CLIP
             contrastive fine-tuning (zero-shot)
  ulip       ULip (Foster et al.): Lipschitz on the vision tower only, on real forget photos
             (semi zero-shot)
  unlink     training-free subspace projection of chosen layers (clearbench.unlink)

Defaults are the paper's (appendix I and the authors' code) where it gives them; the rest are
ours and say so in DEFAULTS' comments.
"""

from __future__ import annotations

from dataclasses import dataclass

from clearbench.hparams import POSITIVE, WEIGHT, Param


@dataclass(frozen=True)
class AutoOr(Param):
    """A float hyperparameter that may also be the string 'auto'."""

    def problem(self, value) -> str | None:
        return None if value == "auto" else super().problem(value)


PROB = Param(float, above=0, high=1)
COUNT = Param(int, low=0)

# the selective Lipschitz schedule (Algorithm 1) shared by lipschitz, emb and ulip
OPTIM = dict(
    lr=POSITIVE,
    weight_decay=WEIGHT,
    beta1=Param(float, low=0, high=1),
    beta2=Param(float, low=0, high=1),
    eps=POSITIVE,
)
SCHEDULE = dict(
    n_perturb=Param(int, low=1),  # N perturbations per image and step
    sigma=POSITIVE,  # initial noise std, in model-input (normalised pixel) units
    sigma_step=WEIGHT,
    sigma_max=POSITIVE,
    k_visual=COUNT,  # vision-tower tensors updated per step
    k_visual_step=COUNT,
    k_visual_max=COUNT,
    visual_scope=Param(str, choices=("attention", "all")),
    goal_acc=Param(float, low=0, high=1),  # stop when accuracy on the forget set is below
    max_iters=Param(int, low=1),  # passes (each: steps_per_iter steps, then the check)
    steps_per_iter=Param(int, low=1),
    batch_size=Param(int, low=1),  # images per forward chunk (gradients are accumulated)
    normalize=Param(bool),  # compare L2-normalised embeddings instead of raw projected ones
    detach_perturbed=Param(bool),  # no gradient through f(x + eps) (the authors' code)
    **OPTIM,
)
TEXT = dict(k_text=COUNT, k_text_step=COUNT, k_text_max=COUNT)
SYNTH = dict(
    n_synthetic=Param(int, low=1),  # per target identity
    target_prob=AutoOr(float, above=0, high=1),  # 'auto': the real photos' mean probability
    synth_steps=Param(int, low=1),
    synth_lr=POSITIVE,  # per-pixel RMS step, as a fraction of the pixel range
)

HP: dict[str, dict[str, Param]] = {
    "lipschitz": {**SCHEDULE, **TEXT, **SYNTH},
    "emb": {**SCHEDULE, **TEXT, **SYNTH, "alpha": WEIGHT},
    "amnesiac": {
        **SYNTH,
        **OPTIM,
        "epochs": Param(int, low=0),
        "batch_size": Param(int, low=2),
    },
    "ulip": {**SCHEDULE},
    "unlink": dict(
        n_samples=Param(int, low=1),  # real forget photos (in all) for the vision layers
        vision_layers=Param(list),  # fnmatch patterns; '{last}' = the last encoder layer
        text_layers=Param(list),
        k=Param(int, low=1),
        energy=Param(float, above=0, high=1),  # instead of k
        variant=Param(str, choices=("plain", "entangled")),
        n_retain=Param(int, low=1),  # retain photos (entangled)
        ridge=Param(float, low=0),
        max_rows=Param(int, low=1),  # feature rows per layer (the seed is the run's)
    ),
}

_OPTIM_DEFAULTS = dict(lr=5e-5, weight_decay=0.2, beta1=0.9, beta2=0.98, eps=1e-6)  # appendix I
_SCHEDULE_DEFAULTS = dict(
    n_perturb=25,  # appendix I
    sigma=0.1,  # appendix I: 0.1 increasing to 2
    sigma_step=0.3,  # ours: ~7 levels 0.1..2 as the authors' schedule
    sigma_max=2.0,
    k_visual=5,  # appendix I: 5 increasing to 8
    k_visual_step=1,  # ours
    k_visual_max=8,
    visual_scope="attention",  # sec 5.3: vision updates restricted to attention layers
    goal_acc=0.1,  # sec 5.3
    max_iters=30,  # the authors' max_epochs
    steps_per_iter=1,  # the authors' code: one step per pass over the 64 samples
    batch_size=16,  # ours (memory only: gradients are accumulated over the whole set)
    normalize=False,  # the authors' code: raw projected embeddings (encode_image/encode_text)
    detach_perturbed=True,  # the authors' code: f(x + eps) under no_grad
    **_OPTIM_DEFAULTS,
)
_TEXT_DEFAULTS = dict(k_text=5, k_text_step=3, k_text_max=20)  # appendix I: 5 -> 20
_SYNTH_DEFAULTS = dict(
    n_synthetic=64,  # sec 5.3
    target_prob="auto",  # sec 5.6: as confident as real samples
    synth_steps=1000,  # ours (the authors cap at 3000 jittered steps)
    synth_lr=0.01,  # ours (~ the authors' lr 25 normalised step on 224x224 images)
)
DEFAULTS: dict[str, dict] = {
    "lipschitz": {**_SCHEDULE_DEFAULTS, **_TEXT_DEFAULTS, **_SYNTH_DEFAULTS},
    "emb": {**_SCHEDULE_DEFAULTS, **_TEXT_DEFAULTS, **_SYNTH_DEFAULTS, "alpha": 1.0},  # ours
    "amnesiac": {**_SYNTH_DEFAULTS, **_OPTIM_DEFAULTS, "epochs": 10, "batch_size": 32},  # ours
    "ulip": dict(_SCHEDULE_DEFAULTS),
    "unlink": dict(
        n_samples=16,
        vision_layers=[
            "vision_model.encoder.layers.{last}.self_attn.[qkv]_proj",
            "vision_model.encoder.layers.{last}.mlp.fc[12]",
            "visual_projection",
        ],
        text_layers=[
            "text_model.encoder.layers.{last}.self_attn.[qkv]_proj",
            "text_model.encoder.layers.{last}.mlp.fc[12]",
            "text_projection",
        ],
        k=8,
        energy=None,  # set it (and leave k unset) to choose k by energy share
        variant="plain",
        n_retain=64,
        ridge=1e-3,
        max_rows=4096,
    ),
}


def declared() -> dict[str, dict[str, Param]]:
    """Each method's hyperparameters as its params section may set them."""
    return {name: dict(hp) for name, hp in HP.items()}
