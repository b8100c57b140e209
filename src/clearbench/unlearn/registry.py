"""The language tracks' unlearning methods by name: each one's hyperparameters (types and
ranges) and whether it needs DPO's reference model. No torch: the workflow reads this to name
its jobs and check params before any job, and the objectives (methods.py) are imported only by
the jobs that train.

Adding a method: its entry here, its objective in methods.py (`@register(name)`), and its
section in params.yaml `unlearn.method_hp`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clearbench.hparams import POSITIVE, SEED, UNLINK, WEIGHT, Param


@dataclass(frozen=True)
class Declared:
    hp: dict[str, Param] = field(default_factory=dict)  # checked against params before any job
    reference: bool = False  # needs the DPO reference model (tuned on the IDK forget set)
    # a training-free weight edit (clearbench.unlearn.edit): no optimizer, no l1 penalty, and it
    # runs only on the tracks and in the forget modality named here
    edit: bool = False
    tracks: tuple[str, ...] = ("text", "vlm")
    modality: str | None = None  # None: the track's modalities (unlearn.modalities)


# training keys of the track (text.unlearn, vlm.unlearn) that any method's section may override
# for that method alone, e.g. unlearn.method_hp.ga.lr (optional, unlike the declared ones)
TRAINING: dict[str, Param] = {
    "lr": POSITIVE,
    "epochs": Param(int, low=0),
    "batch_size": Param(int, low=1),
    "weight_decay": WEIGHT,
}

DECLARED: dict[str, Declared] = {
    "retain_ft": Declared(),
    "ga": Declared(),
    "gd": Declared(),
    "kl": Declared(),
    "idk": Declared(),
    "dpo": Declared(dict(beta=POSITIVE, lambda1=WEIGHT, lambda2=WEIGHT), reference=True),
    "npo": Declared(dict(beta=POSITIVE)),
    "simnpo": Declared(
        dict(beta=POSITIVE, delta=Param(float), forget_weight=WEIGHT, retain_weight=WEIGHT)
    ),
    "scrub": Declared(dict(alpha=WEIGHT, gamma=WEIGHT)),
    "llmu": Declared(dict(forget_weight=WEIGHT, idk_weight=WEIGHT, retain_weight=WEIGHT)),
    "rmu": Declared(dict(layer=Param(int, low=1), c=Param(float, low=0), alpha=WEIGHT, seed=SEED)),
    # Unlink on the VLM's vision tower and projector, from forget photos (the visual modality);
    # on a text-only model its features would be the forget questions' common words
    "unlink": Declared(UNLINK, edit=True, tracks=("vlm",), modality="visual"),
}
