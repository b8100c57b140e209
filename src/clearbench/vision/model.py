"""Biometric embedding model of the vision track: ResNet backbone -> linear -> unit embedding.

The backbone is transformers' ResNetModel (layer_type "basic", depths [2, 2, 2, 2] is the
ResNet-18 architecture), built either from a config (tiny, random init: `default` profile) or
from a checkpoint (`microsoft/resnet-18` in the paper profile, or any local save_pretrained
folder). On top sit an embedding head (pooled features -> linear -> L2 normalisation) and an
identity classifier used only for training: a margin softmax over cosines (CosFace / ArcFace).

Identification is classifier-free, as in the paper (section 5.2): each identity is enrolled as
the renormalised mean of the embeddings of 5 of its images, and an image is assigned to the
nearest centroid by cosine. That is why a model can score identities it never trained on.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import ResNetConfig, ResNetModel

from clearbench.io import atomic_path, first_line

# ResNet-18 sized model; `default` uses TINY_CONFIG. Both are ResNetConfig kwargs.
RESNET18_CONFIG = dict(
    embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"
)
TINY_CONFIG = dict(
    embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2], layer_type="basic"
)
# The ImageNet statistics the ResNet image processor uses: pretrained weights expect them.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
HEAD_FILE = "biometric.pt"


class ModelError(ValueError):
    """A model spec or a model folder that cannot be used."""


def to_pixels(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), normalised like the ResNet image processor."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


class IdentityModel(nn.Module):
    """Backbone + embedding head + cosine classifier over `num_classes` identities.

    forward(pixels) -> (emb, cos, hidden): unit embeddings (B, D); cosines to the class weights
    (B, C); the backbone's stage outputs (stem, stage 1..4), which RMU steers.
    """

    def __init__(self, backbone: ResNetModel, embedding_dim: int = 64, num_classes: int = 1):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(backbone.config.hidden_sizes[-1], embedding_dim)
        # Pooled ReLU features are all positive, so raw projections share a large common
        # component and every pair of faces has a high cosine. Centering them with batch norm
        # (the usual face-recognition "BN neck") spreads identities over the sphere.
        self.neck = nn.BatchNorm1d(embedding_dim)
        self.classes = nn.Parameter(torch.randn(num_classes, embedding_dim) / embedding_dim**0.5)

    def forward(self, pixels):
        out = self.backbone(pixels, output_hidden_states=True, return_dict=True)
        emb = F.normalize(self.neck(self.proj(out.pooler_output.flatten(1))), dim=-1)
        cos = emb @ F.normalize(self.classes, dim=-1).T
        return emb, cos, out.hidden_states

    def new_classes(self, num_classes: int, seed: int):
        """Replace the classifier (pretraining identities -> this task's identities)."""
        g = torch.Generator().manual_seed(seed)
        d = self.classes.shape[1]
        self.classes = nn.Parameter(torch.randn(num_classes, d, generator=g) / d**0.5)
        return self


def build_backbone(spec: dict, seed: int = 0) -> ResNetModel:
    """{"config": {...ResNetConfig kwargs}} (random init, seeded) or {"checkpoint": id_or_path}."""
    if spec.get("checkpoint"):
        try:
            # An image-classification checkpoint (microsoft/resnet-18) loads too: the "resnet."
            # prefix is stripped and the classifier head is dropped.
            return ResNetModel.from_pretrained(spec["checkpoint"])
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0]
            raise ModelError(f"cannot load checkpoint '{spec['checkpoint']}': {first}") from None
    if "config" not in spec:
        raise ModelError("vision model spec needs either 'config' or 'checkpoint'")
    torch.manual_seed(seed)
    return ResNetModel(ResNetConfig(**spec["config"]))


def build_model(spec: dict, num_classes: int, seed: int = 0) -> IdentityModel:
    torch.manual_seed(seed)
    backbone = build_backbone(spec, seed)
    torch.manual_seed(seed + 1)  # the head's init does not depend on how the backbone was made
    return IdentityModel(backbone, spec.get("embedding_dim", 64), num_classes)


def save_model(model: IdentityModel, path) -> None:
    """Backbone with save_pretrained (a real HF checkpoint), embedding head + classes beside it.
    The head is written last and atomically: `load_model` requires it, so a folder is complete
    only once it is there."""
    path = Path(path)
    (path / HEAD_FILE).unlink(missing_ok=True)  # a reused folder is incomplete until the end
    model.backbone.save_pretrained(path)
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    with atomic_path(path / HEAD_FILE) as tmp:
        torch.save(head, tmp)


def load_tensors(path):
    """torch.load with weights_only=True, or ModelError naming the file (truncated, not a torch
    file, or a pickle that needs more than tensors and containers)."""
    try:
        return torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise ModelError(f"cannot read {path}: {first_line(err)}") from None


def load_model(path) -> IdentityModel:
    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise ModelError(f"{path} is not a biometric model folder (no {HEAD_FILE})")
    head = load_tensors(path / HEAD_FILE)
    num_classes, dim = head["classes"].shape
    model = IdentityModel(build_backbone({"checkpoint": str(path)}), dim, num_classes)
    try:
        missing, unexpected = model.load_state_dict(head, strict=False)
    except RuntimeError as err:  # size mismatch between the head and the backbone
        raise ModelError(f"{path / HEAD_FILE}: {first_line(err)}") from None
    missing = [k for k in missing if not k.startswith("backbone.")]  # those came from the HF save
    if missing or unexpected:
        raise ModelError(f"{path / HEAD_FILE}: missing {missing}, unexpected {unexpected}")
    return model


def config_of(model: IdentityModel) -> dict:
    """What `template` needs to rebuild the architecture (saved in ensemble state files)."""
    cfg = json.loads(model.backbone.config.to_json_string())
    return dict(backbone=cfg, embedding_dim=model.proj.out_features, num_classes=len(model.classes))


def template(config: dict) -> IdentityModel:
    """The architecture on the meta device: a shape-only shell for functional_call."""
    with torch.device("meta"):
        backbone = ResNetModel(ResNetConfig(**config["backbone"]))
        return IdentityModel(backbone, config["embedding_dim"], config["num_classes"])


# ----------------------------------------------------------------------------- losses


def margin_logits(cos, labels, s=16.0, m=0.2, kind="cosface"):
    """Scaled logits with an additive margin on the true class (CosFace: cos - m;
    ArcFace: cos(theta + m)). labels may carry leading dims matching cos[..., 0]."""
    onehot = F.one_hot(labels, cos.shape[-1]).to(cos.dtype)
    if kind == "cosface":
        return s * (cos - m * onehot)
    if kind == "arcface":
        c = cos.clamp(-1 + 1e-6, 1 - 1e-6)  # keeps sqrt's gradient finite at |cos| = 1
        target = c * np.cos(m) - torch.sqrt(1 - c * c) * np.sin(m)
        return s * torch.where(onehot.bool(), target, c)
    raise ValueError(f"unknown margin loss '{kind}' (cosface | arcface)")


# Logits of classes a model never trained on are pushed to a large finite negative value,
# not -inf: softmax gives them exactly zero mass and KL terms stay finite (0 * log 0).
MASKED = -1e4


def masked(logits, class_mask):
    if class_mask is None:
        return logits
    return logits.masked_fill(~class_mask.unsqueeze(-2), MASKED)


def identity_loss(cos, labels, class_mask=None, s=16.0, m=0.2, kind="cosface"):
    """Per-model mean margin-softmax cross-entropy: cos (M, B, C), labels (M, B) -> (M,).

    class_mask (M, C) restricts model k's softmax to the identities it trains on, so a model
    is exactly the model trained with only its own classes (never-trained identities do not
    even appear as negatives)."""
    logits = masked(margin_logits(cos, labels, s, m, kind), class_mask)
    return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(-1)


# ----------------------------------------------------------------------- identification


def enroll(emb, ids, enroll_mask, n_classes):
    """Centroids (..., C, D): renormalised mean of the unit embeddings of each identity's
    enrollment images. emb (..., N, D), ids (N,) class index, enroll_mask (N,) bool."""
    onehot = F.one_hot(torch.as_tensor(ids)[enroll_mask], n_classes).to(emb.dtype)  # (n, C)
    sums = torch.einsum("nc,...nd->...cd", onehot, emb[..., enroll_mask, :])
    return F.normalize(sums, dim=-1)


def identify(emb, centroids):
    """Cosine to every centroid (..., N, C) and the nearest identity (..., N)."""
    cos = emb @ centroids.transpose(-1, -2)
    return cos, cos.argmax(-1)
