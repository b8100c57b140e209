"""Offline face generator: determinism, quality filter, edits, attributes, learnability."""

import numpy as np
import pytest
import torch

from clearbench.data import faces as F


@pytest.fixture(scope="module")
def pool():
    return F.sample_face_pool(48, seed=3, return_info=True)  # 6 batches = 192 draws


def auc(clean, defective):
    """P(a clean render scores above a defective one)."""
    clean, defective = np.asarray(clean)[:, None], np.asarray(defective)[None, :]
    return float(np.mean(clean > defective) + 0.5 * np.mean(clean == defective))


def test_render_is_deterministic_uint8_and_sized():
    z = np.random.default_rng(0).standard_normal(F.LATENT_DIM)
    img = F.render_face(z)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, F.render_face(z))
    assert F.render_face(z, size=96).shape == (96, 96, 3)
    with pytest.raises(ValueError, match="unknown defect"):
        F.render_face(z, defect="lens_flare")


def test_pool_is_deterministic_in_seed():
    a, qa = F.sample_face_pool(16, seed=5)
    b, qb = F.sample_face_pool(16, seed=5)
    c, _ = F.sample_face_pool(16, seed=6)
    assert a.shape == (16, F.LATENT_DIM) and qa.shape == (16,)
    assert a.tobytes() == b.tobytes() and qa.tobytes() == qb.tobytes()
    assert not np.allclose(a, c)


def test_quality_score_ranks_every_defect_below_clean_renders():
    zs = np.random.default_rng(1).standard_normal((40, F.LATENT_DIM))
    clean = [F.quality_score(F.render_face(z)) for z in zs]
    for defect in F.DEFECTS:
        bad = [
            F.quality_score(F.render_face(z, defect=defect, rng=np.random.default_rng(i)))
            for i, z in enumerate(zs)
        ]
        assert np.median(bad) < np.median(clean) - 5, defect
        assert auc(clean, bad) > 0.95, defect


def test_pool_keeps_far_fewer_defects_than_it_draws(pool):
    latents, scores, info = pool
    assert len(latents) == len(info["defects"]) == len(info["images"]) == 48
    assert info["drawn"] == 192
    assert 0.15 < info["drawn_defective"] / info["drawn"] < 0.35
    kept_defective = sum(d is not None for d in info["defects"])
    assert kept_defective <= 1  # of ~48 defective draws
    assert np.all(np.diff(scores[:8]) <= 0)  # each batch is kept best first
    assert np.array_equal(info["images"][0], F.render_face(latents[0]))


def test_image_attributes_agree_with_the_latent():
    zs = np.random.default_rng(2).standard_normal((80, F.LATENT_DIM))
    true = [F.face_attributes(z) for z in zs]
    seen = [F.face_attributes(F.render_face(z)) for z in zs]
    assert {a["gender"] for a in true} == {"male", "female"}
    assert all(a["ethnicity"] in F.ETHNICITIES and 18 <= a["age"] <= 90 for a in true + seen)
    for key, least in (("gender", 0.85), ("ethnicity", 0.9), ("glasses", 0.9)):
        agree = np.mean([t[key] == s[key] for t, s in zip(true, seen, strict=True)])
        assert agree >= least, (key, agree)
    ages = np.array([[t["age"], s["age"]] for t, s in zip(true, seen, strict=True)])
    assert np.corrcoef(ages.T)[0, 1] > 0.9
    assert np.mean(np.abs(ages[:, 0] - ages[:, 1])) < 6


def test_edit_latent_uses_paper_units():
    z = np.zeros(F.LATENT_DIM)
    moved = F.edit_latent(z, F.AGE_DIRECTION, 5.0)
    assert np.isclose(np.linalg.norm(moved - z), 5.0 * F.PAPER_STRENGTH_SCALE)
    assert F.face_attributes(moved)["age"] > F.face_attributes(z)["age"] + 15


def test_age_edit_adds_glasses_that_the_glasses_edit_removes():
    z = np.zeros(F.LATENT_DIM)
    z[F.GLASSES] = 0.7  # just below the glasses threshold
    older = F.edit_latent(z, F.AGE_DIRECTION, 5.0)
    assert not F.face_attributes(z)["glasses"] and F.face_attributes(older)["glasses"]
    cleaned = F.edit_latent(older, F.GLASSES_DIRECTION, -10.0)
    assert not F.face_attributes(cleaned)["glasses"]
    assert not F.face_attributes(F.render_face(cleaned))["glasses"]


def test_age_shift_makes_faces_older_without_glasses(pool):
    latents = pool[0][:12]
    shifted, scores, info = F.age_shift(latents, seed=0, return_info=True)
    assert shifted.shape == latents.shape and all(d is None for d in info["defects"])
    assert np.array_equal(shifted, F.age_shift(latents, seed=0)[0])
    same = np.setdiff1d(F.IDENTITY_DIMS, [F.AGE, F.GLASSES])
    assert np.array_equal(shifted[:, same], latents[:, same])  # still the same people
    before = [F.face_attributes(F.render_face(z)) for z in latents]
    after = [F.face_attributes(F.render_face(z)) for z in shifted]
    older = np.array([a["age"] - b["age"] for a, b in zip(after, before, strict=True)])
    assert np.median(older) >= 10 and np.mean(older >= 5) >= 0.75, older
    assert not any(F.face_attributes(z)["glasses"] for z in shifted)
    assert sum(a["glasses"] for a in after) <= 1


def test_nuisances_change_pixels_but_not_identity():
    z = np.random.default_rng(4).standard_normal(F.LATENT_DIM)
    a, b = F.render_identity_images(z, 2, seed=0)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 20
    again = F.render_identity_images(z, 2, seed=0)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])


def _tiny_cnn(n_classes):
    def block(c_in, c_out):
        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        return [conv, torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]

    return torch.nn.Sequential(
        *block(3, 32), torch.nn.MaxPool2d(2), *block(32, 64), torch.nn.MaxPool2d(2),
        *block(64, 64), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Dropout(0.3), torch.nn.Linear(256, n_classes),
    )  # fmt: skip


def _standardize(x):  # per image: removes global brightness and contrast
    return (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-3)


def test_identity_is_learnable_from_few_images_under_nuisances():
    n_ids, n_imgs, n_train = 20, 12, 8
    latents, _ = F.sample_face_pool(n_ids, seed=11)
    imgs = np.stack(
        [F.render_identity_images(z, n_imgs, seed=100 + i) for i, z in enumerate(latents)]
    )
    x = torch.tensor(imgs[..., 8:56, 8:56, :], dtype=torch.float32).permute(0, 1, 4, 2, 3) / 255
    x = torch.nn.functional.avg_pool2d(x.reshape(-1, 3, 48, 48), 2).reshape(
        n_ids, n_imgs, 3, 24, 24
    )
    x_train, x_test = x[:, :n_train].reshape(-1, 3, 24, 24), x[:, n_train:].reshape(-1, 3, 24, 24)
    y_train = torch.arange(n_ids).repeat_interleave(n_train)
    y_test = torch.arange(n_ids).repeat_interleave(n_imgs - n_train)

    torch.manual_seed(0)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    net, epochs = _tiny_cnn(n_ids), 60
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * 5)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(32):
            xb = x_train[idx]  # augment: colour gain, brightness and a small shift
            xb = xb * (0.9 + 0.2 * torch.rand(len(idx), 3, 1, 1, generator=gen))
            xb = xb + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=gen) - 0.5)
            dy, dx = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(xb, (dy, dx), (2, 3))
            loss = torch.nn.functional.cross_entropy(net(_standardize(xb)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(_standardize(x_test)).argmax(1) == y_test).float().mean().item()
    nearest = torch.cdist(x_test.flatten(1), x_train.flatten(1)).argmin(1)
    pixel_nn = (y_train[nearest] == y_test).float().mean().item()
    assert accuracy >= 0.9, accuracy
    assert pixel_nn <= accuracy - 0.3, (pixel_nn, accuracy)  # the nuisances are real


def test_contact_sheet_writes_a_png(tmp_path, pool):
    from PIL import Image

    images = pool[2]["images"][:10]
    path = F.contact_sheet(images, [f"face {i}" for i in range(10)], tmp_path / "s.png", ncols=4)
    with Image.open(path) as sheet:
        assert sheet.size == (4 * 128, 3 * (128 + 12))
