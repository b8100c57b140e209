"""Unlearning methods of the clip track: make a CLIP dual encoder forget the target identities.

`unlearn_clip(model, task, method, hp, seed)` edits `model` in place and returns an info dict.
Hyperparameters are declared (types, ranges, defaults) in registry.py, which has no torch.

The paper (Kravets & Namboodiri, WACV 2025; "the paper") and how we read it:

* Embeddings are the *projected* ones (`get_image_features` / `get_text_features`: the
  "final representation" of both towers in the shared space), **not** L2-normalised by default,
  as in the authors' code (`encode_image` / `encode_text`); `normalize=True` compares unit
  vectors instead. Zero-shot logits always use normalised embeddings (CLIP's classifier).
* The Lipschitz loss per image x of identity c (eq 4-5, Algorithm 1):
      mean over N draws eps ~ N(0, sigma^2 I) of
      (||f_img(x) - f_img(x+eps)|| + ||f_txt(prompt_c) - f_img(x+eps)||) / ||eps||.
  The perturbed embedding f_img(x+eps) carries no gradient (`detach_perturbed`, default True,
  as in the authors' code): the clean image and the prompt are pulled towards the noisy
  images' embeddings. The perturbed input is not clamped to the pixel range (neither is it
  in the authors' code). sigma is in model-input (normalised pixel) units.
* Selective update (sec 4.4): after the gradient of the loss over the whole forget set (one
  optimizer step per pass, as the authors' code with its 64-sample batch), the vision-tower
  and text-tower tensors are ranked separately by mean |grad| and only the top k_visual / k_text
  are stepped (Adam, lr 5e-5, wd 0.2, betas (0.9, 0.98)); the others get no update at all.
  Vision tower = vision_model.* and visual_projection; `visual_scope='attention'` (default)
  makes only the encoder's self-attention tensors (q/k/v/out projections) eligible, the
  paper's restriction for RN50 (sec 5.3, and Fig. 4: values, queries and output projections
  are the most chosen); 'all' makes every vision tensor eligible (the authors' ViT runs).
  Text tower = text_model.* and text_projection, all eligible (sec 5.3). logit_scale is
  never updated.
* Schedule (sec 4.5, Algorithm 1): after each pass the accuracy on the synthetic set is
  measured; below goal_acc it stops, else sigma += sigma_step, k_visual += k_visual_step,
  k_text += k_text_step (capped at sigma_max, k_visual_max, k_text_max), up to max_iters.
  Unlike the authors' code we do not roll a pass back when it fails to lower the accuracy.
* Synthetic samples (sec 4.3, 5.6): from seeded Gaussian noise in the pixel range, steps of
  gradient descent on the cross-entropy towards the target over all identities (a normalised
  step: per-pixel RMS = synth_lr * pixel range), clamped to the range; an image stops once the
  target is its top-1 prediction with probability >= target_prob, the crossing step being
  bisected so that it lands just above target_prob. 'auto' = the original model's mean
  probability of the true identity on that target's real forget photos (the paper's "stored
  past probabilities"). No jitter or blur (the authors' code has them for 224 px photos).
* Emb (eq 7-9) is implemented as printed: the same terms without the division by ||eps||,
  plus alpha * ||f_img(x) + f_txt(prompt)|| (a plus sign: minimising it pushes the image and
  its prompt towards opposite directions). alpha is not given in the paper (default ours).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clearbench.clip.registry import DEFAULTS, HP
from clearbench.hparams import param

METHODS: dict = {}  # name -> fn(model, task, gen, seed, **hp) -> info


def register(name):
    if name not in HP:
        raise KeyError(f"clip method {name!r}: declare it in clearbench/clip/registry.py")

    def add(fn):
        METHODS[name] = fn
        return fn

    return add


# ---------------------------------------------------------------- model helpers


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object whose pooler_output is the projected embedding;
    older versions return the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """Projected (not normalised) image embeddings (n, d)."""
    return _features(model.get_image_features(pixel_values=pixels))


def text_features(model, text_inputs: dict) -> torch.Tensor:
    """Projected (not normalised) text embeddings (n, d)."""
    return _features(model.get_text_features(**text_inputs))


def zero_shot_logits(model, pixels: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """logit_scale.exp() * cos(image, prompt) over all identities: (n, C)."""
    img = F.normalize(image_features(model, pixels), dim=-1)
    return model.logit_scale.exp() * img @ F.normalize(text_emb, dim=-1).T


def _rows(text_inputs: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in text_inputs.items()}


def _finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"non-finite {what} loss")


@torch.no_grad()
def _predict(model, pixels, text_inputs, chunk: int = 64) -> torch.Tensor:
    """Softmax over the identities, (n, C)."""
    text_emb = text_features(model, text_inputs)
    out = [
        zero_shot_logits(model, pixels[i : i + chunk], text_emb).softmax(-1)
        for i in range(0, len(pixels), chunk)
    ]
    return torch.cat(out) if out else pixels.new_zeros(0, len(text_emb))


def accuracy(model, pixels, labels, text_inputs) -> float:
    if not len(pixels):
        return float("nan")
    probs = _predict(model, pixels, text_inputs)
    _finite(probs, "evaluation")
    return float((probs.argmax(-1) == labels).float().mean())


# ---------------------------------------------------------------- entry point


def check_hp(method: str, hp: dict) -> dict:
    """hp against registry.HP (one-line ValueError), merged over the method's defaults."""
    if method not in HP:
        raise ValueError(f"unknown clip method {method!r} (known: {', '.join(sorted(HP))})")
    for name, value in hp.items():
        if name not in HP[method]:
            known = ", ".join(sorted(HP[method]))
            raise ValueError(
                f"clip method {method!r}: unknown hyperparameter {name!r} (known: {known})"
            )
        problem = param(HP[method][name]).problem(value)
        if problem:
            raise ValueError(f"clip method {method!r}: hyperparameter {name!r}: {problem}")
    kw = {**DEFAULTS[method], **hp}
    if method == "unlink" and "energy" in hp:
        if "k" in hp:
            raise ValueError("clip method 'unlink': give k or energy, not both")
        kw["k"] = None
    return kw


def unlearn_clip(model, task, method: str, hp: dict, seed: int) -> dict:
    """Edit/train `model` in place to forget task.target; return an info dict (see each
    method). Raises ValueError on a bad hyperparameter, FloatingPointError on a non-finite
    loss. Every random draw comes from one torch.Generator seeded by `seed`."""
    kw = check_hp(method, dict(hp))
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        info = METHODS[method](model, _Task(task, device), gen, seed=int(seed), **kw)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise FloatingPointError(f"clip method {method!r} left non-finite weights")
    return {"method": method, "seconds": time.perf_counter() - start, **info}


class _Task:
    """task's tensors on the model's device (float pixels, long labels)."""

    def __init__(self, task, device):
        f = lambda x: torch.as_tensor(x, dtype=torch.float32).to(device)  # noqa: E731
        i = lambda x: torch.as_tensor(x, dtype=torch.long).to(device)  # noqa: E731
        self.text_inputs = {k: i(v) for k, v in task.text_inputs.items()}
        self.target = [int(t) for t in task.target]
        self.forget_pixels, self.forget_labels = f(task.forget_pixels), i(task.forget_labels)
        self.retain_pixels, self.retain_labels = f(task.retain_pixels), i(task.retain_labels)
        self.image_shape = tuple(task.image_shape)
        self.lo, self.hi = (float(v) for v in task.pixel_range)
        self.n_identities = len(self.text_inputs["input_ids"])
        if not self.target:
            raise ValueError("task.target is empty: nothing to forget")


# ---------------------------------------------------------------- synthetic samples


def real_target_prob(model, task: _Task) -> dict[int, float]:
    """Per target: the model's mean probability of the true identity on its real forget
    photos (all forget photos where a target has none)."""
    probs = _predict(model, task.forget_pixels, task.text_inputs)
    true = probs.gather(1, task.forget_labels[:, None])[:, 0]
    overall = float(true.mean()) if len(true) else 0.5
    out = {}
    for c in task.target:
        mine = true[task.forget_labels == c]
        out[c] = float(mine.mean()) if len(mine) else overall
    return out


def synthesize(model, task: _Task, gen, n_synthetic, target_prob, synth_steps, synth_lr):
    """n_synthetic images per target identity (module docstring). Returns (pixels, labels,
    info): info has the per-target goal probability, how many images reached it and their
    final probabilities' mean / max."""
    goal = real_target_prob(model, task) if target_prob == "auto" else None
    text_emb = text_features(model, task.text_inputs).detach()
    _finite(text_emb, "synthesis")
    lo, hi = task.lo, task.hi
    step = synth_lr * (hi - lo)
    xs, ys, reached, final = [], [], 0, []
    device = text_emb.device

    def ok(x, c, p_goal):
        p = zero_shot_logits(model, x, text_emb).softmax(-1)
        return (p[:, c] >= p_goal) & (p.argmax(-1) == c), p[:, c]

    goals = {}
    for c in task.target:
        p_goal = goal[c] if goal is not None else float(target_prob)
        goals[c] = p_goal
        noise = torch.randn((n_synthetic, *task.image_shape), generator=gen, device=device)
        x = ((lo + hi) / 2 + (hi - lo) / 4 * noise).clamp(lo, hi)
        prev = x.clone()
        active = torch.ones(n_synthetic, dtype=torch.bool, device=device)
        bar = tqdm(range(synth_steps + 1), desc=f"synthesize {c}", disable=None, leave=False)
        for t in bar:
            idx = active.nonzero()[:, 0]
            if not len(idx):
                break
            xa = x[idx].clone().requires_grad_(True)
            logits = zero_shot_logits(model, xa, text_emb)
            loss = F.cross_entropy(logits, torch.full_like(idx, c), reduction="sum")
            _finite(loss, "synthesis")
            p = logits.detach().softmax(-1)
            done = (p[:, c] >= p_goal) & (p.argmax(-1) == c)
            if done.any():
                d = idx[done]
                if t > 0:  # bisect the last step: the first point on it that meets the goal
                    a, b = prev[d], x[d]
                    lo_t = torch.zeros(len(d), device=device)
                    hi_t = torch.ones(len(d), device=device)
                    with torch.no_grad():
                        for _ in range(8):
                            mid = (lo_t + hi_t) / 2
                            m = mid.view(-1, *[1] * (a.dim() - 1))
                            good, _ = ok(a + m * (b - a), c, p_goal)
                            hi_t = torch.where(good, mid, hi_t)
                            lo_t = torch.where(good, lo_t, mid)
                        m = hi_t.view(-1, *[1] * (a.dim() - 1))
                        x[d] = a + m * (b - a)
                active[d] = False
            if t == synth_steps:
                break
            (g,) = torch.autograd.grad(loss, xa)
            keep = ~done
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
            rms = rms.view(-1, *[1] * (g.dim() - 1))
            moved = (xa.detach() - step * g / rms).clamp(lo, hi)
            ia = idx[keep]
            prev[ia] = x[ia]
            x[ia] = moved[keep]
            bar.set_postfix(active=int(active.sum()))
        with torch.no_grad():
            met, pc = ok(x, c, p_goal)
        reached += int(met.sum())
        final.append(pc)
        xs.append(x.detach())
        ys.append(torch.full((n_synthetic,), c, dtype=torch.long, device=device))
    final = torch.cat(final)
    info = {
        "target_prob": {str(c): round(p, 6) for c, p in goals.items()},
        "synthetic_reached": reached,
        "synthetic_n": len(final),
        "synthetic_prob_mean": float(final.mean()),
        "synthetic_prob_max": float(final.max()),
    }
    return torch.cat(xs), torch.cat(ys), info


# ---------------------------------------------------------------- the Lipschitz family


def towers(model, visual_scope: str, text: bool) -> tuple[dict, dict]:
    """Eligible tensors by tower: name -> parameter (module docstring)."""
    vis, txt = {}, {}
    for n, p in model.named_parameters():
        if n.startswith(("vision_model.", "visual_projection.")):
            if visual_scope == "all" or (".encoder.layers." in n and ".self_attn." in n):
                vis[n] = p
        elif text and n.startswith(("text_model.", "text_projection.")):
            txt[n] = p
    return vis, txt


def top_k(named: dict, k: int) -> list[str]:
    """The k tensors with the largest mean |grad| (ties in model order)."""
    scored = [(float(p.grad.abs().mean()), n) for n, p in named.items() if p.grad is not None]
    order = sorted(range(len(scored)), key=lambda i: -scored[i][0])
    return [scored[i][1] for i in order[:k]]


def perturbation_loss(model, x, y, text_inputs, *, sigma, n_perturb, gen, text_term, divide,
                      alpha=0.0, normalize=False, detach_perturbed=True):  # fmt: skip
    """Per image (B,): the Lipschitz loss (divide=True) or the embedding loss (divide=False,
    plus alpha * ||f_img(x) + f_txt(prompt)||). See the module docstring."""
    emb = (lambda e: F.normalize(e, dim=-1)) if normalize else (lambda e: e)
    img = emb(image_features(model, x))  # (B, d)
    eps = sigma * torch.randn((n_perturb, *x.shape), generator=gen, device=x.device)
    noisy = (x.unsqueeze(0) + eps).flatten(0, 1)
    with torch.set_grad_enabled(not detach_perturbed and torch.is_grad_enabled()):
        pert = emb(image_features(model, noisy)).view(n_perturb, len(x), -1)  # (N, B, d)
    out = (img.unsqueeze(0) - pert).norm(dim=-1)  # (N, B)
    txt = None
    if text_term:
        labels, inv = y.unique(return_inverse=True)
        txt = emb(text_features(model, _rows(text_inputs, labels)))[inv]  # (B, d)
        out = out + (txt.unsqueeze(0) - pert).norm(dim=-1)
    if divide:
        out = out / eps.flatten(2).norm(dim=-1)
    loss = out.mean(0)
    if alpha and txt is not None:
        loss = loss + alpha * (img + txt).norm(dim=-1)
    return loss


def _adam(params, lr, weight_decay, beta1, beta2, eps):
    return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def selective(model, task: _Task, gen, x, y, *, text, divide, alpha=0.0, n_perturb, sigma,
              sigma_step, sigma_max, k_visual, k_visual_step, k_visual_max, k_text=0,
              k_text_step=0, k_text_max=0, visual_scope, goal_acc, max_iters, steps_per_iter,
              batch_size, normalize, detach_perturbed, lr, weight_decay, beta1, beta2, eps):  # fmt: skip
    """Algorithm 1 on the forget set (x, y): the iterative selective update. Returns info."""
    vis, txt = towers(model, visual_scope, text)
    eligible = {**vis, **txt}
    for n, p in model.named_parameters():
        p.requires_grad_(n in eligible)
    opt = _adam(list(eligible.values()), lr, weight_decay, beta1, beta2, eps)
    before = accuracy(model, x, y, task.text_inputs)
    history, updated, acc = [], set(), before
    kv, kt = k_visual, (k_text if text else 0)
    n = len(x)
    bar = tqdm(range(max_iters), desc="unlearn", disable=None, leave=False)
    for it in bar:
        for _ in range(steps_per_iter):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for i in range(0, n, batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                loss = perturbation_loss(
                    model, xb, yb, task.text_inputs, sigma=sigma, n_perturb=n_perturb, gen=gen,
                    text_term=text, divide=divide, alpha=alpha, normalize=normalize,
                    detach_perturbed=detach_perturbed,
                ).sum() / n  # fmt: skip
                _finite(loss, "unlearning")
                loss.backward()
                total += float(loss.detach())
            chosen = set(top_k(vis, kv)) | set(top_k(txt, kt))
            for name, p in eligible.items():
                if name not in chosen:
                    p.grad = None
            opt.step()
            updated |= chosen
        acc = accuracy(model, x, y, task.text_inputs)
        history.append(
            {"iter": it, "sigma": sigma, "k_visual": kv, "k_text": kt, "loss": total, "acc": acc}
        )
        bar.set_postfix(acc=acc, sigma=sigma)
        if acc < goal_acc:
            break
        sigma = min(sigma + sigma_step, sigma_max)
        kv = min(kv + k_visual_step, max(k_visual_max, k_visual))
        if text:
            kt = min(kt + k_text_step, max(k_text_max, k_text))
    return {
        "forget_acc_before": before,
        "forget_acc_after": acc,
        "reached_goal": acc < goal_acc,
        "iterations": len(history),
        "final_sigma": history[-1]["sigma"] if history else sigma,
        "final_k_visual": history[-1]["k_visual"] if history else kv,
        "final_k_text": history[-1]["k_text"] if history else kt,
        "updated_tensors": len(updated),
        "updated_names": sorted(updated),
        "history": history,
    }


def _synthetic_selective(model, task, gen, *, divide, alpha, n_synthetic, target_prob,
                         synth_steps, synth_lr, **kw):  # fmt: skip
    x, y, synth = synthesize(model, task, gen, n_synthetic, target_prob, synth_steps, synth_lr)
    info = selective(model, task, gen, x, y, text=True, divide=divide, alpha=alpha, **kw)
    info["synthetic_acc_before"] = info.pop("forget_acc_before")
    info["synthetic_acc_after"] = info.pop("forget_acc_after")
    return {**synth, **info}


@register("lipschitz")
def lipschitz(model, task, gen, seed, **kw):
    """The paper's Lip (zero-shot). Info: the synthesis (target_prob per target,
    synthetic_reached / synthetic_n, synthetic_prob_mean / max), synthetic_acc_before / after,
    reached_goal, iterations, final_sigma, final_k_visual, final_k_text, updated_tensors (the
    union over the steps), updated_names, history (per pass: sigma, k, loss, accuracy)."""
    return _synthetic_selective(model, task, gen, divide=True, alpha=0.0, **kw)


@register("emb")
def emb(model, task, gen, seed, alpha, **kw):
    """The paper's Emb baseline (eq 7-9; zero-shot). Info as lipschitz."""
    return _synthetic_selective(model, task, gen, divide=False, alpha=alpha, **kw)


@register("ulip")
def ulip(model, task, gen, seed, **kw):
    """ULip (Foster et al., semi zero-shot): the Lipschitz image term on the real forget
    photos, vision tower only, same selective update and schedule; the stopping accuracy is
    on those photos. Info as lipschitz, with forget_acc_before / after (real photos)."""
    if not len(task.forget_pixels):
        raise ValueError("ulip needs real forget photos (task.forget_pixels is empty)")
    return selective(
        model, task, gen, task.forget_pixels, task.forget_labels, text=False, divide=True, **kw
    )


# ---------------------------------------------------------------- Amnesiac


@register("amnesiac")
def amnesiac(model, task, gen, seed, *, n_synthetic, target_prob, synth_steps, synth_lr, lr,
             weight_decay, beta1, beta2, eps, epochs, batch_size):  # fmt: skip
    """Amns (zero-shot): synthetic target images, each relabelled with a random non-target
    identity, CLIP contrastive fine-tuning of both towers (logit_scale fixed): symmetric
    InfoNCE between a batch's images and the prompts of its distinct labels (text -> image with
    a uniform target over the images of that label). Info: the synthesis, synthetic accuracy
    before/after (true labels), epochs, steps, last loss."""
    x, y, synth = synthesize(model, task, gen, n_synthetic, target_prob, synth_steps, synth_lr)
    others = [c for c in range(task.n_identities) if c not in set(task.target)]
    if not others:
        raise ValueError("amnesiac needs a non-target identity to relabel with")
    others_t = torch.tensor(others, device=x.device)
    new = others_t[torch.randint(len(others), (len(x),), generator=gen, device=x.device)]
    before = accuracy(model, x, y, task.text_inputs)
    params = {n: p for n, p in model.named_parameters() if n != "logit_scale"}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    opt = _adam(list(params.values()), lr, weight_decay, beta1, beta2, eps)
    steps, last = 0, float("nan")
    for _ in tqdm(range(epochs), desc="amnesiac", disable=None, leave=False):
        order = torch.randperm(len(x), generator=gen, device=x.device)
        for i in range(0, len(x), batch_size):
            b = order[i : i + batch_size]
            labels, inv = new[b].unique(return_inverse=True)
            img = F.normalize(image_features(model, x[b]), dim=-1)
            txt = F.normalize(text_features(model, _rows(task.text_inputs, labels)), dim=-1)
            logits = model.logit_scale.exp().detach() * img @ txt.T  # (B, U)
            to_text = F.cross_entropy(logits, inv)
            target = F.one_hot(inv, len(labels)).T.float()
            target = target / target.sum(1, keepdim=True)
            to_image = -(target * logits.T.log_softmax(-1)).sum(-1).mean()
            loss = (to_text + to_image) / 2
            _finite(loss, "amnesiac")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, last = steps + 1, float(loss.detach())
    after = accuracy(model, x, y, task.text_inputs)
    return {
        **synth,
        "synthetic_acc_before": before,
        "synthetic_acc_after": after,
        "epochs": epochs,
        "steps": steps,
        "final_loss": last,
    }


# ---------------------------------------------------------------- Unlink


def _last(patterns, n_layers: int) -> list[str]:
    return [p.replace("{last}", str(n_layers - 1)) for p in patterns]


def _subset(pixels, n, gen):
    if len(pixels) <= n:
        return pixels
    return pixels[torch.randperm(len(pixels), generator=gen, device=pixels.device)[:n]]


@register("unlink")
def unlink_method(model, task, gen, seed, *, n_samples, vision_layers, text_layers, k, energy,
                  variant, n_retain, ridge, max_rows):  # fmt: skip
    """Unlink (training-free): W <- W - W U U^T on the named layers, U spanning their inputs
    on the forget samples: n_samples real forget photos for the vision layers, the targets'
    prompts for the text layers (clearbench.unlink). 'entangled' uses n_retain retain photos
    and the other identities' prompts as the retain run. '{last}' in a pattern is the last
    encoder layer of its tower. Info: per layer {k, energy}, n_layers, n_forget_photos."""
    from clearbench.unlink import unlink

    cfg = model.config
    patterns = _last(vision_layers, cfg.vision_config.num_hidden_layers) + _last(
        text_layers, cfg.text_config.num_hidden_layers
    )
    if not patterns:
        raise ValueError("unlink: no layers (vision_layers and text_layers are both empty)")
    if vision_layers and not len(task.forget_pixels):
        raise ValueError("unlink needs real forget photos for its vision layers")
    xf = _subset(task.forget_pixels, n_samples, gen)
    tid = torch.tensor(task.target, device=xf.device)
    oid = torch.tensor(
        [c for c in range(task.n_identities) if c not in set(task.target)], device=xf.device
    )

    def runner(pixels, ids):
        def run():
            if vision_layers:
                image_features(model, pixels)
            if text_layers and len(ids):
                text_features(model, _rows(task.text_inputs, ids))

        return run

    retain_run = None
    if variant == "entangled":
        xr = _subset(task.retain_pixels, n_retain, gen)
        if vision_layers and not len(xr):
            raise ValueError("unlink entangled needs retain photos")
        retain_run = runner(xr, oid)
    layers = unlink(
        model, patterns, runner(xf, tid), retain_run, k=k, energy=energy, variant=variant,
        ridge=ridge, max_rows=max_rows, seed=seed,
    )  # fmt: skip
    return {"layers": layers, "n_layers": len(layers), "n_forget_photos": len(xf)}
