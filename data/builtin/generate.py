"""Compose the built-in corpus, sentence-pair task and QA set from the word lists in lexicon.py.

    python -m data.builtin.generate --output_dir DIR

The text is written for this project: hand-made templates and word lists (lexicon.py), combined by a
seeded random generator, so the files are the same bytes on every machine and Python version. They
are made at run time (``demo_bert.py quickstart`` does it first) rather than stored in the
repository, which keeps the checkout small and lets the tasks be large enough to be learnable.

Outputs under DIR:
    corpus/valley.txt                 ~120 KB, one sentence per line, a blank line between documents
                                      (the sharded-text format create_pretraining_data reads)
    MRPC/{train,dev}.tsv, test.tsv    GLUE MRPC layout: BOM'd `Quality` header, label 1 = paraphrase;
                                      test.tsv is unlabelled with an `index` column, as GLUE ships it
    SQuAD/{train,dev}-v1.1.json       SQuAD v1.1 layout; every answer is an exact character span

The three sets use separate random streams, so fine-tuning examples are new people, not sentences
the model saw in pre-training.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from central.errors import BadInputError, run_main
from data.builtin import lexicon as lx

MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String"
SIZES = {"corpus_people": 150, "corpus_stories": 110, "mrpc_train": 2000, "mrpc_dev": 400,
         "mrpc_test": 400, "squad_train": 400, "squad_dev": 60}


@dataclass(frozen=True)
class Person:
    first: str
    family: str
    age: int
    town: tuple
    job: tuple
    pet: tuple
    hobby: str
    food: str
    colour: str
    friend: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.family}"

    @property
    def she(self) -> bool:
        return self.first in lx.SHE

    @property
    def pron(self) -> str:
        return "she" if self.she else "he"

    @property
    def poss(self) -> str:
        return "her" if self.she else "his"


def make_person(rng: random.Random, used: Optional[set] = None) -> Person:
    """A random person; with ``used``, one whose full name is not in it yet (and is then added)."""
    if used is not None and len(used) >= len(lx.FIRST_NAMES) * len(lx.FAMILY_NAMES):
        raise ValueError("every full name is used: add names to lexicon.py or ask for fewer people")
    while True:
        first, family = rng.choice(lx.FIRST_NAMES), rng.choice(lx.FAMILY_NAMES)
        if used is None or (first, family) not in used:
            break
    if used is not None:
        used.add((first, family))
    friend = rng.choice([n for n in lx.FIRST_NAMES if n != first])
    return Person(first, family, rng.randint(19, 78), rng.choice(lx.TOWNS), rng.choice(lx.JOBS),
                  rng.choice(lx.PETS), rng.choice(lx.HOBBIES), rng.choice(lx.FOODS),
                  rng.choice(lx.COLOURS), friend)


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Facts. Each fact has a value (the answer span) and several wordings that say the same thing; a
# wording is a function (person, subject, value) -> sentence, where subject is the full name, the
# first name or a pronoun. MRPC pairs two wordings; SQuAD asks for the value.
# ---------------------------------------------------------------------------------------------
Wording = Callable[[Person, str, str], str]

def objective(p: Person, subject: str) -> str:
    return ("her" if p.she else "him") if subject in ("she", "he") else subject


def possessive(p: Person, subject: str) -> str:
    return p.poss if subject in ("she", "he") else f"{subject}'s"


FACTS: Dict[str, Tuple[Callable[[Person], str], List[Wording]]] = {
    "town": (lambda p: p.town[0], [
        lambda p, s, v: f"{cap(s)} lives in {v}.",
        lambda p, s, v: f"{cap(s)} has a small house in {v}.",
        lambda p, s, v: f"{v} is where {s} lives.",
        lambda p, s, v: f"{cap(s)} makes {p.poss} home in the town of {v}.",
    ]),
    "job": (lambda p: p.job[0], [
        lambda p, s, v: f"{cap(s)} works as a {v}.",
        lambda p, s, v: f"By trade, {s} is a {v}.",
        lambda p, s, v: f"{cap(s)} earns a living as a {v}.",
        lambda p, s, v: f"{cap(s)} has been a {v} for many years.",
    ]),
    "age": (lambda p: str(p.age), [
        lambda p, s, v: f"{cap(s)} is {v} years old.",
        lambda p, s, v: f"{cap(s)} turned {v} this year.",
        lambda p, s, v: f"At {v}, {s} is still full of energy.",
    ]),
    "pet": (lambda p: p.pet[0], [
        lambda p, s, v: f"{cap(s)} has a {v}.",
        lambda p, s, v: f"{cap(s)} keeps a {v} at home.",
        lambda p, s, v: f"A {v} lives with {objective(p, s)} and follows {objective(p, p.pron)} everywhere.",
    ]),
    "hobby": (lambda p: p.hobby, [
        lambda p, s, v: f"In {p.poss} free time, {s} enjoys {v}.",
        lambda p, s, v: f"{cap(s)} likes {v} more than anything.",
        lambda p, s, v: f"{cap(v)} is what {s} loves to do on Sundays.",
    ]),
    "food": (lambda p: p.food, [
        lambda p, s, v: f"{cap(possessive(p, s))} favourite dish is {v}.",
        lambda p, s, v: f"{cap(s)} loves {v}.",
        lambda p, s, v: f"Nothing pleases {objective(p, s)} more than a plate of {v}.",
    ]),
    "colour": (lambda p: p.colour, [
        lambda p, s, v: f"{cap(possessive(p, s))} favourite colour is {v}.",
        lambda p, s, v: f"{cap(s)} painted the front door {v}.",
        lambda p, s, v: f"{cap(s)} likes the colour {v} best.",
    ]),
    "friend": (lambda p: p.friend, [
        lambda p, s, v: f"{cap(possessive(p, s))} best friend is {v}.",
        lambda p, s, v: f"{cap(s)} and {v} have been friends since school.",
        lambda p, s, v: f"{v} is {possessive(p, s)} closest friend.",
    ]),
}

QUESTIONS = {
    "town": ["Where does {n} live?", "In which town does {n} live?", "What town is home to {n}?"],
    "job": ["What does {n} do for a living?", "What is the job of {n}?", "What is {n} by trade?"],
    "age": ["How old is {n}?", "What age is {n}?"],
    "pet": ["What animal does {n} keep?", "What pet does {n} have?"],
    "hobby": ["What does {n} enjoy in free time?", "What is the hobby of {n}?"],
    "food": ["What is the favourite dish of {n}?", "Which food does {n} love?"],
    "colour": ["What is the favourite colour of {n}?", "Which colour does {n} like best?"],
    "friend": ["Who is the best friend of {n}?", "Who is {n} friends with?"],
}

# Where a fact can be changed to make a non-paraphrase: another value of the same kind.
ALTERNATIVES: Dict[str, Callable[[random.Random, Person], str]] = {
    "town": lambda r, p: r.choice([t[0] for t in lx.TOWNS if t != p.town]),
    "job": lambda r, p: r.choice([j[0] for j in lx.JOBS if j != p.job]),
    "age": lambda r, p: str(r.choice([a for a in range(19, 79) if abs(a - p.age) > 2])),
    "pet": lambda r, p: r.choice([x[0] for x in lx.PETS if x != p.pet]),
    "hobby": lambda r, p: r.choice([h for h in lx.HOBBIES if h != p.hobby]),
    "food": lambda r, p: r.choice([f for f in lx.FOODS if f != p.food]),
    "colour": lambda r, p: r.choice([c for c in lx.COLOURS if c != p.colour]),
    "friend": lambda r, p: r.choice([n for n in lx.FIRST_NAMES if n not in (p.friend, p.first)]),
}


def fact_sentence(rng: random.Random, person: Person, fact: str, subject: str,
                  value: Optional[str] = None, wording: Optional[int] = None) -> str:
    get_value, wordings = FACTS[fact]
    index = rng.randrange(len(wordings)) if wording is None else wording
    return wordings[index](person, subject, get_value(person) if value is None else value)


# ---------------------------------------------------------------------------------------------
# Pre-training corpus: biographies, towns, animals, seasons and short stories.
# ---------------------------------------------------------------------------------------------
def biography(rng: random.Random, p: Person) -> List[str]:
    job, place, activity, tool = p.job
    pet, habit, pet_food = p.pet
    sentences = [f"{p.name} is a {job} from {p.town[0]}.",
                 fact_sentence(rng, p, "age", p.first),
                 f"Every day {p.pron} goes to {place}, where {p.pron} {activity}.",
                 f"For this work {p.pron} needs {tool}."]
    extras = [[fact_sentence(rng, p, "pet", p.first), f"The {pet} {habit}.", f"It likes to eat {pet_food}."],
              [fact_sentence(rng, p, "hobby", rng.choice([p.first, p.pron]))],
              [fact_sentence(rng, p, "food", p.first)],
              [fact_sentence(rng, p, "colour", p.first)],
              [fact_sentence(rng, p, "friend", p.first)]]
    rng.shuffle(extras)
    for group in extras[:rng.randint(3, 5)]:
        sentences.extend(group)
    sentences.append(f"On {p.town[3]}s {p.first} visits the market in {p.town[0]}.")
    return sentences


def town_description(rng: random.Random, town: tuple, residents: Sequence[Person]) -> List[str]:
    name, feature, trade, day, founded, population = town
    sentences = [f"{name} is a town on {lx.RIVER}.", f"It lies close to {feature}.",
                 f"{name} is known for its {trade}.", f"The market in {name} is held every {day}.",
                 f"The town was founded in {founded}.", f"About {population} people live in {name} today."]
    for person in list(residents)[:3]:
        sentences.append(f"The {person.job[0]} {person.name} lives in {name}.")
    season, scene, activity = rng.choice(lx.SEASONS)
    sentences.append(f"In {season} {scene}, and in {name} {activity}.")
    return sentences


def animal_description(rng: random.Random, animal: tuple) -> List[str]:
    kind, home, active, food, fact = animal
    town = rng.choice(lx.TOWNS)[0]
    return [f"The {kind} is a wild animal of the valley.", f"The {kind} lives in {home}.",
            f"It is most active {active}.", f"The {kind} eats {food}.", f"The {kind} {fact}.",
            f"People in {town} often see a {kind} near {lx.RIVER}."]


def season_description(season: tuple) -> List[str]:
    name, scene, activity = season
    return [f"In the valley, {name} is a season of change.", f"In {name} {scene}.",
            f"It is the time when {activity}.", f"Many people say that {name} is their favourite season."]


def story(rng: random.Random, p: Person) -> List[str]:
    other = rng.choice([t for t in lx.TOWNS if t != p.town])
    errand, shop = rng.choice(lx.ERRANDS)
    weather = rng.choice(lx.WEATHER)
    pet = p.pet[0]
    return [f"One {other[3]} morning, {p.name} walked from {p.town[0]} to {other[0]}.",
            f"When {p.pron} set out, {weather}.",
            f"The road followed {lx.RIVER} for {lx.NUMBER_WORDS[rng.randint(2, 9)]} miles.",
            f"In {other[0]} {p.pron} went to the {shop} and {errand}.",
            f"Near the {shop} {p.pron} met {p.friend}, and they talked about the {other[2]} of {other[0]}.",
            f"In the afternoon {p.first} walked back along the river.",
            f"At home {p.pron} gave the {pet} some {p.pet[2]} and made {p.food} for supper."]


def build_corpus(rng: random.Random) -> List[List[str]]:
    used: set = set()
    people = [make_person(rng, used) for _ in range(SIZES["corpus_people"])]
    documents = [biography(rng, p) for p in people]
    for town in lx.TOWNS:
        documents.append(town_description(rng, town, [p for p in people if p.town == town]))
    documents.extend(animal_description(rng, a) for a in lx.WILD_ANIMALS)
    documents.extend(season_description(s) for s in lx.SEASONS)
    documents.extend(story(rng, rng.choice(people)) for _ in range(SIZES["corpus_stories"]))
    rng.shuffle(documents)
    return documents


# ---------------------------------------------------------------------------------------------
# MRPC-format sentence pairs: label 1 when both sentences state the same fact about the same person.
# ---------------------------------------------------------------------------------------------
def mrpc_pair(rng: random.Random, p: Person) -> Tuple[int, str, str]:
    """(label, sentence 1, sentence 2): 1 when both say the same fact about the same person in other
    words. A 0 pair states another fact about that person (80%: the kind of fact differs) or the same
    fact with another value (20%: only a word-by-word comparison tells). More of the second kind makes
    the task too hard for the quick start's 2-layer model to show much in a minute."""
    fact = rng.choice(list(FACTS))
    first, second = rng.sample(range(len(FACTS[fact][1])), 2)
    sentence_one = fact_sentence(rng, p, fact, rng.choice([p.name, p.first]), wording=first)
    subject_two = rng.choice([p.name, p.first])
    label = 1 if rng.random() < 0.55 else 0
    if label == 1:
        sentence_two = fact_sentence(rng, p, fact, subject_two, wording=second)
    elif rng.random() < 0.8:
        sentence_two = fact_sentence(rng, p, rng.choice([f for f in FACTS if f != fact]), subject_two)
    else:
        sentence_two = fact_sentence(rng, p, fact, subject_two, value=ALTERNATIVES[fact](rng, p), wording=second)
    return label, sentence_one, sentence_two


def mrpc_rows(rng: random.Random, count: int, id_base: int) -> List[Tuple[int, int, int, str, str]]:
    rows = []
    for i in range(count):
        label, one, two = mrpc_pair(rng, make_person(rng))  # names may repeat across pairs
        rows.append((label, id_base + 2 * i, id_base + 2 * i + 1, one, two))
    return rows


def write_mrpc(out_dir: Path, rng: random.Random) -> None:
    splits = {"train": mrpc_rows(rng, SIZES["mrpc_train"], 100000),
              "dev": mrpc_rows(rng, SIZES["mrpc_dev"], 300000),
              "test": mrpc_rows(rng, SIZES["mrpc_test"], 500000)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        if split == "test":
            lines = [MRPC_TEST_HEADER] + [f"{i}\t{a}\t{b}\t{s1}\t{s2}" for i, (_, a, b, s1, s2) in enumerate(rows)]
        else:
            lines = [MRPC_HEADER] + [f"{label}\t{a}\t{b}\t{s1}\t{s2}" for label, a, b, s1, s2 in rows]
        (out_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# SQuAD-format QA: a paragraph about two people; questions whose answers are spans of it.
# ---------------------------------------------------------------------------------------------
def squad_paragraph(rng: random.Random, people: Sequence[Person], pid: str, facts_per_person: int,
                    questions: int) -> dict:
    context, spans = "", []  # spans: (fact, answer_start, answer_text, person)
    for p in people:
        facts = rng.sample(list(FACTS), facts_per_person)
        for k, fact in enumerate(facts):
            subject = p.name if k == 0 else rng.choice([p.first, p.pron])
            sentence = fact_sentence(rng, p, fact, subject)
            while k == 0 and not sentence.startswith(subject):  # introduce each person by name first
                sentence = fact_sentence(rng, p, fact, subject)
            value = FACTS[fact][0](p)
            # The value sits once in its own sentence (perhaps capitalised at its start); look
            # after the subject so a name never shadows it, and take the span's text as written.
            skip = len(subject) if sentence.startswith(cap(subject)) else 0
            local = sentence.lower().find(value.lower(), skip)
            start = len(context) + (1 if context else 0) + local
            context = f"{context} {sentence}" if context else sentence
            spans.append((fact, start, sentence[local:local + len(value)], p))
    qas = []
    for k, (fact, start, answer, p) in enumerate(rng.sample(spans, questions)):
        assert context[start:start + len(answer)] == answer and answer
        question = rng.choice(QUESTIONS[fact]).format(n=rng.choice([p.name, p.first]))
        qas.append({"answers": [{"answer_start": start, "text": answer}], "question": question,
                    "id": f"{pid}q{k}"})
    return {"context": context, "qas": qas}


def squad_split(rng: random.Random, count: int, used: set, prefix: str) -> dict:
    """``count`` paragraphs: most about one person (5 facts), every fourth about two (3 facts each),
    so that some questions need the right person, not only the right kind of answer."""
    articles = []
    for a in range(count):
        people = [make_person(rng, used)]
        if a % 4 == 3:
            other = make_person(rng, used)
            while other.first == people[0].first:
                other = make_person(rng, used)
            people.append(other)
        facts = 5 if len(people) == 1 else 3
        paragraph = squad_paragraph(rng, people, f"{prefix}{a:04d}", facts, questions=3)
        articles.append({"title": "_and_".join(p.family for p in people), "paragraphs": [paragraph]})
    return {"data": articles, "version": "1.1"}


def write_squad(out_dir: Path, rng: random.Random) -> None:
    used: set = set()
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "t"), ("dev", "d")):
        data = squad_split(rng, SIZES[f"squad_{split}"], used, prefix)
        (out_dir / f"{split}-v1.1.json").write_text(json.dumps(data, indent=None) + "\n", encoding="utf-8")


def write_corpus(path: Path, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    documents = build_corpus(rng)
    path.write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")


def generate(out_dir: Path, seed: int = 2024) -> List[Path]:
    """Write every built-in file under ``out_dir``; returns their paths."""
    write_corpus(out_dir / "corpus" / "valley.txt", random.Random(seed))
    write_mrpc(out_dir / "MRPC", random.Random(seed + 1))
    write_squad(out_dir / "SQuAD", random.Random(seed + 2))
    return sorted(p for p in out_dir.rglob("*") if p.is_file() and p.suffix in (".txt", ".tsv", ".json"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.builtin.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True, help="where to write corpus/, MRPC/ and SQuAD/")
    parser.add_argument("--seed", type=int, default=2024, help="another seed gives other (equally valid) data")
    args = parser.parse_args(argv)
    return run_main(lambda _: write_and_list(Path(args.output_dir), args.seed), argv)


def write_and_list(out_dir: Path, seed: int) -> int:
    try:
        written = generate(out_dir, seed=seed)
    except OSError as err:
        raise BadInputError(f"--output_dir {out_dir}: cannot be written ({err.strerror or err})") from err
    for path in written:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
