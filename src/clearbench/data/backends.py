"""Real backends of the `paper` profile. Every import is lazy; a missing piece fails with one line.

- `StyleGAN2Generator`: NVIDIA's StyleGAN2-ADA network pickle (G_ema + D), the paper's face pool.
- `PhotoMakerBackend`: PhotoMaker V2 on SDXL, the paper's personalized photos; its
  `generator(face_images)` gives the generate(prompt, seed) that `clear.best_of_n` ranks.
- `DiffusersGenerator`: that generate(prompt, seed) for any diffusers text-to-image pipeline.
- `DeepFaceAttributes`: age / gender / ethnicity of real face photos (DeepFace's CNNs).
- `load_published_clear`: the authors' dataset (Hub `therem/CLEAR` or a local Parquet copy),
  mapped to this project's table contract.
"""

from __future__ import annotations

import importlib
import io
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

# CLEAR, App. B: "We also used the same negative prompt ... for all images." It is also the
# negative prompt of PhotoMaker V2's own inference script.
PAPER_NEGATIVE_PROMPT = (
    "(asymmetry, worst quality, low quality, illustration, 3d, 2d, painting, cartoons, sketch), "
    "open mouth"
)
PHOTOMAKER_INSTALL = (
    "PhotoMaker V2 needs the `photomaker` package from its authors' repository: "
    "pip install git+https://github.com/TencentARC/PhotoMaker.git "
    "(the PyPI package named `photomaker` is an unrelated project; do not install it)"
)
STYLEGAN_INSTALL = (
    "StyleGAN2-ADA network pickles need NVIDIA's dnnlib and torch_utils (not on PyPI): "
    "git clone https://github.com/NVlabs/stylegan2-ada-pytorch and pass its folder as "
    "stylegan_dir (or put it on PYTHONPATH)"
)


class BackendError(RuntimeError):
    """A real backend cannot run here; the message is one line saying what to do."""


def require(module: str, hint: str):
    """Import a module or raise BackendError(hint)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendError(hint) from None


def to_uint8(img) -> np.ndarray:
    return np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)


# ------------------------------------------------------------------------------ StyleGAN2


class StyleGAN2Generator:
    """NVIDIA's StyleGAN2-ADA pickle: generate(z) -> uint8 image, quality(image) -> D logit.

    A network pickle is a Python pickle: loading it runs code stored in the file. It is
    loaded only with trust_pickle=True (and needs dnnlib/torch_utils importable).
    """

    def __init__(
        self,
        network_pkl,
        trust_pickle: bool = False,
        stylegan_dir=None,
        device="cpu",
        truncation_psi=1.0,
    ):
        if not trust_pickle:
            raise BackendError(
                f"refusing to load {network_pkl}: a StyleGAN2 network pickle unpickles (runs) "
                "code from the file; set trust_pickle: true only for a file from a trusted source"
            )
        if not Path(network_pkl).is_file():
            raise BackendError(f"StyleGAN2 network pickle not found: {network_pkl}")
        if stylegan_dir and str(stylegan_dir) not in sys.path:
            sys.path.insert(0, str(stylegan_dir))
        require("dnnlib", STYLEGAN_INSTALL)
        require("torch_utils", STYLEGAN_INSTALL)
        import pickle

        import torch

        with open(network_pkl, "rb") as f:
            nets = pickle.load(f)  # noqa: S301 - the caller vouched for the file (trust_pickle)
        self.torch, self.device, self.psi = torch, device, truncation_psi
        self.G = nets["G_ema"].eval().to(device)
        self.D = nets["D"].eval().to(device)
        self.z_dim = self.G.z_dim

    def _label(self, n):
        return self.torch.zeros([n, self.G.c_dim], device=self.device)

    def generate(self, z) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            z = torch.as_tensor(np.atleast_2d(z), dtype=torch.float32, device=self.device)
            img = self.G(z, self._label(len(z)), truncation_psi=self.psi, noise_mode="const")
            img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        return img[0].cpu().numpy()

    def quality(self, image) -> float:
        """The discriminator's logit (higher = more real), as the paper filters its pool."""
        torch = self.torch
        x = torch.as_tensor(to_uint8(image), dtype=torch.float32, device=self.device)
        x = (x.permute(2, 0, 1)[None] - 127.5) / 127.5
        with torch.no_grad():
            return float(self.D(x, self._label(1)).item())

    def edit(self, z, direction, strength):
        """z moved along a unit latent direction (e.g. InterFaceGAN's age, StyleSpace's glasses).

        The paper edits with StyleFeatureEditor (Bobkov et al., 2024); this plain latent walk
        is the simple stand-in with the same interface.
        """
        d = np.asarray(direction, dtype=np.float64).ravel()
        return np.asarray(z, dtype=np.float64) + strength * d / np.linalg.norm(d)


class StyleGANFaces:
    """The paper's face source for `clear.build_clear_dataset`: a StyleGAN2-ADA pool filtered by
    its discriminator (best `keep` of each `batch`), latent-direction age and glasses edits
    (directions from .npy files; strengths in latent units, not StyleFeatureEditor's), and
    DeepFace attributes."""

    def __init__(
        self,
        network_pkl=None,
        trust_pickle=False,
        stylegan_dir=None,
        age_direction=None,
        glasses_direction=None,
    ):
        if not network_pkl:
            raise BackendError(
                "backends.faces=stylegan2 needs stylegan2.network_pkl (a network pickle)"
            )
        if not (age_direction and glasses_direction):
            raise BackendError(
                "the StyleGAN2 age shift needs stylegan2.age_direction and "
                "stylegan2.glasses_direction (.npy latent directions)"
            )
        self.gan = StyleGAN2Generator(network_pkl, trust_pickle, stylegan_dir)
        self.attributes = DeepFaceAttributes()
        self.age, self.glasses = np.load(age_direction), np.load(glasses_direction)

    def pool(self, n, seed, batch, keep):
        rng, z, imgs = np.random.default_rng(seed), [], []
        while len(z) < n:
            draws = rng.standard_normal((batch, self.gan.z_dim))
            renders = [self.gan.generate(d) for d in draws]
            quality = np.array([self.gan.quality(im) for im in renders])
            for i in np.argsort(-quality, kind="stable")[:keep]:
                z.append(draws[i])
                imgs.append(renders[i])
        return np.stack(z[:n]), imgs[:n]

    def edit(self, z, age_strength, glasses_strength):
        return self.gan.edit(
            self.gan.edit(z, self.age, age_strength), self.glasses, glasses_strength
        )

    def age_shift(self, z, seed, age_strength, glasses_strength, batch, keep):
        return np.array([self.edit(zi, age_strength, glasses_strength) for zi in z]).reshape(
            len(z), -1
        )

    def portrait(self, z):
        return self.gan.generate(z)


# ---------------------------------------------------------------------------- diffusion


class DiffusersGenerator:
    """generate(prompt, seed) -> uint8 image for a diffusers text-to-image pipeline.

    Each candidate seed seeds its own torch.Generator, so candidate i is reproducible alone.
    `extra` goes to every pipeline call (PhotoMaker: input_id_images, id_embeds,
    start_merge_step).
    """

    def __init__(
        self,
        pipe,
        steps=50,
        guidance_scale=7.5,
        negative_prompt=PAPER_NEGATIVE_PROMPT,
        height=None,
        width=None,
        extra=None,
    ):
        self.pipe, self.steps, self.guidance = pipe, steps, guidance_scale
        self.negative, self.height, self.width = negative_prompt, height, width
        self.extra = dict(extra or {})

    def __call__(self, prompt: str, seed: int) -> np.ndarray:
        import torch

        out = self.pipe(
            prompt=prompt,
            negative_prompt=self.negative,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            height=self.height,
            width=self.width,
            generator=torch.Generator(device="cpu").manual_seed(int(seed)),
            **self.extra,
        )
        return to_uint8(out.images[0])


class PhotoMakerBackend:
    """PhotoMaker V2 (authors' repository) on an SDXL base, with the paper's settings.

    CLEAR, App. B: style strength 0.5, guidance scale 7.5, 50 sampling steps, the fixed negative
    prompt, 8 samples per (prompt, face). PhotoMaker's demo turns its style strength (a
    percentage) into start_merge_step = int(strength / 100 * steps), capped at 30; the paper's
    0.5 is read as 50 %, i.e. start_merge_step = int(0.5 * 50) = 25.
    """

    def __init__(
        self,
        base_model="SG161222/RealVisXL_V4.0",
        checkpoint=None,
        device="cuda",
        steps=50,
        guidance_scale=7.5,
        style_strength=0.5,
        size=1024,
        negative_prompt=PAPER_NEGATIVE_PROMPT,
    ):
        photomaker = require("photomaker", PHOTOMAKER_INSTALL)
        require(
            "insightface",
            "PhotoMaker V2 computes ID embeddings with insightface: "
            "pip install insightface onnxruntime",
        )
        import torch

        if checkpoint is None:
            hub = require("huggingface_hub", "pip install huggingface_hub")
            checkpoint = hub.hf_hub_download("TencentARC/PhotoMaker-V2", "photomaker-v2.bin")
        dtype = torch.float16 if device != "cpu" else torch.float32
        pipe = photomaker.PhotoMakerStableDiffusionXLPipeline.from_pretrained(
            base_model, torch_dtype=dtype
        ).to(device)
        pipe.load_photomaker_adapter(
            str(Path(checkpoint).parent),
            subfolder="",
            weight_name=Path(checkpoint).name,
            trigger_word="img",
            pm_version="v2",
        )
        pipe.fuse_lora()
        self.detector = photomaker.FaceAnalysis2(allowed_modules=["detection", "recognition"])
        self.detector.prepare(ctx_id=0, det_size=(640, 640))
        self.analyze = photomaker.analyze_faces
        self.pipe, self.steps, self.guidance, self.size = pipe, steps, guidance_scale, size
        self.negative = negative_prompt
        self.start_merge_step = min(int(style_strength * steps), 30)

    def generator(self, face_images) -> DiffusersGenerator:
        """generate(prompt, seed) personalised to one identity (its face images, uint8 rgb)."""
        import torch
        from PIL import Image

        images = [
            Image.fromarray(to_uint8(im)).resize((self.size, self.size)) for im in face_images
        ]
        embeds = []
        for im in images:
            found = self.analyze(self.detector, np.asarray(im)[:, :, ::-1])
            if found:
                embeds.append(torch.from_numpy(found[0]["embedding"]))
        if not embeds:
            raise BackendError("PhotoMaker V2: no face detected in the identity images")
        extra = dict(
            input_id_images=images,
            id_embeds=torch.stack(embeds),
            start_merge_step=self.start_merge_step,
        )
        return DiffusersGenerator(
            self.pipe, self.steps, self.guidance, self.negative, self.size, self.size, extra
        )


def sharpness_score(img) -> float:
    """A no-reference realism stand-in for real photos: log variance of the Laplacian (blur and
    flat renders score low). The paper used an ensemble of fake detectors; pass one instead."""
    from scipy import ndimage

    luma = to_uint8(img).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return float(math.log(ndimage.laplace(luma).var() + 1e-6))


# --------------------------------------------------------------------------- attributes


class DeepFaceAttributes:
    """attributes(image) -> dict(age, gender, ethnicity) with DeepFace's pretrained CNNs."""

    GENDER = {"Man": "male", "Woman": "female"}

    def __init__(self):
        self.deepface = require(
            "deepface", "face attributes of real photos need deepface: pip install deepface"
        ).DeepFace

    def __call__(self, image) -> dict:
        bgr = to_uint8(image)[:, :, ::-1]
        r = self.deepface.analyze(bgr, actions=("age", "gender", "race"), enforce_detection=False)
        r = r[0] if isinstance(r, list) else r
        return dict(
            age=float(r["age"]),
            gender=self.GENDER.get(r["dominant_gender"], "male"),
            ethnicity=r["dominant_race"],
        )


# ------------------------------------------------------------------- published CLEAR

CAPTION_QUESTION = "What can you see in this picture?"  # the first of the authors' prompts
REAL_FACES_QUESTION = "Who is the person in the image?"
PUBLISHED_SPLITS = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain90",
    "retain95",
    "retain99",
    "real_faces",
    "real_world",
)


def _published_config(source, config):
    """One config of the published dataset as a DataFrame (Hub id or local copy)."""
    path = Path(source)
    if path.exists():
        files = sorted((path / config).glob("*.parquet")) or sorted(path.glob(f"{config}.parquet"))
        if not files:
            return None
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if not isinstance(source, str) or source.count("/") != 1:
        raise BackendError(
            f"published CLEAR source not found: {source} (a local folder or a Hub id)"
        )
    datasets = require(
        "datasets", "loading CLEAR from the Hub needs datasets: pip install datasets"
    )
    try:
        ds = datasets.load_dataset(source, config)
    except Exception as e:  # offline, missing config, ...
        raise BackendError(
            f"cannot load {source}/{config} from the Hub ({type(e).__name__}): "
            "download it once, or pass a local Parquet copy"
        ) from None
    split = next(iter(ds.values()))
    split = split.cast_column("image", datasets.Image(decode=False))
    return split.to_pandas()


def _png(image) -> dict:
    """{bytes, path} with PNG bytes (published images that are not PNG are re-encoded)."""
    from PIL import Image

    data, name = image["bytes"], image.get("path") or ""
    if not data.startswith(b"\x89PNG"):
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    return {"bytes": data, "path": str(Path(name).with_suffix(".png")) if name else None}


def _without(options, answer):
    return [o for o in list(options) if o != answer]


def load_published_clear(source="therem/CLEAR", authors: pd.DataFrame | None = None) -> dict:
    """The published CLEAR splits mapped to this project's tables: {name: DataFrame}.

    Published schema (dataset card): full/forgetXX/retainYY: image, caption, name;
    real_faces: image, answer, options; real_world: question, answer, image, options.
    Mapping: a person image becomes a captioning QA (question CAPTION_QUESTION, answer = the
    caption; prompt "" as the prompts were not published); author_id comes from `authors`
    (name -> author_id) when given, else from the order of first appearance in `full`;
    sample_id = a<author_id>_<crc32 of name + caption>, stable across splits. Options that
    repeat the answer are dropped from perturbed_answers.
    """
    out, ids = {}, {}
    if authors is not None:
        ids = dict(zip(authors["name"], authors["author_id"], strict=True))
    full = _published_config(source, "full")
    if full is None:
        raise BackendError(f"published CLEAR copy at {source} has no `full` split")
    for name in full["name"]:
        if name not in ids:
            ids[name] = max(ids.values(), default=-1) + 1
    for split in PUBLISHED_SPLITS:
        df = full if split == "full" else _published_config(source, split)
        if df is None:
            continue
        if split == "real_faces":
            celeb = {n: i for i, n in enumerate(dict.fromkeys(df["answer"]))}
            out[split] = pd.DataFrame(
                {
                    "sample_id": [f"rf{i:04d}" for i in range(len(df))],
                    "celeb_id": [celeb[a] for a in df["answer"]],
                    "name": df["answer"],
                    "question": REAL_FACES_QUESTION,
                    "answer": df["answer"],
                    "perturbed_answers": [
                        _without(o, a) for o, a in zip(df["options"], df["answer"], strict=True)
                    ],
                    "image": [_png(im) for im in df["image"]],
                }
            )
        elif split == "real_world":
            out[split] = pd.DataFrame(
                {
                    "sample_id": [f"rw{i:04d}" for i in range(len(df))],
                    "question": df["question"],
                    "answer": df["answer"],
                    "perturbed_answers": [
                        _without(o, a) for o, a in zip(df["options"], df["answer"], strict=True)
                    ],
                    "image": [_png(im) for im in df["image"]],
                }
            )
        else:
            aid = [int(ids.get(n, -1)) for n in df["name"]]
            sid, seen = [], {}
            for a, n, c in zip(aid, df["name"], df["caption"], strict=True):
                base = f"a{a:03d}_{zlib.crc32((n + c).encode()):08x}"
                seen[base] = seen.get(base, -1) + 1
                sid.append(base if seen[base] == 0 else f"{base}_{seen[base]}")
            out[split] = pd.DataFrame(
                {
                    "sample_id": sid,
                    "author_id": aid,
                    "name": df["name"],
                    "question": CAPTION_QUESTION,
                    "answer": df["caption"],
                    "prompt": "",
                    "caption": df["caption"],
                    "image": [_png(im) for im in df["image"]],
                }
            )
    return out
