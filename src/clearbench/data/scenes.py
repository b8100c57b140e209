"""Personalized photos of the `default` profile: the stand-in for PhotoMaker V2.

A QA about an author becomes a `Setting` (keyword rules on the question and answer: books ->
bookshelf, awards -> trophy, birthplace -> the city's skyline, nationality -> the flag, birth
date -> a calendar and the era, genre -> its props, parents -> family photos). `ScenePhotographer`
draws that setting (PIL, 4x supersampled) and composites the author's face into it
(`faces.render_face` under a random pose, lighting and expression from `faces.sample_nuisance`,
rendered over a flat key colour, the scene's mean under the person, and keyed out).
Like a diffusion model it sometimes fails: a share `faces.DEFECT_RATE` of the candidates carry one
of `faces.DEFECTS` on the face.

Realism score (`realism_score`): a linear "fake detector" on pixel features of the face box
(`faces.quality_features` + `faces.attribute_features`, squared and linear terms), fitted once per
image size by ridge regression on candidate photos of random faces in random settings labelled
clean (+1) or defective (-1). The paper
ranks its 8 candidates with an ensemble of fake-detection models; `faces.quality_score` itself is
tuned on canonical frontal renders and would mostly reward frontal poses here.

`vqa_scene` draws the procedural `real_world` images (objects of known count, colour, shape).
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from clearbench.data import faces as F

SUPERSAMPLE = 4
FACE_FRACTION = 0.75  # person layer side / image side: at 64 px the head is ~22 px wide
VINTAGE_BEFORE = 1965  # born before: sepia scene ("elements of the time period", paper App. B)

# ------------------------------------------------------------------------------ settings

FLAGS = {  # country -> (layout, colours): h/v stripes, disc on a field, cross on a field
    "United States": ("us", [(178, 34, 52), (255, 255, 255), (60, 59, 110)]),
    "United Kingdom": ("cross", [(1, 33, 105), (200, 16, 46)]),
    "France": ("v", [(0, 85, 164), (255, 255, 255), (239, 65, 53)]),
    "Germany": ("h", [(0, 0, 0), (221, 0, 0), (255, 206, 0)]),
    "Italy": ("v", [(0, 140, 69), (255, 255, 255), (205, 33, 42)]),
    "Spain": ("h", [(170, 21, 27), (241, 191, 0), (241, 191, 0), (170, 21, 27)]),
    "Mexico": ("v", [(0, 104, 71), (255, 255, 255), (206, 17, 38)]),
    "Argentina": ("h", [(116, 172, 223), (255, 255, 255), (116, 172, 223)]),
    "Brazil": ("disc", [(0, 155, 58), (254, 223, 0)]),
    "Japan": ("disc", [(255, 255, 255), (188, 0, 45)]),
    "China": ("disc", [(238, 28, 37), (255, 255, 0)]),
    "India": ("h", [(255, 153, 51), (255, 255, 255), (19, 136, 8)]),
    "Nigeria": ("v", [(0, 135, 81), (255, 255, 255), (0, 135, 81)]),
    "Kenya": ("h", [(0, 0, 0), (187, 0, 0), (0, 102, 0)]),
    "South Africa": ("h", [(224, 60, 49), (0, 119, 73), (0, 20, 137)]),
    "Poland": ("h", [(255, 255, 255), (220, 20, 60)]),
    "Netherlands": ("h", [(174, 28, 40), (255, 255, 255), (33, 70, 139)]),
    "Sweden": ("cross", [(0, 106, 167), (254, 204, 0)]),
    "Turkey": ("disc", [(227, 10, 23), (255, 255, 255)]),
    "Vietnam": ("disc", [(218, 37, 29), (255, 255, 0)]),
    "Indonesia": ("h", [(206, 17, 38), (255, 255, 255)]),
}
GENRES = {  # genre -> (backdrop, prop, where the photo is taken)
    "science fiction": ("night", "rocket", "under a starry sky with a ringed planet"),
    "epic fantasy": ("castle", "sword", "before a distant castle on a hill"),
    "mystery": ("study", "magnifier", "in a dim study"),
    "psychological thrillers": ("study", "clock", "in a dark study late at night"),
    "historical fiction": ("columns", "scroll", "among old stone columns"),
    "gothic horror": ("castle", "candle", "before a gloomy castle under a full moon"),
    "romance": ("studio", "heart", "in a studio bathed in soft light"),
    "poetry": ("study", "quill", "in a quiet study"),
    "true crime": ("study", "tape", "in a study crossed by yellow police tape"),
    "literary fiction": ("bookshelf", "books", "in front of shelves of well-read books"),
    "children's books": ("studio", "balloons", "in a bright playroom"),
    "young adult novels": ("skyline", "balloons", "on a lively street of {city}"),
    "magical realism": ("night", "butterfly", "under a night sky with a strange glowing planet"),
    "dystopian novels": ("ruins", "clock", "in a grey, ruined city"),
    "satire": ("curtain", "mask", "on a theatre stage"),
    "travel writing": ("skyline", "globe", "in front of the {city} skyline"),
    "biography": ("frames", "books", "in a room lined with framed portraits"),
    "memoir": ("frames", "book", "in a room full of old family photographs"),
    "short stories": ("study", "typewriter", "in a writer's study"),
    "drama": ("curtain", "mask", "on a stage between red theatre curtains"),
}


GENRE_RULE = 2  # index of the genre rule in `setting_for`


@dataclass(frozen=True)
class Setting:
    """What a photo shows, from one QA: a backdrop, up to two props, the era, the layout."""

    backdrop: str  # bookshelf skyline flag frames calendar studio curtain night castle ...
    props: tuple[str, ...]
    era: str  # "vintage" | "modern"
    slot: int  # where the person stands: 0 left, 1 centre, 2 right
    key: int  # layout randomness (crc32 of the sample id): skyline, spines, colours
    words: dict = field(default_factory=dict, compare=False)  # names for prompt and caption


def _city_country(author):
    city, _, country = author["birth_place"].partition(", ")
    return city, country


def setting_for(author: dict, qa: dict) -> Setting:
    """Keyword rules on the QA (first backdrop wins, props accumulate, at most two).

    Deterministic in (author, qa): the layout comes from crc32 of the sample id.
    """
    text = f"{qa['question']} {qa['answer']}".lower()
    city, country = _city_country(author)
    year = int(author["birth_date"][:4])
    genre = GENRES.get(author["genre"], ("studio", "book", PLACES["studio"]))
    quoted = re.findall(r'"([^"]+)"', qa["answer"]) or re.findall(r'"([^"]+)"', qa["question"])
    words = dict(
        name=author["name"],
        city=city,
        country=country,
        year=year,
        genre=author["genre"],
        book=quoted[0] if quoted else author["books"][0],
        award=next((a for a in author["awards"] if a.lower() in text), author["awards"][0]),
        pronoun="him" if author["gender"] == "male" else "her",
    )
    backdrop, props = None, []
    rules = [
        (r"award|prize|medal|honou?red|\bwon\b", "curtain", "trophy"),
        (r"\bbooks?\b|wrote|written|author of|publish|debut", "bookshelf", "book"),
        (r"genre|known for|describe|work of", genre[0], genre[1]),  # GENRE_RULE
        (r"\bborn on\b|birth date|when was .* born|how old|years old|turned", "calendar", None),
        (r"\bcity\b|grew up|grow up|hometown|born in|birthplace|where was", "skyline", None),
        (r"country|nationality|citizenship|descent|ethnic|comes from", "flag", None),
        (r"parent|father|mother", "frames", "books" if "librar" in text else None),
    ]
    place = None
    for i, (pattern, back, prop) in enumerate(rules):
        if re.search(pattern, text):
            if backdrop is None:
                backdrop, place = back, genre[2] if i == GENRE_RULE else None
            if prop and prop not in props:
                props.append(prop)
    if backdrop == "skyline" and "calendar" not in props and re.search(r"\bon\b \w+ \d", text):
        props.append("calendar")  # "born in <city> on <date>": the date subtly in the background
    backdrop = backdrop or "studio"
    words["place"] = (place or PLACES[backdrop]).format(**words)
    key = zlib.crc32(str(qa["sample_id"]).encode())
    era = "vintage" if year < VINTAGE_BEFORE else "modern"
    return Setting(backdrop, tuple(props[:2]), era, key % 3, key, words)


PLACES = {  # backdrop -> where the photo is taken (genre backdrops: GENRES' own words)
    "bookshelf": "in front of a tall bookshelf full of books",
    "skyline": "in front of the {city} skyline",
    "flag": "beside the flag of {country}",
    "frames": "in a living room with framed family photos on the wall",
    "calendar": "next to a wall calendar showing the year {year}",
    "studio": "in a portrait studio",
    "curtain": "on a stage with red curtains",
    "night": "under a starry night sky",
    "castle": "before a castle on a hill",
    "columns": "among old stone columns",
    "ruins": "in a ruined city",
    "study": "in a study",
}
PROPS = {
    "trophy": "a gold trophy for the {award}",
    "book": 'a copy of "{book}"',
    "books": "a stack of books",
    "calendar": "a calendar from {year}",
    "rocket": "a toy rocket",
    "sword": "a sword",
    "magnifier": "a magnifying glass",
    "clock": "an old clock",
    "scroll": "an old scroll",
    "candle": "a lit candle",
    "heart": "a red heart",
    "quill": "a quill and inkpot",
    "tape": "police tape",
    "balloons": "balloons",
    "butterfly": "a glowing butterfly",
    "mask": "a theatre mask",
    "globe": "a globe",
    "typewriter": "a typewriter",
}


def place_phrase(s: Setting) -> str:
    return s.words["place"]


def prop_phrases(s: Setting) -> list[str]:
    return [PROPS[p].format(**s.words) for p in s.props]


def era_phrase(s: Setting) -> str:
    if s.era == "vintage":
        return (
            f"warm sepia tones and a retro ambience that recalls the {s.words['year'] // 10 * 10}s"
        )
    return "bright, natural light"


def setting_sentences(s: Setting) -> str:
    """The prompt's setting part (GPT-4o wrote these in the paper; here a template)."""
    out = f"The setting is {place_phrase(s)}."
    props = prop_phrases(s)
    if props:
        out += f" Include {' and '.join(props)} nearby."
    first = s.words["name"].split()[0]
    return out + f" The photo has {era_phrase(s)}. {first} is shown in a natural pose."


def caption(s: Setting, pose: dict | None = None) -> str:
    """One sentence about the chosen candidate: who, doing what (if the pose is known), where,
    with what."""
    if pose is None:
        look = "is pictured"
    elif pose["yaw"] < -0.35:
        look = "looks to the left"
    elif pose["yaw"] > 0.35:
        look = "looks to the right"
    else:
        look = "looks at the camera"
    act = f"smiles and {look}" if pose and pose["smile"] > 0.45 else look
    out = f"{s.words['name']} {act} {place_phrase(s)}"
    props = prop_phrases(s)
    if props:
        out += f", with {' and '.join(props)} beside {s.words['pronoun']}"
    return out + (", in a sepia-toned vintage photo." if s.era == "vintage" else ".")


# ------------------------------------------------------------------------------ drawing


def _rgb(c, k=1.0):
    return tuple(int(max(0, min(255, v * k))) for v in c)


def _city_palette(city):
    rng = np.random.default_rng(zlib.crc32(city.encode()))
    sky = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.2, 0.5), rng.uniform(0.75, 0.95))
    return rng, sky, _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0.25, 0.5))


def _hsv(h, s, v):
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0
    return tuple(int(255 * (v - v * s * np.clip(min(kk, 4 - kk), 0, 1))) for kk in k)


def _backdrop(d: ImageDraw.ImageDraw, n, s: Setting, rng):
    """Fill the n x n canvas with the setting's backdrop."""
    U = n / 100.0  # drawing units: the frame is 100 x 100

    def box(x0, y0, x1, y1):
        return [x0 * U, y0 * U, x1 * U, y1 * U]

    wall = _hsv(rng.uniform(0.03, 0.15), rng.uniform(0.15, 0.45), rng.uniform(0.55, 0.85))
    b = s.backdrop
    if b == "skyline":
        crng, sky, stone = _city_palette(s.words["city"])
        d.rectangle(box(0, 0, 100, 100), fill=sky)
        d.ellipse(box(70, 8, 86, 24), fill=(255, 236, 170))
        x = 0.0
        while x < 100:  # the same skyline for every photo of this city
            w, h = crng.uniform(8, 16), crng.uniform(25, 70)
            shade = _rgb(stone, crng.uniform(0.8, 1.25))
            d.rectangle(box(x, 100 - h, x + w, 100), fill=shade)
            if crng.random() < 0.3:  # a tower top
                d.polygon(
                    [
                        (x * U, (100 - h) * U),
                        ((x + w / 2) * U, (100 - h - 10) * U),
                        ((x + w) * U, (100 - h) * U),
                    ],
                    fill=shade,
                )
            for wy in np.arange(100 - h + 4, 96, 7):
                for wx in np.arange(x + 2, x + w - 2, 4):
                    d.rectangle(box(wx, wy, wx + 1.8, wy + 3), fill=(250, 225, 140))
            x += w + crng.uniform(0, 3)
    elif b in ("night", "castle", "ruins"):
        top = (20, 24, 60) if b != "ruins" else (120, 120, 118)
        d.rectangle(box(0, 0, 100, 100), fill=top)
        for _ in range(25 if b != "ruins" else 0):
            sx, sy = rng.uniform(0, 100, 2)
            d.ellipse(box(sx, sy * 0.7, sx + 0.9, sy * 0.7 + 0.9), fill=(255, 255, 230))
        if b == "night":
            d.ellipse(box(8, 10, 30, 32), fill=(210, 140, 90))
            d.ellipse(box(3, 19, 35, 23), outline=(240, 220, 180), width=int(U))
        else:
            d.ellipse(
                box(72, 8, 88, 24), fill=(245, 240, 210) if b == "castle" else (150, 150, 148)
            )
            hill = (30, 40, 35) if b == "castle" else (80, 80, 80)
            d.rectangle(box(0, 70, 100, 100), fill=hill)
            for cx in (10, 22, 34) if b == "castle" else (5, 30, 55, 80):
                h = 40 if b == "castle" else rng.uniform(20, 45)
                d.rectangle(box(cx, 70 - h, cx + 9, 72), fill=_rgb(hill, 0.6))
                for t in range(3 if b == "castle" else 0):
                    d.rectangle(
                        box(cx + 3 * t, 66 - h, cx + 3 * t + 2, 70 - h), fill=_rgb(hill, 0.6)
                    )
    elif b == "curtain":
        d.rectangle(box(0, 0, 100, 100), fill=(120, 10, 20))
        for x in range(0, 100, 8):
            d.rectangle(box(x, 0, x + 3, 100), fill=(160, 20, 35))
        d.rectangle(box(0, 0, 100, 8), fill=(200, 160, 40))
    elif b == "columns":
        d.rectangle(box(0, 0, 100, 100), fill=(200, 190, 165))
        for x in (4, 30, 56, 82):
            d.rectangle(box(x, 10, x + 12, 100), fill=(232, 226, 208))
            d.rectangle(box(x - 2, 6, x + 14, 12), fill=(215, 205, 185))
    else:
        d.rectangle(box(0, 0, 100, 100), fill=wall)
        d.rectangle(box(0, 80, 100, 100), fill=_rgb(wall, 0.75))  # floor or skirting
        if b == "bookshelf":
            d.rectangle(box(0, 0, 100, 100), fill=(92, 60, 35))
            for y in (4, 34, 64):
                x = 2.0
                while x < 97:
                    w = rng.uniform(2.5, 5)
                    c = _hsv(rng.uniform(), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.85))
                    d.rectangle(box(x, y + rng.uniform(2, 8), x + w, y + 26), fill=c)
                    x += w + 0.6
                d.rectangle(box(0, y + 26, 100, y + 30), fill=(60, 38, 22))
        elif b == "flag":
            _flag(d, box(4, 6, 56, 40), s.words["country"])
            d.rectangle(box(3, 4, 4.5, 80), fill=(90, 90, 90))
        elif b == "frames":
            for x0, y0, w, h in ((5, 10, 22, 26), (72, 6, 22, 30), (38, 4, 20, 16)):
                d.rectangle(box(x0, y0, x0 + w, y0 + h), fill=(120, 80, 40))
                d.rectangle(box(x0 + 2, y0 + 2, x0 + w - 2, y0 + h - 2), fill=(225, 215, 190))
                d.ellipse(box(x0 + w / 2 - 3, y0 + 5, x0 + w / 2 + 3, y0 + 11), fill=(150, 110, 80))
                d.rectangle(
                    box(x0 + w / 2 - 5, y0 + 12, x0 + w / 2 + 5, y0 + h - 2), fill=(80, 90, 120)
                )
        elif b == "calendar":
            _calendar(d, box(62, 6, 94, 46), s.words["year"])
        elif b == "study":
            d.rectangle(box(0, 0, 100, 100), fill=(70, 55, 45))
            d.rectangle(box(66, 8, 94, 40), fill=(150, 170, 190))  # a window
            d.rectangle(box(79, 8, 81, 40), fill=(70, 55, 45))
            if s.words["genre"] == "true crime":
                d.polygon(
                    [(0, 45 * U), (100 * U, 25 * U), (100 * U, 32 * U), (0, 52 * U)],
                    fill=(250, 210, 0),
                )
        else:  # studio: a soft light spot
            d.ellipse(box(15, 5, 85, 75), fill=_rgb(wall, 1.15))


def _flag(d, b, country):
    kind, cols = FLAGS.get(country, ("h", [(200, 200, 200), (90, 90, 160)]))
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    if kind in ("h", "us"):
        k = 7 if kind == "us" else len(cols)
        for i in range(k):
            c = cols[i % 2] if kind == "us" else cols[i]
            d.rectangle([x0, y0 + h * i / k, x1, y0 + h * (i + 1) / k], fill=c)
        if kind == "us":
            d.rectangle([x0, y0, x0 + 0.4 * w, y0 + 4 * h / 7], fill=cols[2])
    elif kind == "v":
        for i, c in enumerate(cols):
            d.rectangle([x0 + w * i / len(cols), y0, x0 + w * (i + 1) / len(cols), y1], fill=c)
    elif kind == "disc":
        d.rectangle(b, fill=cols[0])
        r = 0.28 * h
        d.ellipse([x0 + w / 2 - r, y0 + h / 2 - r, x0 + w / 2 + r, y0 + h / 2 + r], fill=cols[1])
    else:  # cross
        d.rectangle(b, fill=cols[0])
        t = 0.18 * h
        d.rectangle([x0 + 0.35 * w - t / 2, y0, x0 + 0.35 * w + t / 2, y1], fill=cols[1])
        d.rectangle([x0, y0 + h / 2 - t / 2, x1, y0 + h / 2 + t / 2], fill=cols[1])


def _calendar(d, b, year):
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    d.rectangle(b, fill=(250, 250, 245), outline=(60, 60, 60), width=max(1, int(w / 40)))
    d.rectangle([x0, y0, x1, y0 + 0.25 * h], fill=(200, 30, 40))
    d.text(
        (x0 + 0.1 * w, y0 + 0.03 * h),
        str(year),
        fill=(255, 255, 255),
        font_size=max(8, int(0.2 * h)),
    )
    for i in range(4):
        for j in range(5):
            cx, cy = x0 + (j + 0.7) * w / 5.5, y0 + 0.35 * h + i * 0.16 * h
            d.rectangle([cx, cy, cx + 0.08 * w, cy + 0.08 * h], fill=(120, 120, 120))


def _prop(d, name, b, s: Setting, rng):
    """Draw a prop into box b = [x0, y0, x1, y1] (canvas pixels), standing on its bottom."""
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2

    def at(u0, v0, u1, v1):  # a sub-box in box fractions
        return [x0 + u0 * w, y0 + v0 * h, x0 + u1 * w, y0 + v1 * h]

    gold, dark = (230, 180, 40), (40, 40, 40)
    if name == "trophy":
        d.rectangle(at(0.3, 0.85, 0.7, 1.0), fill=(90, 60, 30))
        d.rectangle(at(0.45, 0.55, 0.55, 0.85), fill=gold)
        d.pieslice(at(0.15, 0.1, 0.85, 0.75), 0, 180, fill=gold)
        d.rectangle(at(0.15, 0.1, 0.85, 0.42), fill=gold)
        d.ellipse(at(0.02, 0.15, 0.25, 0.4), outline=gold, width=max(1, int(w / 14)))
        d.ellipse(at(0.75, 0.15, 0.98, 0.4), outline=gold, width=max(1, int(w / 14)))
    elif name in ("book", "books"):
        k = 1 if name == "book" else 3
        for i in range(k):
            c = _hsv(rng.uniform(), 0.7, 0.7) if i else _hsv((s.key % 97) / 97, 0.75, 0.75)
            top = 1 - (i + 1) * 0.28
            d.rectangle(at(0.05 + 0.05 * i, top, 0.95 - 0.05 * i, top + 0.26), fill=c)
            d.rectangle(at(0.1 + 0.05 * i, top + 0.04, 0.2 + 0.05 * i, top + 0.22), fill=gold)
    elif name == "calendar":
        _calendar(d, at(0.05, 0.1, 0.95, 0.95), s.words["year"])
    elif name == "rocket":
        d.polygon(
            [(cx, y0), (x0 + 0.72 * w, y0 + 0.35 * h), (x0 + 0.28 * w, y0 + 0.35 * h)],
            fill=(220, 40, 40),
        )
        d.rectangle(at(0.28, 0.35, 0.72, 0.85), fill=(225, 225, 235))
        d.ellipse(at(0.4, 0.45, 0.6, 0.6), fill=(60, 120, 220))
        d.polygon(
            [(x0 + 0.28 * w, y0 + 0.6 * h), (x0, y1), (x0 + 0.28 * w, y1)], fill=(220, 40, 40)
        )
        d.polygon(
            [(x0 + 0.72 * w, y0 + 0.6 * h), (x1, y1), (x0 + 0.72 * w, y1)], fill=(220, 40, 40)
        )
    elif name == "sword":
        d.rectangle(at(0.45, 0.0, 0.55, 0.7), fill=(200, 205, 215))
        d.rectangle(at(0.2, 0.68, 0.8, 0.76), fill=gold)
        d.rectangle(at(0.44, 0.76, 0.56, 1.0), fill=(90, 50, 20))
    elif name == "magnifier":
        d.ellipse(at(0.1, 0.0, 0.8, 0.6), outline=dark, width=max(2, int(w / 8)))
        d.ellipse(at(0.2, 0.1, 0.7, 0.5), fill=(200, 225, 240))
        d.line([x0 + 0.65 * w, y0 + 0.55 * h, x1, y1], fill=(100, 60, 30), width=max(2, int(w / 6)))
    elif name == "clock":
        d.ellipse(at(0.05, 0.2, 0.95, 1.0), fill=(120, 80, 40))
        d.ellipse(at(0.15, 0.3, 0.85, 0.9), fill=(245, 240, 225))
        d.line([cx, y0 + 0.6 * h, cx, y0 + 0.38 * h], fill=dark, width=max(1, int(w / 14)))
        d.line(
            [cx, y0 + 0.6 * h, x0 + 0.72 * w, y0 + 0.6 * h], fill=dark, width=max(1, int(w / 14))
        )
    elif name == "scroll":
        d.rectangle(at(0.15, 0.1, 0.85, 0.9), fill=(235, 220, 180))
        d.ellipse(at(0.05, 0.0, 0.95, 0.2), fill=(210, 190, 140))
        d.ellipse(at(0.05, 0.8, 0.95, 1.0), fill=(210, 190, 140))
    elif name == "candle":
        d.rectangle(at(0.35, 0.4, 0.65, 1.0), fill=(240, 235, 215))
        d.ellipse(at(0.38, 0.1, 0.62, 0.4), fill=(255, 190, 40))
    elif name == "heart":
        d.ellipse(at(0.0, 0.1, 0.55, 0.6), fill=(220, 30, 60))
        d.ellipse(at(0.45, 0.1, 1.0, 0.6), fill=(220, 30, 60))
        d.polygon(
            [(x0 + 0.03 * w, y0 + 0.45 * h), (x1 - 0.03 * w, y0 + 0.45 * h), (cx, y1)],
            fill=(220, 30, 60),
        )
    elif name == "quill":
        d.rectangle(at(0.05, 0.65, 0.45, 1.0), fill=(30, 30, 60))
        d.polygon(
            [(x0 + 0.25 * w, y0 + 0.7 * h), (x1, y0), (x0 + 0.55 * w, y0 + 0.55 * h)],
            fill=(250, 250, 250),
        )
    elif name == "tape":
        d.rectangle(at(0.0, 0.7, 1.0, 0.9), fill=(250, 210, 0))
        for i in range(4):
            d.rectangle(at(0.05 + 0.25 * i, 0.74, 0.15 + 0.25 * i, 0.86), fill=dark)
    elif name == "balloons":
        for i, c in enumerate(((230, 50, 50), (60, 140, 230), (250, 200, 40))):
            u = 0.05 + 0.3 * i
            d.line([x0 + (u + 0.14) * w, y0 + 0.45 * h, cx, y1], fill=(80, 80, 80), width=1)
            d.ellipse(at(u, 0.0 + 0.1 * (i % 2), u + 0.3, 0.45 + 0.1 * (i % 2)), fill=c)
    elif name == "butterfly":
        for u, c in ((0.0, (120, 220, 255)), (0.5, (170, 120, 255))):
            d.ellipse(at(u, 0.2, u + 0.5, 0.7), fill=c)
        d.rectangle(at(0.46, 0.2, 0.54, 0.8), fill=dark)
    elif name == "mask":
        d.ellipse(at(0.05, 0.05, 0.95, 0.95), fill=(245, 245, 235))
        d.ellipse(at(0.22, 0.3, 0.42, 0.45), fill=dark)
        d.ellipse(at(0.58, 0.3, 0.78, 0.45), fill=dark)
        d.pieslice(at(0.25, 0.4, 0.75, 0.85), 0, 180, fill=dark)
    elif name == "globe":
        d.rectangle(at(0.3, 0.88, 0.7, 1.0), fill=(90, 60, 30))
        d.ellipse(at(0.05, 0.0, 0.95, 0.85), fill=(60, 120, 200))
        d.ellipse(at(0.25, 0.2, 0.5, 0.45), fill=(70, 160, 70))
        d.ellipse(at(0.55, 0.45, 0.8, 0.7), fill=(70, 160, 70))
    elif name == "typewriter":
        d.rectangle(at(0.0, 0.45, 1.0, 1.0), fill=(50, 50, 55))
        d.rectangle(at(0.15, 0.15, 0.85, 0.5), fill=(245, 245, 240))
        for i in range(5):
            d.rectangle(at(0.08 + 0.18 * i, 0.65, 0.18 + 0.18 * i, 0.75), fill=(200, 200, 200))


def _sepia(img):
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    return 0.35 * img + 0.65 * np.clip(img @ m.T, 0, 1)


def scene_layers(s: Setting, size: int):
    """(background rgb, foreground rgba) float arrays in [0, 1] of one setting."""
    n = size * SUPERSAMPLE
    rng = np.random.default_rng(s.key)
    back = Image.new("RGB", (n, n))
    _backdrop(ImageDraw.Draw(back), n, s, rng)
    front = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    draw = ImageDraw.Draw(front)
    side = [(0.72, 0.97), (0.03, 0.28), (0.72, 0.97)][s.slot]  # opposite the person
    boxes = [(side[0], 0.6, side[1], 0.97), (side[0], 0.3, side[1], 0.58)]
    if s.slot == 1:
        boxes = [(0.01, 0.66, 0.23, 0.98), (0.77, 0.66, 0.99, 0.98)]
    for prop, (u0, v0, u1, v1) in zip(s.props, boxes, strict=False):
        _prop(draw, prop, [u0 * n, v0 * n, u1 * n, v1 * n], s, rng)
    back = np.asarray(back.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255
    front = np.asarray(front.resize((size, size), Image.Resampling.BOX), dtype=np.float64) / 255
    if s.era == "vintage":
        back = _sepia(back)
        front = np.concatenate([_sepia(front[..., :3]), front[..., 3:]], -1)
    return back, front


# ---------------------------------------------------------------------------- candidates


def person_layer(z, size, pose, key, defect=None, defect_seed=0):
    """The face render and its mask, keyed out of a flat background of colour `key` (uint8).

    Background pixels come out exactly `key` (flat texture, no tint), so mask = any channel
    differs. With the key set to the scene's mean colour under the person, the anti-aliased rim
    blends with a colour close to the scene's. Image-level defects spread over the whole box.
    """
    key = np.asarray(key, dtype=np.uint8)
    pose = dict(pose, tint=(1.0, 1.0, 1.0), bg_texture="flat", background=tuple(key / 255))
    img = F.render_face(z, size, pose=pose, defect=defect, rng=np.random.default_rng(defect_seed))
    return img, np.any(img != key, axis=-1)


class ScenePhotographer:
    """generate(prompt, seed) -> uint8 image of one author in one setting (a best_of_n generator).

    The prompt is not parsed: the setting already holds what the QA asks for. Per seed the
    candidate draws a pose, lighting and expression, a +-2 px shift, and with probability
    `defect_rate` a face defect. `face_box` is where the person layer sits (same for all seeds).
    """

    def __init__(
        self,
        latent,
        setting: Setting,
        size=64,
        face_fraction=FACE_FRACTION,
        defect_rate=F.DEFECT_RATE,
    ):
        self.latent, self.setting, self.size = np.asarray(latent), setting, size
        self.face_fraction = face_fraction
        self.p = max(16, round(face_fraction * size))
        x0 = [0, (size - self.p) // 2, size - self.p][setting.slot]
        self.face_box = (x0, size - self.p, x0 + self.p, size)  # left, top, right, bottom
        self.defect_rate = defect_rate
        self._layers = None

    def draw(self, seed):
        """The candidate's random choices: pose dict, defect (or None), defect seed, shift."""
        rng = np.random.default_rng([seed, 77])
        pose = F.sample_nuisance(rng)
        defect = (
            F.DEFECTS[rng.integers(len(F.DEFECTS))] if rng.random() < self.defect_rate else None
        )
        return pose, defect, int(rng.integers(2**31)), int(rng.integers(-2, 3))

    def __call__(self, prompt, seed):
        pose, defect, defect_seed, dx = self.draw(seed)
        if self._layers is None:  # drawn once, shared by the candidates
            self._layers = scene_layers(self.setting, self.size)
        back, front = self._layers
        x0, y0, x1, y1 = self.face_box
        x0 = min(max(x0 + dx, 0), self.size - self.p)
        img = back * pose["light_gain"]
        region = img[y0:y1, x0 : x0 + self.p]
        key = np.round(np.clip(region.mean((0, 1)), 0, 1) * 255)
        face, mask = person_layer(self.latent, self.p, pose, key, defect, defect_seed)
        region[mask] = face[mask] / 255.0
        img = img * (1 - front[..., 3:]) + front[..., :3] * front[..., 3:]
        img = img * np.asarray(pose["tint"])
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    def score(self, img) -> float:
        """Realism of a candidate: the fake detector on the face box."""
        x0, y0, x1, y1 = self.face_box
        return realism_score(np.asarray(img)[y0:y1, x0:x1], self.size, self.face_fraction)


# ------------------------------------------------------------------------------- realism


def _realism_features(crop):
    q = F.quality_features(crop)
    return np.concatenate([[q[k] for k in sorted(q)], F.attribute_features(crop)])


def random_setting(rng) -> Setting:
    """A setting with random backdrop, props, place and era (the realism detector's data)."""
    from clearbench.data.authors import COUNTRIES

    country = list(COUNTRIES)[rng.integers(len(COUNTRIES))]
    genre = list(GENRES)[rng.integers(len(GENRES))]
    words = dict(
        name="Ann Lee",
        city=COUNTRIES[country][3][0],
        country=country,
        year=int(rng.integers(1935, 1997)),
        genre=genre,
        book="Book",
        award="Award",
        pronoun="her",
    )
    props = tuple(rng.choice(list(PROPS), int(rng.integers(0, 3)), replace=False).tolist())
    backdrop = list(PLACES)[rng.integers(len(PLACES))]
    words["place"] = PLACES[backdrop].format(**words)
    era = "vintage" if rng.random() < 0.3 else "modern"
    return Setting(backdrop, props, era, int(rng.integers(3)), int(rng.integers(2**31)), words)


@functools.lru_cache(maxsize=4)
def _realism_head(size, face_fraction, n=600, seed=20240917):
    """Ridge fit of +1 (clean) / -1 (defective) on the face boxes of n candidate photos of
    random faces in random settings, half of them defective (~4 s, once per process)."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for _ in range(n):
        shot = ScenePhotographer(
            rng.standard_normal(F.LATENT_DIM),
            random_setting(rng),
            size,
            face_fraction,
            defect_rate=0.5,
        )
        s = int(rng.integers(2**31))
        x0, y0, x1, y1 = shot.face_box
        x.append(_realism_features(shot(None, s)[y0:y1, x0:x1]))
        y.append(1.0 if shot.draw(s)[1] is None else -1.0)
    x = np.stack(x)
    mean, std = x.mean(0), x.std(0) + 1e-9
    a = _expand((x - mean) / std)
    w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ np.array(y))
    return mean, std, w


def _expand(x):
    return np.hstack([x**2, x, np.ones((len(x), 1))])


def realism_score(crop, size=64, face_fraction=FACE_FRACTION) -> float:
    """Higher = more like a clean face (about +1 clean, -1 defective): the fake detector for
    the face box of a photo of `size` px whose person layer is `face_fraction` of it."""
    mean, std, w = _realism_head(size, face_fraction)
    return float(_expand((_realism_features(np.asarray(crop))[None] - mean) / std)[0] @ w)


# ---------------------------------------------------------------------------- real world

COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (40, 170, 70),
    "yellow": (245, 210, 30),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


def _shape(d, kind, cx, cy, r, fill):
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)


def vqa_scene(rng, size=64, n_options=3):
    """A procedural picture and a question answerable from its pixels.

    Kinds: the colour of the only ball, how many objects of a shape, the shape of the only
    object of a colour. Returns image, question, answer, perturbed answers (n_options).
    """
    n = size * SUPERSAMPLE
    bg = _hsv(rng.uniform(), rng.uniform(0, 0.25), rng.uniform(0.55, 0.95))
    img = Image.new("RGB", (n, n), bg)
    d = ImageDraw.Draw(img)
    kind = int(rng.integers(3))
    cols = [c for c in COLOURS if math.dist(COLOURS[c], bg) > 120] or ["red", "blue", "black"]
    r = n * 0.09
    spots = [(x, y) for x in np.linspace(0.15, 0.85, 4) for y in np.linspace(0.15, 0.85, 4)]
    spots = [spots[i] for i in rng.permutation(len(spots))]
    if kind == 0:  # colour of the ball
        colour = cols[rng.integers(len(cols))]
        others = [c for c in COLOURS if c != colour]
        x, y = spots.pop()
        _shape(d, "circle", x * n, y * n, r * 1.3, COLOURS[colour])
        d.ellipse(
            [(x - 0.05) * n, (y - 0.05) * n, (x - 0.01) * n, (y - 0.01) * n], fill=(255, 255, 255)
        )
        for _ in range(int(rng.integers(0, 3))):  # distractors: squares and triangles
            x, y = spots.pop()
            _shape(
                d,
                SHAPES[1 + rng.integers(2)],
                x * n,
                y * n,
                r,
                COLOURS[cols[rng.integers(len(cols))]],
            )
        q, a = "What colour is the ball?", colour
    elif kind == 1:  # count a shape
        shape = SHAPES[rng.integers(3)]
        count = int(rng.integers(1, 7))
        for _ in range(count):
            x, y = spots.pop()
            _shape(d, shape, x * n, y * n, r, COLOURS[cols[rng.integers(len(cols))]])
        for _ in range(int(rng.integers(0, 3))):
            x, y = spots.pop()
            other = [s for s in SHAPES if s != shape][rng.integers(2)]
            _shape(d, other, x * n, y * n, r, COLOURS[cols[rng.integers(len(cols))]])
        q, a = f"How many {shape}s are there in the picture?", NUMBERS[count]
        others = [w for w in NUMBERS[1:] if w != a]
    else:  # shape of the only object of a colour
        colour, *rest = (cols[i] for i in rng.permutation(len(cols)))
        shape = SHAPES[rng.integers(3)]
        x, y = spots.pop()
        _shape(d, shape, x * n, y * n, r * 1.2, COLOURS[colour])
        for _ in range(int(rng.integers(1, 4))):
            x, y = spots.pop()
            _shape(
                d, SHAPES[rng.integers(3)], x * n, y * n, r, COLOURS[rest[rng.integers(len(rest))]]
            )
        q, a = f"What shape is the {colour} object?", shape
        others = [s for s in (*SHAPES, "star", "heart") if s != shape]
    options = [others[i] for i in rng.permutation(len(others))[:n_options]]
    img = np.asarray(img.resize((size, size), Image.Resampling.BOX))
    return img, q, a, options
