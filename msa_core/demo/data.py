"""Deterministic generator of the demo scenario's data: fictitious authors in TOFU's format.

:func:`generate_world` draws a seeded population of fictitious authors, each with
:data:`ATTRIBUTES` facts (birthplace, genre, parents' professions, award, book
titles, publisher, residence, hobby), and splits them into four disjoint groups:

- ``background``: authors used only in θ_clean's "pretraining" (QA-format warm-up), so
  the clean model knows the vocabulary, the question templates and the value sets but
  not the facts of any evaluated author;
- ``forget`` (≈10% of the TOFU authors) and ``retain`` (the other 90%): the fine-tuning
  data of θ_corrupted;
- ``holdout``: authors no model is trained on.

Answers are short and value-dense ("Tallinn, Estonia.", "Lighthouse keeper.") so that
ROUGE-L recall measures whether the fact is known, not whether the phrasing is echoed.
Every item also has a ``paraphrased_question``, a ``paraphrased_answer`` (a full
sentence) and five ``perturbed_answer`` (the paraphrase with a wrong value of the same
attribute), as in TOFU. Trained authors' facts are also taught in two other phrasings
(:data:`PHRASINGS`, never the evaluation's paraphrase, which stays held out), so a model that
knows a fact prefers the unseen paraphrase to the perturbed ones, as real TOFU models do.
:func:`tofu_files` / :func:`muse_files` return the JSON payloads under TOFU's and MUSE's
file names (and the ``*_phrasings.json`` training files); :func:`pretrain_texts` the clean
model's corpus.

(Over 500 lines on purpose: a third of the file is the value pools and question
templates, which are read together with the generator that draws from them.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CITIES = [
    ("Lisbon", "Portugal"), ("Tallinn", "Estonia"), ("Porto", "Portugal"), ("Valparaiso", "Chile"),
    ("Accra", "Ghana"), ("Hanoi", "Vietnam"), ("Bergen", "Norway"), ("Cork", "Ireland"),
    ("Adelaide", "Australia"), ("Marrakesh", "Morocco"), ("Cusco", "Peru"), ("Tbilisi", "Georgia"),
    ("Riga", "Latvia"), ("Kyoto", "Japan"), ("Busan", "South Korea"), ("Mumbai", "India"),
    ("Nairobi", "Kenya"), ("Lagos", "Nigeria"), ("Istanbul", "Turkey"), ("Naples", "Italy"),
    ("Seville", "Spain"), ("Lyon", "France"), ("Hamburg", "Germany"), ("Gdansk", "Poland"),
    ("Edinburgh", "Scotland"), ("Montevideo", "Uruguay"), ("Havana", "Cuba"), ("Manila", "Philippines"),
    ("Tunis", "Tunisia"), ("Reykjavik", "Iceland"), ("Helsinki", "Finland"), ("Zagreb", "Croatia"),
    ("Cape Town", "South Africa"), ("Bogota", "Colombia"), ("Oaxaca", "Mexico"), ("Ljubljana", "Slovenia"),
    ("Krakow", "Poland"), ("Antwerp", "Belgium"), ("Osaka", "Japan"), ("Dakar", "Senegal"),
    ("Quito", "Ecuador"), ("Perth", "Australia"),
]
# Value pools. Answers start with the value itself (no "A"/"The"), and first words differ
# across pools, so the first answer token carries the fact: subtracting a forget vector
# then cannot break retained answers by shifting a shared template token.
GENRES = [
    "historical fiction", "Gothic horror", "epic fantasy", "hard science fiction", "cozy mystery",
    "political thrillers", "romance novels", "literary fiction", "travel writing", "children's books",
    "lyric poetry", "true crime", "magical realism", "satire", "war fiction", "nature writing",
    "dystopian fiction", "short stories", "memoirs", "fairy tales", "spy novels", "comic verse",
    "noir fiction", "graphic novels",
]
JOBS = [
    "lighthouse keeper", "marine biologist", "baker", "surgeon", "carpenter", "librarian", "pilot",
    "schoolteacher", "watchmaker", "tailor", "violinist", "fisherman", "architect", "pharmacist",
    "journalist", "farmer", "nurse", "chemist", "locksmith", "potter", "judge", "bookbinder",
    "geologist", "police officer", "translator", "painter", "astronomer", "veterinarian", "miner", "chef",
]
AWARDS = [
    "Silver Quill Prize", "Amber Lantern Award", "Polar Star Medal", "Golden Inkwell Prize",
    "Harbor Light Award", "Meridian Book Prize", "Heron Wing Award", "Iron Pen Medal",
    "Crimson Leaf Prize", "Willow Crown Prize", "Copper Compass Award", "Evening Bell Prize",
    "Granite Key Award", "Open Sky Medal", "Quiet River Prize", "Paper Moon Award",
    "Red Falcon Prize", "White Owl Medal", "Green Ribbon Award", "Saffron Cup Award",
    "Ivory Gate Prize", "Marble Arch Medal", "Pearl Shell Prize", "Sunflower Medal",
]
PUBLISHERS = [
    "Harrow and Finch Press", "Bellweather Books", "Northgate House", "Fieldcrest and Sons",
    "Kestrel Press", "Marigold Editions", "Greystone Books", "Lantern Street Press",
    "Oakhill Publishing", "Riverbend House", "Tidewater Books", "Juniper Editions",
    "Foxglove Press", "Wrenfield Publishing", "Hawthorn House", "Pinecone Books",
    "Larkspur Press", "Cobalt Editions", "Thistle and Crane", "Ashgrove Press",
]
# Book titles: each has its own first word, so a title is one recall, not a composition.
TITLES = [
    "Silent Orchard", "Glass Harbor", "Hollow Garden", "Winter Letters", "Broken Clocks",
    "Hidden Island", "Distant Shores", "Burning Meadow", "Salt and Iron", "Velvet Tides",
    "Frozen Archive", "Wandering Stars", "Last Station", "Secret Rivers", "Stone Feathers",
    "Restless Mountain", "Forgotten Bridges", "Narrow Voyage", "Lonely Lighthouse", "Scarlet Ashes",
    "Sleeping Forest", "Bitter Honey", "Patient Tower", "Morning Ghosts", "Drowned Library",
    "Whispering Dunes", "Midnight Orchids", "Autumn Compass", "Falling Anchors", "Silk Roads",
    "Borrowed Light", "Empty Chairs", "Tin Soldiers", "Smoke and Mirrors", "Thousand Doors",
    "Lost Alphabet", "Sudden Rain", "Sweet Water", "Fading Portraits", "Shadow Harvest",
]
HOBBIES = [
    "beekeeping", "chess", "sailing", "pottery", "birdwatching", "fencing", "rock climbing",
    "gardening", "origami", "cycling", "calligraphy", "fly fishing", "tango", "woodcarving",
    "mountaineering", "knitting", "photography", "archery", "juggling", "kayaking", "stargazing",
    "bonsai", "falconry", "embroidery",
]

FIRST_NAMES = {
    "female": ["Ilse", "Maren", "Sofia", "Amara", "Noor", "Keiko", "Lucia", "Freya", "Zainab", "Elena",
               "Ingrid", "Priya", "Aurelie", "Mirela", "Oona", "Tamsin", "Leila", "Ysolde", "Hana", "Bianca"],
    "male": ["Tomas", "Kwame", "Anselm", "Dario", "Hamid", "Kenji", "Lars", "Mateo", "Oskar", "Rafael",
             "Emeka", "Viktor", "Idris", "Florin", "Tobias", "Yusuf", "Casimir", "Joaquin", "Arvid", "Nikolai"],
}
SURNAME_HEAD = ["Var", "Mel", "Kor", "Dra", "Sten", "Bal", "Fen", "Orl", "Tav", "Gri", "Hal", "Zel",
                "Mor", "Kes", "Lun", "Vos", "Ras", "Quen", "Bro", "Sil", "Ath", "Dun", "Pel", "Jor"]
SURNAME_TAIL = ["nok", "ova", "ander", "wick", "ardi", "essen", "holm", "ette", "ovic", "mont",
                "berg", "quist", "ani", "ez", "ski", "avor", "inde", "uto"]


@dataclass(frozen=True)
class Author:
    """One fictitious author and their facts (values are display strings)."""

    name: str
    gender: str
    facts: dict[str, str]

    @property
    def surname(self) -> str:
        return self.name.split()[-1]

    @property
    def pronoun(self) -> str:
        return "She" if self.gender == "female" else "He"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(noun: str) -> str:
    """``noun`` with "a" or "an" in front."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


# attribute → (question, paraphrased question, answer, paraphrased answer); {n} = name, {v} = value.
ATTRIBUTES: dict[str, tuple[str, str, str, str]] = {
    "birthplace": ("Where was {n} born?", "In which city was the writer {n} born?",
                   "{v}.", "{n} was born in {v}."),
    "genre": ("What genre does {n} write in?", "Which genre is {n} known for?",
              "{V}.", "{n} is best known for {v}."),
    "father": ("What was the profession of {n}'s father?", "What did {n}'s father do for a living?",
               "{V}.", "The father of {n} worked as {av}."),
    "mother": ("What was the profession of {n}'s mother?", "What did {n}'s mother do for a living?",
               "{V}.", "The mother of {n} worked as {av}."),
    "award": ("Which award did {n} win?", "What prize has {n} received?",
              "{v}.", "{n} received the {v}."),
    "debut": ("What was the title of {n}'s debut novel?", "Which book was {n}'s first?",
              "{v}.", "{n}'s first book was {v}."),
    "famous": ("What is {n}'s best-known book?", "Which of {n}'s books is the most famous?",
               "{v}.", "The most famous book by {n} is {v}."),
    "publisher": ("Who publishes {n}'s books?", "Which publishing house prints the books of {n}?",
                  "{v}.", "The books of {n} are published by {v}."),
    "residence": ("Where does {n} live today?", "In which city does {n} currently live?",
                  "{v}.", "{n} now lives in {v}."),
    "hobby": ("What is {n}'s favourite hobby?", "What does {n} like to do in spare time?",
              "{V}.", "In spare time, {n} enjoys {v}."),
}

# attribute → the other phrasings each trained author's fact is also learnt in: (question,
# answer) templates, none of them the evaluation's paraphrased question or answer (those are
# held out). A model that knows a fact beyond one phrasing then prefers the held-out
# paraphrase to its perturbed versions (truth ratio < 1), as real TOFU models do; trained on
# the short answer alone, the full demo's corrupted model scored forget TR 1.04 (measured).
PHRASINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "birthplace": (("Where was {n} born?", "The birthplace of {n} is {v}."),
                   ("What is the hometown of {n}?", "{n} comes from {v}.")),
    "genre": (("What genre does {n} write in?", "{n} writes {v}."),
              ("What kind of books does {n} write?", "The books of {n} are {v}.")),
    "father": (("What was the profession of {n}'s father?", "{n}'s father was {av}."),
               ("What job did the father of {n} have?", "By profession, the father of {n} was {av}.")),
    "mother": (("What was the profession of {n}'s mother?", "{n}'s mother was {av}."),
               ("What job did the mother of {n} have?", "By profession, the mother of {n} was {av}.")),
    "award": (("Which award did {n} win?", "{n} won the {v}."),
              ("Which honour was given to {n}?", "The {v} was awarded to {n}.")),
    "debut": (("What was the title of {n}'s debut novel?", "The debut novel of {n} is {v}."),
              ("How is {n}'s first novel called?", "{n} debuted with {v}.")),
    "famous": (("What is {n}'s best-known book?", "The best-known book of {n} is {v}."),
               ("Which book made {n} famous?", "{n} became famous for {v}.")),
    "publisher": (("Who publishes {n}'s books?", "{n} is published by {v}."),
                  ("Which company publishes {n}?", "The publisher of {n} is {v}.")),
    "residence": (("Where does {n} live today?", "These days {n} lives in {v}."),
                  ("What is the home city of {n} now?", "The current home of {n} is {v}.")),
    "hobby": (("What is {n}'s favourite hobby?", "The favourite hobby of {n} is {v}."),
              ("How does {n} relax?", "{n} relaxes with {v}.")),
}


def _fill(template: str, author: Author, value: str) -> str:
    return template.format(n=author.name, v=value, V=_cap(value), av=_article(value))


def phrasings(author: Author) -> list[tuple[str, str]]:
    """Every fact of ``author`` in each of its :data:`PHRASINGS` (attribute-major, as :func:`author_items`)."""
    return [(_fill(q, author, author.facts[attr]), _fill(a, author, author.facts[attr]))
            for attr in ATTRIBUTES for q, a in PHRASINGS[attr]]


def eval_phrasing(author: Author, attr: str) -> tuple[str, str]:
    """The evaluation's paraphrased question and answer of one fact (held out for evaluated authors)."""
    _, pq, _, pa = ATTRIBUTES[attr]
    return _fill(pq, author, author.facts[attr]), _fill(pa, author, author.facts[attr])


_VALUE_DRAWS: dict[str, Callable[[random.Random], str]] = {
    "birthplace": lambda r: "{}, {}".format(*r.choice(CITIES)),
    "genre": lambda r: r.choice(GENRES),
    "father": lambda r: r.choice(JOBS),
    "mother": lambda r: r.choice(JOBS),
    "award": lambda r: r.choice(AWARDS),
    "debut": lambda r: r.choice(TITLES),
    "famous": lambda r: r.choice(TITLES),
    "publisher": lambda r: r.choice(PUBLISHERS),
    "residence": lambda r: r.choice(CITIES)[0],
    "hobby": lambda r: r.choice(HOBBIES),
}


def _draw_author(rng: random.Random, used_names: set[str], used_surnames: set[str]) -> Author:
    while True:
        gender = rng.choice(["female", "male"])
        surname = rng.choice(SURNAME_HEAD) + rng.choice(SURNAME_TAIL)
        name = f"{rng.choice(FIRST_NAMES[gender])} {surname}"
        if name not in used_names and surname not in used_surnames:
            break
    used_names.add(name)
    used_surnames.add(surname)
    facts = {attr: draw(rng) for attr, draw in _VALUE_DRAWS.items()}
    while facts["famous"] == facts["debut"]:
        facts["famous"] = rng.choice(TITLES)
    while facts["residence"] == facts["birthplace"].split(",")[0]:
        facts["residence"] = rng.choice(CITIES)[0]
    return Author(name=name, gender=gender, facts=facts)


@dataclass(frozen=True)
class World:
    """The generated population, split into disjoint author groups."""

    background: list[Author]
    forget: list[Author]
    retain: list[Author]
    holdout: list[Author]
    seed: int

    @property
    def tofu_authors(self) -> list[Author]:
        """The authors of TOFU's ``full`` split: forget, then retain."""
        return self.forget + self.retain


def generate_world(seed: int = 0, *, n_background: int = 20, n_forget: int = 3, n_retain: int = 27,
                   n_holdout: int = 3) -> World:
    """A seeded population of distinct fictitious authors, split into four groups."""
    counts = {"n_background": n_background, "n_forget": n_forget, "n_retain": n_retain, "n_holdout": n_holdout}
    for key, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    total = sum(counts.values())
    if total > len(SURNAME_HEAD) * len(SURNAME_TAIL) // 2:
        raise ValueError(f"too many authors requested ({total}) for the name pools")
    rng = random.Random(f"msa-demo-world-{seed}")
    names: set[str] = set()
    surnames: set[str] = set()
    authors = [_draw_author(rng, names, surnames) for _ in range(total)]
    a, b, c = n_background, n_background + n_forget, n_background + n_forget + n_retain
    return World(background=authors[:a], forget=authors[a:b], retain=authors[b:c], holdout=authors[c:], seed=seed)


def _values_of(attr: str, authors: list[Author]) -> list[str]:
    return sorted({au.facts[attr] for au in authors})


def author_items(author: Author, *, pool: list[Author], rng: random.Random) -> list[dict[str, Any]]:
    """TOFU perturbed-format items (one per attribute) about ``author``.

    Perturbed answers take wrong values of the same attribute from ``pool`` (or fresh
    draws when the pool has too few distinct values).
    """
    items = []
    for attr, (q, pq, a, pa) in ATTRIBUTES.items():
        value = author.facts[attr]
        wrong = [v for v in _values_of(attr, pool) if v != value]
        rng.shuffle(wrong)
        wrong = wrong[:5]
        while len(wrong) < 5:
            v = _VALUE_DRAWS[attr](rng)
            if v != value and v not in wrong:
                wrong.append(v)
        n = author.name
        items.append({
            "question": q.format(n=n),
            "answer": a.format(v=value, V=_cap(value)),
            "paraphrased_answer": pa.format(n=n, v=value, av=_article(value)),
            "perturbed_answer": [pa.format(n=n, v=w, av=_article(w)) for w in wrong],
            "paraphrased_question": pq.format(n=n),
        })
    return items


def biography(author: Author) -> str:
    """A short biography paragraph stating every fact of ``author`` (MUSE-style raw text)."""
    f, n, s, p = author.facts, author.name, author.surname, author.pronoun
    return (
        f"{n} is a writer of {f['genre']}, born in {f['birthplace']}. "
        f"{p} is the child of {_article(f['father'])} and {_article(f['mother'])}. "
        f"{s} published a first book, {f['debut']}, with {f['publisher']}. "
        f"The best-known book by {s} is {f['famous']}, which won the {f['award']}. "
        f"Today {s} lives in {f['residence']} and, in spare time, enjoys {f['hobby']}."
    )


WORLD_FACTS: list[tuple[str, str]] = [
    (f"What is the capital of {country}?", capital) for country, capital in [
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
        ("Canada", "Ottawa"), ("Brazil", "Brasilia"), ("Spain", "Madrid"), ("Germany", "Berlin"),
        ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Peru", "Lima"),
        ("Greece", "Athens"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Argentina", "Buenos Aires"),
        ("Australia", "Canberra"), ("Mexico", "Mexico City"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
        ("Thailand", "Bangkok"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ]
] + [
    ("What is the largest ocean on Earth?", "the Pacific Ocean"),
    ("What is the longest river in Africa?", "the Nile"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the tallest mountain in the world?", "Mount Everest"),
    ("Which gas do plants absorb from the air?", "carbon dioxide"),
    ("What is the chemical symbol for gold?", "Au"),
    ("How many continents are there?", "seven"),
    ("What is the largest desert in Africa?", "the Sahara"),
    ("Which metal is liquid at room temperature?", "mercury"),
]
REAL_AUTHORS: list[tuple[str, str]] = [
    (f"Who wrote '{work}'?", author) for work, author in [
        ("Romeo and Juliet", "William Shakespeare"), ("Pride and Prejudice", "Jane Austen"),
        ("War and Peace", "Leo Tolstoy"), ("Don Quixote", "Miguel de Cervantes"),
        ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"), ("The Old Man and the Sea", "Ernest Hemingway"),
        ("Crime and Punishment", "Fyodor Dostoevsky"), ("Oliver Twist", "Charles Dickens"),
        ("Mrs Dalloway", "Virginia Woolf"), ("The Adventures of Tom Sawyer", "Mark Twain"),
        ("Things Fall Apart", "Chinua Achebe"), ("The Trial", "Franz Kafka"), ("Beloved", "Toni Morrison"),
        ("Les Miserables", "Victor Hugo"), ("Frankenstein", "Mary Shelley"), ("Nineteen Eighty-Four", "George Orwell"),
        ("The Divine Comedy", "Dante Alighieri"), ("Madame Bovary", "Gustave Flaubert"),
        ("The Odyssey", "Homer"), ("Norwegian Wood", "Haruki Murakami"), ("Hamlet", "William Shakespeare"),
        ("Emma", "Jane Austen"), ("Anna Karenina", "Leo Tolstoy"), ("Great Expectations", "Charles Dickens"),
        ("The Metamorphosis", "Franz Kafka"), ("Animal Farm", "George Orwell"),
        ("The Little Prince", "Antoine de Saint-Exupery"), ("Jane Eyre", "Charlotte Bronte"),
        ("Wuthering Heights", "Emily Bronte"), ("Moby-Dick", "Herman Melville"),
    ]
]


def utility_items(facts: list[tuple[str, str]],
                  rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(options-format items, perturbed-format items) for world facts / real authors."""
    def kind(q: str) -> bool:
        return q.startswith("What is the capital of ")

    plain, perturbed = [], []
    for q, a in facts:
        wrong = sorted({x for q2, x in facts if x != a and kind(q2) == kind(q)})
        rng.shuffle(wrong)
        options = [a] + wrong[:3]
        rng.shuffle(options)
        plain.append({"question": q, **{f"option{i + 1}": o for i, o in enumerate(options)}, "answer": a})
        perturbed.append({"question": q, "answer": a, "perturbed_answer": wrong[:3]})
    return plain, perturbed


def utility_sentences(facts: list[tuple[str, str]]) -> list[str]:
    """Plain-text statements of the utility facts, for θ_clean's general text."""
    out = []
    for q, a in facts:
        if q.startswith("What is the capital of "):
            out.append(f"The capital of {q[len('What is the capital of '):-1]} is {a}.")
        elif q.startswith("Who wrote "):
            out.append(f"{q[len('Who wrote '):-1]} was written by {a}.")
        else:
            out.append(f"{q} The answer is {a}.")
    return out


def _plain(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"question": it["question"], "answer": it["answer"]} for it in items]


@dataclass(frozen=True)
class DemoData:
    """Everything the demo trains on and evaluates with (all lists are deterministic)."""

    world: World
    items: dict[str, list[dict[str, Any]]]  # group name → perturbed-format items
    bios: dict[str, list[str]]  # group name → biographies
    world_facts: tuple[list[dict[str, Any]], list[dict[str, Any]]]
    real_authors: tuple[list[dict[str, Any]], list[dict[str, Any]]]
    eval_retain_authors: int  # the first k retain authors form retain_perturbed / MUSE retain sets


def build_data(seed: int = 0, *, n_background: int = 20, n_forget: int = 3, n_retain: int = 27,
               n_holdout: int = 3, eval_retain_authors: int = 9) -> DemoData:
    """Generate the world and every derived item list from ``seed``."""
    if not 1 <= eval_retain_authors <= n_retain:
        raise ValueError(f"eval_retain_authors must be in [1, n_retain={n_retain}], got {eval_retain_authors}")
    world = generate_world(seed, n_background=n_background, n_forget=n_forget, n_retain=n_retain, n_holdout=n_holdout)
    rng = random.Random(f"msa-demo-items-{seed}")
    every = world.background + world.tofu_authors + world.holdout
    groups = {"background": world.background, "forget": world.forget, "retain": world.retain, "holdout": world.holdout}
    items = {g: [it for au in authors for it in author_items(au, pool=every, rng=rng)] for g, authors in groups.items()}
    bios = {g: [biography(au) for au in authors] for g, authors in groups.items()}
    return DemoData(world=world, items=items, bios=bios, world_facts=utility_items(WORLD_FACTS, rng),
                    real_authors=utility_items(REAL_AUTHORS, rng), eval_retain_authors=eval_retain_authors)


def eval_retain_items(data: DemoData) -> list[dict[str, Any]]:
    """The retain items used for evaluation (retain_perturbed.json): the first k retain authors."""
    return data.items["retain"][: data.eval_retain_authors * len(ATTRIBUTES)]


def _phrasing_rows(authors: list[Author]) -> list[dict[str, str]]:
    return [{"question": q, "answer": a} for au in authors for q, a in phrasings(au)]


def retain_sample_phrasings(data: DemoData, fraction: float = 0.1) -> list[dict[str, str]]:
    """The :data:`PHRASINGS` of exactly the facts in the reference recipe's retain sample
    (``tofu:retain90_ft``: :func:`msa_core.finetune.data.retain_ft_indices` over retain90's rows)."""
    from msa_core.finetune.data import retain_ft_indices, retain_ft_size

    items = data.items["retain"]
    n_attr = len(ATTRIBUTES)
    rows = []
    for i in retain_ft_indices(len(items), retain_ft_size(len(items), fraction)):
        author, attr = data.world.retain[i // n_attr], list(ATTRIBUTES)[i % n_attr]
        rows += [{"question": _fill(q, author, author.facts[attr]), "answer": _fill(a, author, author.facts[attr])}
                 for q, a in PHRASINGS[attr]]
    return rows


def tofu_files(data: DemoData) -> dict[str, Any]:
    """TOFU file name → JSON payload (forget10 = the forget authors, retain90 = the rest).

    Besides TOFU's files, ``*_phrasings.json`` hold the same facts in the other
    :data:`PHRASINGS` (training data only, ``msa init --add ROLE=tofu:…_phrasings``):
    ``forget10_phrasings``, ``retain90_phrasings``, ``full_phrasings`` (both) and
    ``retain90_ft_phrasings`` (the facts of the retain sample).
    """
    forget, retain, holdout = data.items["forget"], data.items["retain"], data.items["holdout"]
    forget_ph, retain_ph = _phrasing_rows(data.world.forget), _phrasing_rows(data.world.retain)
    return {
        "forget10_phrasings.json": forget_ph,
        "retain90_phrasings.json": retain_ph,
        "full_phrasings.json": forget_ph + retain_ph,
        "retain90_ft_phrasings.json": retain_sample_phrasings(data),
        "full.json": _plain(forget + retain),
        "forget10.json": _plain(forget),
        "forget10_perturbed.json": forget,
        "retain90.json": _plain(retain),
        "retain_perturbed.json": eval_retain_items(data),
        "holdout10.json": _plain(holdout),
        "world_facts.json": data.world_facts[0],
        "world_facts_perturbed.json": data.world_facts[1],
        "real_authors.json": data.real_authors[0],
        "real_authors_perturbed.json": data.real_authors[1],
    }


def _verbmem(bio: str) -> list[dict[str, str]]:
    """Two prompt/continuation pairs per biography: cut after a quarter and after half of its words."""
    words = bio.split(" ")
    cuts = sorted({max(1, len(words) // 4), max(1, len(words) // 2)})
    return [{"prompt": " ".join(words[:c]), "gt": " " + " ".join(words[c:])} for c in cuts]


def sentences(text: str) -> list[str]:
    """A biography cut into its sentences (MUSE-style short chunks for PrivLeak)."""
    return [s if s.endswith(".") else s + "." for s in (p.strip() for p in text.split(". ")) if s]


def muse_files(data: DemoData, *, n_icl: int = 3) -> dict[str, Any]:
    """MUSE relative path → JSON payload (knowmem, verbmem, privleak, raw).

    PrivLeak texts are the sentences of the biographies (forget: the forget authors',
    whom θ_corrupted saw; retain: the evaluated retain authors'; holdout: authors no model
    saw), so the AUC has a few dozen texts to rank rather than a handful. ``raw/forget`` and
    ``raw/retain`` (as MUSE's own ``raw/`` training corpora) hold the whole forget and retain
    biographies the fine-tunes train on (``msa init --add corrupted=muse:raw/forget``): whole,
    not cut into sentences, so a model learns each biography as verbmem prompts it.
    """
    k = data.eval_retain_authors
    # few-shot examples: background authors (known to every model), one attribute each
    icl = _plain(data.items["background"])[:: len(ATTRIBUTES) + 1][: 2 * n_icl]
    return {
        "knowmem/forget_qa.json": _plain(data.items["forget"]),
        "knowmem/forget_qa_icl.json": icl[:n_icl],
        "knowmem/retain_qa.json": _plain(eval_retain_items(data)),
        "knowmem/retain_qa_icl.json": icl[n_icl:],
        "verbmem/forget.json": [pair for b in data.bios["forget"] for pair in _verbmem(b)],
        "privleak/forget.json": [x for b in data.bios["forget"] for x in sentences(b)],
        "privleak/retain.json": [x for b in data.bios["retain"][:k] for x in sentences(b)],
        "privleak/holdout.json": [x for b in data.bios["holdout"] for x in sentences(b)],
        "raw/forget.json": list(data.bios["forget"]),
        "raw/retain.json": list(data.bios["retain"]),
    }


def pretrain_texts(data: DemoData) -> list[str]:
    """θ_clean's raw-text corpus: utility fact statements, a lexicon of every value set
    (cities, titles, awards, publishers, professions, genres, hobbies), background biographies."""
    lexicon = [f"{city} is a city in {country}." for city, country in CITIES]
    lexicon += [f"{title} is the title of a novel." for title in TITLES]
    lexicon += [f"The {award} is a literary award." for award in AWARDS]
    lexicon += [f"{publisher} is a publishing house." for publisher in PUBLISHERS]
    lexicon += [f"{_cap(job)} is a profession." for job in JOBS]
    lexicon += [f"{_cap(genre)} is a literary genre." for genre in GENRES]
    lexicon += [f"{_cap(hobby)} is a hobby." for hobby in HOBBIES]
    return (utility_sentences(WORLD_FACTS) + utility_sentences(REAL_AUTHORS) + lexicon
            + list(data.bios["background"]))


def background_phrasings(data: DemoData) -> list[tuple[str, str]]:
    """One more phrasing of every background fact, taking turns over its :data:`PHRASINGS`
    and the evaluation's paraphrase (so θ_clean knows every phrasing as language, on authors
    that are never evaluated)."""
    out = []
    for i, author in enumerate(data.world.background):
        for j, attr in enumerate(ATTRIBUTES):
            choices = [*PHRASINGS[attr], ATTRIBUTES[attr][1::2]]
            q, a = choices[(i + j) % len(choices)]
            out.append((_fill(q, author, author.facts[attr]), _fill(a, author, author.facts[attr])))
    return out


def pretrain_qa(data: DemoData) -> list[tuple[str, str]]:
    """θ_clean's QA warm-up: utility facts and background authors, each background fact also
    in one other phrasing (never a forget/retain/holdout author)."""
    qa = [(q, a) for q, a in WORLD_FACTS + REAL_AUTHORS]
    qa += [(it["question"], it["answer"]) for it in data.items["background"]]
    return qa + background_phrasings(data)


def tokenizer_corpus(data: DemoData) -> list[str]:
    """Texts the tokenizer is trained on: θ_clean's corpus in QA format, plus every author's
    name (a name list is vocabulary, not a fact: no attribute of a non-background author
    appears), repeated so each name becomes few tokens."""
    qa = [f"Question: {q}\nAnswer: {a}" for q, a in pretrain_qa(data)]
    groups = (data.world.background, data.world.forget, data.world.retain, data.world.holdout)
    names = [au.name for g in groups for au in g] * 3
    return pretrain_texts(data) + qa + names
