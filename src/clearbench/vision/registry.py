"""The vision track's unlearning methods by name and their hyperparameters (types and ranges).
No torch: the workflow reads this to name its jobs and check params before any job; the loss
functions (methods.py) are imported only by the jobs that train.

Adding a method: its entry here, its function in methods.py (`@register(name)`, keyword
hyperparameters with the paper's defaults), and its name in params (vision.methods).
"""

from __future__ import annotations

from clearbench.hparams import POSITIVE, SEED, UNLINK, WEIGHT, Param

# name -> its declared hyperparameters (all optional: the function's defaults apply)
HP: dict[str, dict[str, Param]] = {
    "retain_ft": {},
    "neggrad": dict(forget_weight=WEIGHT),
    "scrub": dict(alpha=WEIGHT, gamma=WEIGHT, temperature=POSITIVE),
    "scrub_bio": {},
    "twins": dict(
        shift=Param(int, low=0),
        noise=WEIGHT,
        jitter=WEIGHT,
        distance=Param(str, choices=("l2", "kl")),
    ),
    "sparsity": dict(l1_lambda=WEIGHT),
    "llmu": dict(random_weight=WEIGHT, retain_weight=WEIGHT),
    "rmu": dict(layer=Param(int, low=0), c=Param(float, low=0), alpha=WEIGHT, seed=SEED),
    "dpo": dict(beta=POSITIVE, lambda1=WEIGHT, lambda2=WEIGHT),
    "grad_orth": {},
    "unlink": UNLINK,
}
# training-free edits (clearbench.vision.protocol.edit_models): no optimizer, no epochs
EDITS = ("unlink",)
# what any method's section may also override (clearbench.vision.protocol.unlearn_task)
OPTIMIZER_HP = {
    "lr": POSITIVE,
    "momentum": Param(float, low=0, high=1),
    "weight_decay": WEIGHT,
    "epochs": Param(int, low=0),
    "batch_size": Param(int, low=1),
}


def declared() -> dict[str, dict[str, Param]]:
    """Each method's hyperparameters as its params section may set them: its own and the
    optimizer overrides."""
    return {name: hp if name in EDITS else {**OPTIMIZER_HP, **hp} for name, hp in HP.items()}
