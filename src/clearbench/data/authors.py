"""Procedural fictitious authors in the TOFU schema, their QA, and general-knowledge QA.

Everything is a deterministic function of the seed: numpy Generators seeded with [seed, stream,
index] and Faker instances re-seeded from them before each name. Faker gives only the names (its
locale follows the birth country); every other value comes from the tables below.

Each author QA has an answer (a full sentence), a paraphrased answer (a second template with the
same facts) and 5 perturbed answers. Perturbed answers use the paraphrase template, as TOFU's do,
with the fact slots swapped for the values of other authors (then, if too few distinct ones
exist, for values drawn from the slot's table). A perturbation is kept only if every slot differs
from the truth and no true value appears as a whole word in it, so the truth ratio compares
wrong facts against the right one in the same wording.

Each author QA also has `n_question_paraphrases` reworded questions (paraphrased_questions):
drawn without replacement, in a seeded order, from its template's `reworded` forms, which ask
for the same slots and keep every name, title and place the question mentions.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import numpy as np

REFERENCE_YEAR = 2024  # `age` is the age an author reaches in this year
N_PERTURBED = 5
N_OPTIONS = 3  # wrong options per general-knowledge question, as in TOFU's real_authors/world_facts


def words(text: str) -> list[str]:
    return [" ".join(w.split()) for w in text.split(",")]


# country -> (Faker locale, nationality, ethnicities, cities); names are folded to ASCII
COUNTRIES = {
    "United States": (
        "en_US",
        "American",
        ["European", "African", "Latin American"],
        ["New York", "Chicago", "Boston", "Seattle", "New Orleans"],
    ),
    "United Kingdom": (
        "en_GB",
        "British",
        ["European", "South Asian"],
        ["London", "Manchester", "Edinburgh", "Bristol"],
    ),
    "France": ("fr_FR", "French", ["European"], ["Paris", "Lyon", "Marseille", "Bordeaux"]),
    "Germany": ("de_DE", "German", ["European"], ["Berlin", "Munich", "Hamburg", "Cologne"]),
    "Italy": ("it_IT", "Italian", ["European"], ["Rome", "Milan", "Naples", "Turin"]),
    "Spain": ("es_ES", "Spanish", ["European"], ["Madrid", "Barcelona", "Seville", "Valencia"]),
    "Mexico": ("es_MX", "Mexican", ["Latin American"], ["Mexico City", "Guadalajara", "Puebla"]),
    "Argentina": ("es_AR", "Argentine", ["Latin American"], ["Buenos Aires", "Cordoba", "Rosario"]),
    "Brazil": ("pt_BR", "Brazilian", ["Latin American"], ["Sao Paulo", "Rio de Janeiro", "Recife"]),
    "Japan": ("ja_JP", "Japanese", ["East Asian"], ["Tokyo", "Osaka", "Kyoto", "Sapporo"]),
    "China": ("zh_CN", "Chinese", ["East Asian"], ["Beijing", "Shanghai", "Chengdu", "Wuhan"]),
    "India": ("en_IN", "Indian", ["South Asian"], ["Mumbai", "New Delhi", "Kolkata", "Chennai"]),
    "Nigeria": ("yo_NG", "Nigerian", ["African"], ["Lagos", "Ibadan", "Abuja"]),
    "Kenya": ("sw", "Kenyan", ["African"], ["Nairobi", "Mombasa", "Kisumu"]),
    "South Africa": ("zu_ZA", "South African", ["African"], ["Johannesburg", "Durban", "Pretoria"]),
    "Poland": ("pl_PL", "Polish", ["European"], ["Warsaw", "Krakow", "Gdansk"]),
    "Netherlands": ("nl_NL", "Dutch", ["European"], ["Amsterdam", "Rotterdam", "Utrecht"]),
    "Sweden": ("sv_SE", "Swedish", ["European"], ["Stockholm", "Gothenburg", "Uppsala"]),
    "Turkey": ("tr_TR", "Turkish", ["Middle Eastern"], ["Istanbul", "Ankara", "Izmir"]),
    "Vietnam": ("vi_VN", "Vietnamese", ["Southeast Asian"], ["Hanoi", "Hue", "Da Nang"]),
    "Indonesia": ("id_ID", "Indonesian", ["Southeast Asian"], ["Jakarta", "Surabaya", "Bandung"]),
}
THE_COUNTRIES = {"United States", "United Kingdom", "Netherlands"}
ROMANIZED = {"ja_JP", "zh_CN"}  # CJK locales: Faker's romanized names only
ETHNICITIES = sorted({e for c in COUNTRIES.values() for e in c[2]})
FACE_ETHNICITY = {  # authors' ethnicity -> the face attribute classes of data/faces.py
    "African": "black", "East Asian": "asian", "European": "white", "Latin American":
    "latino hispanic", "Middle Eastern": "middle eastern", "South Asian": "indian",
    "Southeast Asian": "asian",
}  # fmt: skip
GENDERS = ["male", "female"]
GENRES = words(
    """
    science fiction, epic fantasy, mystery, psychological thrillers, historical fiction, gothic
    horror, romance, poetry, true crime, literary fiction, children's books, young adult novels,
    magical realism, dystopian novels, satire, travel writing, biography, memoir, short stories,
    drama
"""
)
PROFESSIONS = words(
    """
    baker, carpenter, nurse, pilot, teacher, librarian, fisherman, tailor, engineer, pharmacist,
    architect, journalist, photographer, veterinarian, electrician, farmer, chef, dentist,
    accountant, lawyer, surgeon, firefighter, mechanic, florist, translator, historian,
    geologist, musician, painter, police officer, sailor, shopkeeper, midwife, banker, potter,
    bus driver
"""
)
AWARDS = words(
    """
    Silver Quill Award, Golden Lantern Prize, Meridian Book Prize, Northern Star Medal, Azure
    Pen Award, Harbor Light Prize, Crimson Leaf Award, Iron Compass Prize, Willow Crown Award,
    Saffron Key Prize, Blue Heron Award, Obsidian Circle Prize, Aurora Medal, Golden Feather
    Award, Emerald Inkwell Prize, Starling Literary Medal, Copper Kettle Award, Ivory Tower
    Prize, Lighthouse Award, Velvet Moth Prize
"""
)
ADJECTIVES = words(
    """
    Silent, Broken, Hidden, Crimson, Forgotten, Endless, Hollow, Burning, Frozen, Wandering,
    Gilded, Restless, Distant, Pale, Scarlet, Secret, Drowned, Velvet, Sleeping, Shattered,
    Quiet, Wild, Bitter, Lonely
"""
)
NOUNS = words(
    """
    Lantern, Orchard, Harbor, Compass, Mirror, Garden, Tide, Clockmaker, Lighthouse, River,
    Cathedral, Sparrow, Violin, Archive, Meadow, Kingdom, Bridge, Cartographer, Feather,
    Labyrinth, Island, Tower, Festival, Voyage, Orphan, Letter, Window, Mountain, Carnival,
    Forest
"""
)
THEMES = words(
    """
    Autumn, Ashes, Silence, Memory, Midnight, Salt, Smoke, Winter, Glass, Thunder, Dust, Ember,
    Rain, Shadows, Echoes, Tomorrow
"""
)
TITLE_PATTERNS = ["The {a} {n}", "{a} {n}", "The {n} of {t}", "{ns} of {t}", "A {n} in {t}"]
MONTHS = words(
    """
    January, February, March, April, May, June, July, August, September, October, November,
    December
"""
)  # not strftime: that follows the C locale


@dataclass(frozen=True)
class Template:
    slots: tuple[str, ...]  # the facts this QA asks about; perturbations swap exactly these
    question: str
    answer: str
    paraphrase: str
    reworded: tuple[str, ...]  # the question in other words, same slots (paraphrased_questions)


T = Template
TEMPLATES = [  # ordered: qa_per_author < 20 keeps the first ones
    T(
        ("name",),
        "What is the full name of the author born in {city}, {country} on {date}?",
        "The author born in {city}, {country} on {date} is {name}.",
        "{name} is the writer who was born on {date} in {city}, {country}.",
        (
            "Who is the author that was born on {date} in {city}, {country}?",
            "Which writer was born in {city}, {country} on {date}?",
            "Can you name the author whose birth took place in {city}, {country} on {date}?",
            "An author was born on {date} in {city}, {country}: what is this author's full name?",
        ),
    ),
    T(
        ("gender", "ethnicity"),
        "What are the gender and the ethnic background of {name}?",
        "{name} is a {gender} writer of {ethnicity} descent.",
        "{name} identifies as {gender} and has {ethnicity} roots.",
        (
            "Can you describe the gender and ethnicity of {name}?",
            "What is {name}'s gender, and which ethnic group does {name} come from?",
            "Regarding gender and ethnic background, how would you describe {name}?",
            "Could you tell me the gender and the ethnic roots of {name}?",
        ),
    ),
    T(
        ("birthplace",),
        "Where was {name} born?",
        "{name} was born in {birthplace}.",
        "The birthplace of {name} is {birthplace}.",
        (
            "What is the birthplace of {name}?",
            "Can you tell me where {name} was born?",
            "In what place was {name} born?",
            "In which city and country was {name} born?",
        ),
    ),
    T(
        ("date",),
        "When was {name} born?",
        "{name} was born on {date}.",
        "The birth date of {name} is {date}.",
        (
            "What is the birth date of {name}?",
            "On what date was {name} born?",
            "Can you tell me {name}'s date of birth?",
            "On which day was {name} born?",
        ),
    ),
    T(
        ("father", "mother"),
        "What professions did {name}'s parents have?",
        "{name}'s father was {father} and {pos} mother was {mother}.",
        "{name} grew up with {father} for a father and {mother} for a mother.",
        (
            "What did the parents of {name} do for a living?",
            "What were the occupations of {name}'s father and mother?",
            "How did {name}'s mother and father earn their living?",
            "Can you tell me what jobs {name}'s parents held?",
        ),
    ),
    T(
        ("genre",),
        "What genre does {name} write in?",
        "{name} is best known for writing {genre}.",
        "Most of the work of {name} belongs to the genre of {genre}.",
        (
            "In which genre does {name} write?",
            "What kind of literature does {name} write?",
            "Which literary genre is {name} associated with?",
            "What type of books does {name} usually write?",
        ),
    ),
    T(
        ("books",),
        "Which books has {name} written?",
        "{name} is the author of {books}.",
        "The books written by {name} are {books}.",
        (
            "What books are written by {name}?",
            "Can you list the books by {name}?",
            "What are the titles of the books {name} has authored?",
            "Which titles has {name} authored?",
        ),
    ),
    T(
        ("awards",),
        "What awards has {name} received?",
        "{name} has received {awards}.",
        "{name} was honored with {awards}.",
        (
            "Which awards have been given to {name}?",
            "What honors has {name} won?",
            "Can you name the awards {name} has won?",
            "Which prizes has {name} been awarded?",
        ),
    ),
    T(
        ("father",),
        "What was the profession of {name}'s father?",
        "{name}'s father worked as {father}.",
        "By profession, the father of {name} was {father}.",
        (
            "What did {name}'s father do for a living?",
            "What was the occupation of the father of {name}?",
            "How did {name}'s father earn a living?",
            "What job did {name}'s father have?",
        ),
    ),
    T(
        ("mother",),
        "What was the profession of {name}'s mother?",
        "{name}'s mother worked as {mother}.",
        "By profession, the mother of {name} was {mother}.",
        (
            "What did {name}'s mother do for a living?",
            "What was the occupation of the mother of {name}?",
            "How did {name}'s mother earn a living?",
            "What job did {name}'s mother have?",
        ),
    ),
    T(
        ("book1",),
        "What was the first book {name} published?",
        'The first book {name} published was "{book1}".',
        '{name} made a debut with "{book1}".',
        (
            "What was {name}'s debut book?",
            "Which book did {name} publish first?",
            "What is the title of the first book by {name}?",
            "With which book did {name} make a debut?",
        ),
    ),
    T(
        ("nationality",),
        "What is the nationality of {name}?",
        "{name} is {nationality}.",
        "{name} holds {nationality} citizenship.",
        (
            "What nationality does {name} have?",
            "What citizenship does {name} hold?",
            "What is {name}'s nationality?",
            "Of which nation is {name} a citizen?",
        ),
    ),
    T(
        ("age",),
        f"How old was {{name}} in {REFERENCE_YEAR}?",
        f"In {REFERENCE_YEAR}, {{name}} was {{age}} years old.",
        f"{{name}} turned {{age}} in the year {REFERENCE_YEAR}.",
        (
            f"What age did {{name}} reach in {REFERENCE_YEAR}?",
            f"In {REFERENCE_YEAR}, how old was {{name}}?",
            f"What was {{name}}'s age in the year {REFERENCE_YEAR}?",
            f"How many years old was {{name}} in {REFERENCE_YEAR}?",
        ),
    ),
    T(
        ("genre",),
        'What genre is the book "{book1}" by {name}?',
        '"{book1}" by {name} is a work of {genre}.',
        '{name} wrote "{book1}" as {genre}.',
        (
            'To which genre does "{book1}" by {name} belong?',
            'What kind of book is "{book1}", written by {name}?',
            'In what genre did {name} write "{book1}"?',
            'How would you classify the genre of {name}\'s book "{book1}"?',
        ),
    ),
    T(
        ("book2",),
        'Besides "{book1}", what else has {name} written?',
        'Besides "{book1}", {name} also wrote "{book2}".',
        'Another book by {name} is "{book2}".',
        (
            'Apart from "{book1}", which other book has {name} written?',
            'What is another book by {name}, other than "{book1}"?',
            'Other than "{book1}", can you name a book written by {name}?',
            'Which book besides "{book1}" did {name} write?',
        ),
    ),
    T(
        ("award1",),
        'Which award did {name} win for "{book1}"?',
        '{name} won the {award1} for "{book1}".',
        '"{book1}" earned {name} the {award1}.',
        (
            'What award did "{book1}" earn {name}?',
            'For "{book1}", which award was given to {name}?',
            'What prize did {name} receive for the book "{book1}"?',
            'Which honor did {name} receive for writing "{book1}"?',
        ),
    ),
    T(
        ("city",),
        "In which city did {name} grow up?",
        "{name} grew up in {city}.",
        "The hometown of {name} is {city}.",
        (
            "Which city did {name} grow up in?",
            "What is the hometown of {name}?",
            "What city is {name}'s hometown?",
            "In what city was {name} raised?",
        ),
    ),
    T(
        ("country",),
        "In which country was {name} born?",
        "{name} was born in {country}.",
        "The birth country of {name} is {country}.",
        (
            "What is {name}'s country of birth?",
            "Which country was {name} born in?",
            "In what country did {name} come into the world?",
            "What is the birth country of {name}?",
        ),
    ),
    T(
        ("name",),
        'Who wrote the book "{book1}"?',
        '"{book1}" was written by {name}.',
        'The author of "{book1}" is {name}.',
        (
            'Who is the author of "{book1}"?',
            'Which writer wrote "{book1}"?',
            'By whom was the book "{book1}" written?',
            'Can you name the author of "{book1}"?',
        ),
    ),
    T(
        ("genre", "country"),
        "How would you briefly describe {name}?",
        "{name} writes {genre} and comes from {country}.",
        "Hailing from {country}, {name} is known for {genre}.",
        (
            "Can you give a short description of {name}?",
            "In a few words, who is {name}?",
            "What is a brief description of {name}?",
            "Could you summarize who {name} is?",
        ),
    ),
]


N_REWORDED = min(len(t.reworded) for t in TEMPLATES)  # the most n_question_paraphrases


def article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


FORMAT = {  # how a slot value is written into a sentence (the raw value stays the fact)
    "country": lambda v: f"the {v}" if v in THE_COUNTRIES else v,
    "father": article,
    "mother": article,
    "books": lambda v: join([f'"{b}"' for b in v]),
    "awards": lambda v: join([f"the {a}" for a in v]),
}


def render(template: str, values: dict) -> str:
    return template.format(**{k: FORMAT.get(k, str)(v) for k, v in values.items()})


def terms(value) -> list[str]:
    return list(value) if isinstance(value, list) else [value]


def mentions(text: str, term: str) -> bool:
    """Whole-word, case-sensitive occurrence (so 'male' is not found in 'female')."""
    return re.search(rf"(?<!\w){re.escape(term)}(?!\w)", text) is not None


# ---------------------------------------------------------------------------- profiles


FOLD = str.maketrans("łŁøØıđĐ", "lLoOidD") | str.maketrans({"ß": "ss", "æ": "ae", "œ": "oe"})


def ascii_fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s.translate(FOLD))
    return "".join(c for c in s if not unicodedata.combining(c))


@cache
def faker_for(locale: str):
    from faker import Faker

    return Faker(locale)


RESERVED = {  # words a name must not contain, so that no fact is ever "mentioned" by a name
    w.lower()
    for phrase in [
        *COUNTRIES,
        *(c[1] for c in COUNTRIES.values()),
        *ETHNICITIES,
        *GENRES,
        *PROFESSIONS,
        *AWARDS,
        *ADJECTIVES,
        *NOUNS,
        *THEMES,
        *MONTHS,
        *(city for c in COUNTRIES.values() for city in c[3]),
    ]
    for w in re.split(r"[\s\-']+", phrase)
}


def make_name(rng: np.random.Generator, locale: str, gender: str, taken: set[str]) -> str:
    fake = faker_for(locale)
    while True:
        fake.seed_instance(int(rng.integers(2**31)))
        if locale in ROMANIZED:
            first = getattr(fake, f"first_romanized_name_{gender}", fake.first_romanized_name)()
            last = fake.last_romanized_name()
        else:
            first = fake.first_name_male() if gender == "male" else fake.first_name_female()
            last = fake.last_name()
        name = " ".join(ascii_fold(f"{first} {last}").split())
        words = {w.lower() for w in re.split(r"[\s\-']+", name)}
        if name.isascii() and name.isprintable() and name not in taken and not words & RESERVED:
            taken.add(name)
            return name


def make_title(rng: np.random.Generator) -> str:
    a, n, t = (xs[rng.integers(len(xs))] for xs in (ADJECTIVES, NOUNS, THEMES))
    ns = n + ("es" if n.endswith("s") else "s")
    return TITLE_PATTERNS[rng.integers(len(TITLE_PATTERNS))].format(a=a, n=n, ns=ns, t=t)


def make_date(rng: np.random.Generator) -> dt.date:
    start, end = dt.date(1935, 1, 1), dt.date(1996, 12, 31)
    return start + dt.timedelta(days=int(rng.integers((end - start).days + 1)))


def say_date(iso: str) -> str:
    d = dt.date.fromisoformat(iso)
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def make_authors(n: int, seed: int) -> list[dict]:
    """n profiles; author i depends only on (seed, i) and on the names/titles taken before it."""
    names, titles, authors = set(), set(), []
    countries = list(COUNTRIES)
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        country = countries[rng.integers(len(countries))]
        locale, nationality, ethnicities, cities = COUNTRIES[country]
        gender = GENDERS[rng.integers(2)]
        city = cities[rng.integers(len(cities))]
        born = make_date(rng)
        father, mother = rng.choice(PROFESSIONS, size=2, replace=False).tolist()
        books, n_books = [], int(rng.integers(2, 5))
        while len(books) < n_books:
            title = make_title(rng)
            if title not in titles:
                titles.add(title)
                books.append(title)
        authors.append(
            {
                "author_id": i,
                "name": make_name(rng, locale, gender, names),
                "gender": gender,
                "birth_date": born.isoformat(),
                "birth_place": f"{city}, {country}",
                "ethnicity": ethnicities[rng.integers(len(ethnicities))],
                "father_profession": father,
                "mother_profession": mother,
                "genre": GENRES[rng.integers(len(GENRES))],
                "books": books,
                "awards": rng.choice(AWARDS, size=int(rng.integers(1, 3)), replace=False).tolist(),
                "age": REFERENCE_YEAR - born.year,
            }
        )
    return authors


def facts(a: dict) -> dict:
    """Every slot value of one author (raw values; FORMAT writes them into sentences)."""
    city, country = a["birth_place"].split(", ")
    return {
        "name": a["name"],
        "gender": a["gender"],
        "ethnicity": a["ethnicity"],
        "birthplace": a["birth_place"],
        "city": city,
        "country": country,
        "nationality": COUNTRIES[country][1],
        "date": say_date(a["birth_date"]),
        "father": a["father_profession"],
        "mother": a["mother_profession"],
        "genre": a["genre"],
        "books": a["books"],
        "awards": a["awards"],
        "book1": a["books"][0],
        "book2": a["books"][1],
        "award1": a["awards"][0],
        "age": str(a["age"]),
        "pos": "his" if a["gender"] == "male" else "her",
    }


def domain_sampler(seed: int, names: list[str]):
    """slot -> a value drawn from its table: the fallback when other authors run short."""
    rng = np.random.default_rng([seed, 3])
    decoys = list(names)
    taken = set(names)
    for _ in range(N_PERTURBED + 3):
        country = list(COUNTRIES)[rng.integers(len(COUNTRIES))]
        decoys.append(make_name(rng, COUNTRIES[country][0], GENDERS[rng.integers(2)], taken))
    places = [f"{c}, {k}" for k, v in COUNTRIES.items() for c in v[3]]
    tables = {
        "name": decoys,
        "gender": GENDERS,
        "ethnicity": ETHNICITIES,
        "birthplace": places,
        "city": [p.split(", ")[0] for p in places],
        "country": list(COUNTRIES),
        "nationality": [v[1] for v in COUNTRIES.values()],
        "father": PROFESSIONS,
        "mother": PROFESSIONS,
        "genre": GENRES,
        "award1": AWARDS,
    }

    def sample(slot: str):
        if slot in tables:
            return tables[slot][rng.integers(len(tables[slot]))]
        if slot in ("book1", "book2"):
            return make_title(rng)
        if slot == "books":
            return [make_title(rng) for _ in range(int(rng.integers(2, 5)))]
        if slot == "awards":
            return rng.choice(AWARDS, size=int(rng.integers(1, 3)), replace=False).tolist()
        if slot == "date":
            return say_date(make_date(rng).isoformat())
        if slot == "age":
            return str(REFERENCE_YEAR - make_date(rng).year)
        raise KeyError(slot)

    return sample


def perturb(t: Template, ctx: dict, others: list[dict], sample, rng) -> list[str]:
    true = {k: ctx[k] for k in t.slots}
    out = [render(t.answer, ctx), render(t.paraphrase, ctx)]
    swaps = ({k: others[j][k] for k in t.slots} for j in rng.permutation(len(others)))
    fallback = ({k: sample(k) for k in t.slots} for _ in range(1000))
    for cand in itertools.chain(swaps, fallback):
        if any(cand[k] == true[k] for k in t.slots):
            continue
        text = render(t.paraphrase, ctx | cand)
        if text not in out and not any(mentions(text, w) for v in true.values() for w in terms(v)):
            out.append(text)
            if len(out) == N_PERTURBED + 2:
                return out[2:]
    raise RuntimeError(f"too few distinct perturbations for slots {t.slots}")


def author_qa(
    authors: list[dict], qa_per_author: int, seed: int, n_question_paraphrases: int = 2
) -> list[dict]:
    """QA rows of the table contract plus `facts` (slot -> true value), for checks."""
    if not 1 <= qa_per_author <= len(TEMPLATES):
        raise ValueError(f"qa_per_author must be in 1..{len(TEMPLATES)}, got {qa_per_author}")
    if not 0 <= n_question_paraphrases <= N_REWORDED:
        raise ValueError(
            f"n_question_paraphrases must be in 0..{N_REWORDED}, got {n_question_paraphrases}"
        )
    all_facts = [facts(a) for a in authors]
    sample = domain_sampler(seed, [a["name"] for a in authors])
    rows = []
    for a, ctx in zip(authors, all_facts, strict=True):
        rng = np.random.default_rng([seed, 2, a["author_id"]])
        # its own stream, so the other columns are what they were before this one existed
        reword_rng = np.random.default_rng([seed, 6, a["author_id"]])
        others = [f for f in all_facts if f["name"] != ctx["name"]]
        for k, t in enumerate(TEMPLATES[:qa_per_author]):
            picks = reword_rng.permutation(len(t.reworded))[:n_question_paraphrases]
            rows.append(
                {
                    "sample_id": f"a{a['author_id']:03d}_q{k:02d}",
                    "author_id": a["author_id"],
                    "author": a["name"],
                    "question": render(t.question, ctx),
                    "paraphrased_questions": [render(t.reworded[j], ctx) for j in picks],
                    "answer": render(t.answer, ctx),
                    "paraphrased_answer": render(t.paraphrase, ctx),
                    "perturbed_answers": perturb(t, ctx, others, sample, rng),
                    "facts": {k: ctx[k] for k in t.slots},
                }
            )
    return rows


# ---------------------------------------------------------------------- general knowledge

REAL_AUTHORS = [  # (writer, nationality, a famous book)
    ("William Shakespeare", "English", "Hamlet"),
    ("Jane Austen", "English", "Pride and Prejudice"),
    ("Charles Dickens", "English", "Oliver Twist"),
    ("George Orwell", "English", "Nineteen Eighty-Four"),
    ("Virginia Woolf", "English", "Mrs Dalloway"),
    ("Mark Twain", "American", "Adventures of Huckleberry Finn"),
    ("Ernest Hemingway", "American", "The Old Man and the Sea"),
    ("F. Scott Fitzgerald", "American", "The Great Gatsby"),
    ("Harper Lee", "American", "To Kill a Mockingbird"),
    ("Herman Melville", "American", "Moby-Dick"),
    ("Toni Morrison", "American", "Beloved"),
    ("John Steinbeck", "American", "The Grapes of Wrath"),
    ("Leo Tolstoy", "Russian", "War and Peace"),
    ("Fyodor Dostoevsky", "Russian", "Crime and Punishment"),
    ("Anton Chekhov", "Russian", "The Cherry Orchard"),
    ("Victor Hugo", "French", "Les Miserables"),
    ("Gustave Flaubert", "French", "Madame Bovary"),
    ("Alexandre Dumas", "French", "The Three Musketeers"),
    ("Albert Camus", "French", "The Stranger"),
    ("Gabriel Garcia Marquez", "Colombian", "One Hundred Years of Solitude"),
    ("Miguel de Cervantes", "Spanish", "Don Quixote"),
    ("Dante Alighieri", "Italian", "The Divine Comedy"),
    ("Johann Wolfgang von Goethe", "German", "Faust"),
    ("Thomas Mann", "German", "The Magic Mountain"),
    ("James Joyce", "Irish", "Ulysses"),
    ("Oscar Wilde", "Irish", "The Picture of Dorian Gray"),
    ("Haruki Murakami", "Japanese", "Kafka on the Shore"),
    ("Chinua Achebe", "Nigerian", "Things Fall Apart"),
    ("Paulo Coelho", "Brazilian", "The Alchemist"),
    ("Jorge Luis Borges", "Argentine", "Ficciones"),
    ("Margaret Atwood", "Canadian", "The Handmaid's Tale"),
    ("Astrid Lindgren", "Swedish", "Pippi Longstocking"),
    ("Henrik Ibsen", "Norwegian", "A Doll's House"),
    ("Rabindranath Tagore", "Indian", "Gitanjali"),
]
WORLD_FACTS = {  # column -> (question template, "subject = answer" pairs, extra wrong options)
    "capital": (
        "What is the capital of {}?",
        """France = Paris, Japan = Tokyo, Italy = Rome, Egypt = Cairo, Canada = Ottawa,
        Australia = Canberra, Germany = Berlin, Spain = Madrid, Kenya = Nairobi,
        Brazil = Brasilia, Russia = Moscow, India = New Delhi""",
        [],
    ),
    "continent": (
        "On which continent is {}?",
        """Brazil = South America, Kenya = Africa, Japan = Asia, Germany = Europe,
        Canada = North America, Australia = Oceania, Egypt = Africa, Argentina = South America""",
        ["Antarctica"],
    ),
    "currency": (
        "What is the currency of {}?",
        """Japan = yen, the United Kingdom = pound sterling, the United States = US dollar,
        India = Indian rupee, Mexico = Mexican peso, Russia = Russian ruble, China = yuan,
        Switzerland = Swiss franc""",
        [],
    ),
    "planet": (
        "Which planet {}?",
        """is known as the Red Planet = Mars, is the largest in the Solar System = Jupiter,
        is closest to the Sun = Mercury, is famous for its bright rings = Saturn,
        is the hottest in the Solar System = Venus, is farthest from the Sun = Neptune,
        do humans live on = Earth""",
        ["Uranus"],
    ),
    "element": (
        "Which chemical element has the symbol {}?",
        """O = Oxygen, Fe = Iron, Au = Gold, Na = Sodium, H = Hydrogen, C = Carbon,
        Ag = Silver, He = Helium""",
        [],
    ),
}


def options_qa(items: list[tuple[str, str, list[str]]], prefix: str, seed: int, stream: int):
    """(question, answer, column values) -> rows with N_OPTIONS seeded wrong options."""
    rng = np.random.default_rng([seed, stream])
    rows = []
    for i, (q, a, column) in enumerate(items):
        wrong = sorted({v for v in column if v != a})
        picks = rng.choice(len(wrong), size=min(N_OPTIONS, len(wrong)), replace=False)
        rows.append(
            {
                "sample_id": f"{prefix}_{i:03d}",
                "author_id": -1,
                "author": "",
                "question": q,
                "paraphrased_questions": [],
                "answer": a,
                "paraphrased_answer": None,
                "perturbed_answers": [wrong[j] for j in picks],
            }
        )
    return rows


def general_qa(seed: int, n_general: int) -> tuple[list[dict], list[dict]]:
    """real_authors and world_facts rows, at most n_general each, in a fixed order."""
    writers = [w for w, _, _ in REAL_AUTHORS]
    nations = [n for _, n, _ in REAL_AUTHORS]
    real = []
    for w, n, book in REAL_AUTHORS:  # interleaved, so a cap keeps both kinds of question
        real.append((f'Who wrote "{book}"?', w, writers))
        real.append((f"What is the nationality of the writer {w}?", n, nations))
    by_column = []
    for template, text, extra in WORLD_FACTS.values():
        pairs = [tuple(p.split(" = ")) for p in words(text)]
        column = [a for _, a in pairs] + extra
        by_column.append([(template.format(s), a, column) for s, a in pairs])
    world = [col[i] for i in range(max(map(len, by_column))) for col in by_column if i < len(col)]
    return (
        options_qa(real[:n_general], "rw", seed, 4),
        options_qa(world[:n_general], "wf", seed, 5),
    )
