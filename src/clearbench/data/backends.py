"""Real backends of the `paper` profile. Every import is lazy; a missing piece fails with one line.

- `StyleGAN2Generator`: NVIDIA's StyleGAN2-ADA network pickle (G_ema + D), the paper's face pool.
- `StyleGANCelebs`: identities for the vision track's pretraining from that network
  (`backends.celebs: stylegan2`), several images of each.
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
from collections import Counter
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


# The first fine style of a StyleGAN2-ADA synthesis network: its w are used by the 4x4 conv (0),
# the 8x8, 16x16 and 32x32 convs (1-6), then the 32x32 toRGB and the 64x64 block (7) and up.
FINE_STYLES = 7


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

    def restyle(self, z, z_style, first=FINE_STYLES) -> np.ndarray:
        """z's image with its styles (w) from layer `first` on taken from z_style.

        Style mixing (Karras et al., 2019): the coarse (4x4, 8x8) styles set pose and face shape,
        the middle (16x16, 32x32) the facial features, the fine (64x64 and up) colour, lighting
        and microstructure. From FINE_STYLES on, z keeps its face and takes z_style's colours.
        """
        torch = self.torch
        with torch.no_grad():
            zz = torch.as_tensor(np.stack([z, z_style]), dtype=torch.float32, device=self.device)
            ws = self.G.mapping(zz, self._label(2), truncation_psi=self.psi)
            w = ws[:1].clone()
            w[:, first:] = ws[1:, first:]
            img = self.G.synthesis(w, noise_mode="const")
            img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        return img[0].cpu().numpy()


def stylegan_pool(gan, n, seed, batch, keep):
    """n latents and their images: draw `batch`, keep the `keep` best by D's logit; repeat."""
    rng, z, imgs = np.random.default_rng(seed), [], []
    while len(z) < n:
        draws = rng.standard_normal((batch, gan.z_dim))
        renders = [gan.generate(d) for d in draws]
        quality = np.array([gan.quality(im) for im in renders])
        for i in np.argsort(-quality, kind="stable")[:keep]:
            z.append(draws[i])
            imgs.append(renders[i])
    return np.stack(z[:n]), imgs[:n]


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
        # plain arrays only: an object array would be a pickle
        self.age = np.load(age_direction, allow_pickle=False)
        self.glasses = np.load(glasses_direction, allow_pickle=False)

    def pool(self, n, seed, batch, keep):
        return stylegan_pool(self.gan, n, seed, batch, keep)

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


class StyleGANCelebs:
    """The vision track's pretraining identities from a StyleGAN2-ADA network
    (`backends.celebs: stylegan2`), standing in for the paper's Celebs photos (not published).

    Identities: the pool as `StyleGANFaces` draws it (best `keep` of each `batch` by D).
    Images of one identity: `restyle` with a seeded draw per image (the same pose, face and
    features, other colours and lighting: less varied than photos of a real person), resized to
    `size` x `size` (Lanczos). The stylegan2 section's age and glasses directions are unused.
    """

    def __init__(self, size, network_pkl=None, trust_pickle=False, stylegan_dir=None, **_):
        if not network_pkl:
            raise BackendError(
                "backends.celebs=stylegan2 needs stylegan2.network_pkl (a network pickle)"
            )
        self.gan = StyleGAN2Generator(network_pkl, trust_pickle, stylegan_dir)
        self.size = size

    def _resize(self, img) -> np.ndarray:
        from PIL import Image

        im = Image.fromarray(to_uint8(img))
        if im.size != (self.size, self.size):
            im = im.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)

    def identities(self, n, k, seed, image_seed, batch, keep):
        """n identities, each a list of k images; image_seed(i) seeds identity i's restyles."""
        z, _ = stylegan_pool(self.gan, n, seed, batch, keep)
        for i, zi in enumerate(z):
            styles = np.random.default_rng(image_seed(i)).standard_normal((k, self.gan.z_dim))
            yield [self._resize(self.gan.restyle(zi, s)) for s in styles]


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
# The configs of therem/CLEAR's dataset card; `default` (data/) is the same rows as `full` and
# is not read.
PHOTO_CONFIGS = ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99")
PERTURBED_CONFIGS = (
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
)
TOFU_CONFIGS = tuple(f"{c}+tofu" for c in PHOTO_CONFIGS)
REAL_CONFIGS = ("real_faces", "real_world")
PUBLISHED_CONFIGS = PHOTO_CONFIGS + PERTURBED_CONFIGS + TOFU_CONFIGS + REAL_CONFIGS
TOFU_COLUMNS = ["caption", "question", "answer"]  # the text check needs no image bytes


def _local_files(folder: Path, config: str) -> list[Path]:
    # the Hub's layout (<config>/train-*.parquet), the parquet converter's (<config>/train/*)
    # or one <config>.parquet
    files = sorted((folder / config).rglob("*.parquet"))
    return files or [p for p in [folder / f"{config}.parquet"] if p.is_file()]


def _published_config(source, config, columns=None) -> pd.DataFrame:
    """One config of the published dataset as a DataFrame (Hub id or local copy)."""
    path = Path(source)
    if path.exists():
        files = _local_files(path, config)
        if not files:
            raise BackendError(f"published CLEAR copy at {source} lacks the {config} config")
        return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)
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
    if columns is not None:
        split = split.select_columns(columns)
    if "image" in split.column_names:
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


def _eval_answers(df) -> dict:
    """(name, caption) -> the authors' paraphrase, wrong captions and wrong names of a photo."""
    cols = ("name", "caption", "paraphrased_caption", "perturbed_captions", "perturbed_names")
    return {
        (n, c): {
            "paraphrased_answer": p,
            "perturbed_answers": _without(pc, c),
            "perturbed_names": _without(pn, n),
        }
        for n, c, p, pc, pn in zip(*(df[k] for k in cols), strict=True)
    }


def _photos(df, ids, answers) -> pd.DataFrame:
    """Published person images -> the photos table plus their published evaluation answers."""
    aid = [int(ids.get(n, -1)) for n in df["name"]]
    sid, seen = [], {}
    for a, n, c in zip(aid, df["name"], df["caption"], strict=True):
        base = f"a{a:03d}_{zlib.crc32((n + c).encode()):08x}"
        seen[base] = seen.get(base, -1) + 1
        sid.append(base if seen[base] == 0 else f"{base}_{seen[base]}")
    own = [answers.get(k, {}) for k in zip(df["name"], df["caption"], strict=True)]
    return pd.DataFrame(
        {
            "sample_id": sid,
            "author_id": aid,
            "name": df["name"],
            "question": CAPTION_QUESTION,
            "answer": df["caption"],
            "prompt": "",
            "caption": df["caption"],
            "image": [_png(im) for im in df["image"]],
            # object: a str column would turn the missing paraphrases into NaN
            "paraphrased_answer": pd.Series(
                [o.get("paraphrased_answer") for o in own], index=df.index, dtype=object
            ),
            "perturbed_answers": [o.get("perturbed_answers", []) for o in own],
            "perturbed_names": [o.get("perturbed_names", []) for o in own],
        }
    )


def _wrong(df) -> list:
    return [_without(o, a) for o, a in zip(df["options"], df["answer"], strict=True)]


def _check_tofu(source, config, tofu, text):
    """The text QA that `X+tofu` joins to the images of X must be the text dataset's X."""
    split = config.removesuffix("+tofu")
    if text is None or split not in text:
        return
    qa = tofu[tofu["question"].fillna("").str.strip() != ""]

    def pairs(df):
        answers = df["answer"].fillna("").str.strip()
        return Counter(zip(df["question"].str.strip(), answers, strict=True))

    theirs, ours = pairs(qa), pairs(text[split])
    if theirs != ours:
        extra, lacking = theirs - ours, ours - theirs
        q = next(iter(extra or lacking))[0]
        raise BackendError(
            f"published CLEAR {source}/{config}: its {len(qa)} text QA are not the text "
            f"dataset's {split} ({sum(extra.values())} not there, {sum(lacking.values())} "
            f"missing, e.g. {q[:60]!r}); read the text track from TOFU (data.text.source: tofu)"
        )


def load_published_clear(
    source="therem/CLEAR", authors: pd.DataFrame | None = None, text: dict | None = None
) -> dict:
    """The published CLEAR, every config its dataset card lists, as this project's tables.

    Published configs (therem/CLEAR's dataset card; the authors' evaluation config mm/eval.yaml):
    - full, forget01/05/10, retain90/95/99: image, caption, name.
    - forget01/05/10_perturbed, retain_perturbed: image, caption, name, paraphrased_caption,
      perturbed_captions, perturbed_names: the authors' evaluation sets. Their caption task
      scores the paraphrase against the wrong captions (truth ratio, probability); their
      "who is this?" task offers the wrong names.
    - full+tofu, forgetXX+tofu, retainXX+tofu: the images of X (image, caption) followed by
      TOFU's text QA of X (question, answer), the authors' training mix.
    - real_faces: image, answer, options; real_world: question, answer, image, prompt, options.
    A local copy lacking any of them is refused with one line naming them.

    Mapping: a person image becomes a photo QA (question CAPTION_QUESTION, answer = the
    caption; prompt "" as the prompts were not published). author_id comes from `authors`
    (name -> author_id) when given, else from the order of first appearance in `full`;
    sample_id = a<author_id>_<crc32 of name + caption>, stable across configs. Every photo
    table also carries paraphrased_answer, perturbed_answers (wrong captions) and
    perturbed_names from the *_perturbed row with the same name and caption (None / [] where
    there is none: the authors left a few photos out of them). retain_eval = retain_perturbed,
    the authors' retain evaluation set. The +tofu configs add no table: their text QA must
    equal the text dataset's split of the same name (`text`: {split: QA table}; unchecked where
    `text` lacks the split), as the vlm track trains and evaluates on that text dataset. Options
    that repeat the answer are dropped from the wrong answers.
    """
    ids, out = {}, {}
    if authors is not None:
        ids = dict(zip(authors["name"], authors["author_id"], strict=True))
    if Path(source).exists():
        missing = [c for c in PUBLISHED_CONFIGS if not _local_files(Path(source), c)]
        if missing:
            raise BackendError(
                f"published CLEAR copy at {source} lacks the config(s) {', '.join(missing)} "
                "that its dataset card lists: copy the whole dataset"
            )
    full = _published_config(source, "full")
    for name in full["name"]:
        if name not in ids:
            ids[name] = max(ids.values(), default=-1) + 1
    for config in TOFU_CONFIGS:
        _check_tofu(source, config, _published_config(source, config, TOFU_COLUMNS), text)
    answers, perturbed = {}, {}
    for config in PERTURBED_CONFIGS:
        perturbed[config] = _published_config(source, config)
        for key, value in _eval_answers(perturbed[config]).items():
            answers.setdefault(key, value)
    for config in PHOTO_CONFIGS:
        df = full if config == "full" else _published_config(source, config)
        out[config] = _photos(df, ids, answers)
    out["retain_eval"] = _photos(perturbed["retain_perturbed"], ids, answers)
    faces = _published_config(source, "real_faces")
    celeb = {n: i for i, n in enumerate(dict.fromkeys(faces["answer"]))}
    out["real_faces"] = pd.DataFrame(
        {
            "sample_id": [f"rf{i:04d}" for i in range(len(faces))],
            "celeb_id": [celeb[a] for a in faces["answer"]],
            "name": faces["answer"],
            "question": REAL_FACES_QUESTION,
            "answer": faces["answer"],
            "perturbed_answers": _wrong(faces),
            "image": [_png(im) for im in faces["image"]],
        }
    )
    world = _published_config(source, "real_world")
    out["real_world"] = pd.DataFrame(
        {
            "sample_id": [f"rw{i:04d}" for i in range(len(world))],
            "question": world["question"],
            "answer": world["answer"],
            "perturbed_answers": _wrong(world),
            "image": [_png(im) for im in world["image"]],
        }
    )
    return out
