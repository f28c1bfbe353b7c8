"""A deterministic generator of fictitious people and general-knowledge questions (TOFU format).

Each person has one fact per topic; each fact is a QA pair with a paraphrased answer and
perturbed (wrong) answers drawn from the same value list, so a model that never saw the person
has no preference between the true and the perturbed answers. People are split whole into
retain / forget (nested 1%, 5%, 10%) / holdout (never trained on).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from unlearn.errors import ConfigError
from unlearn.jsonio import JsonObject

GENERATOR_VERSION = 2

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "el", "sa", "dun", "bri", "os", "ta", "nel", "vo", "ri",
              "gan", "mar", "li", "po", "zen", "ha", "qui", "dor", "fe", "ul", "bas", "ny", "ro", "te", "wyn"]

# topic -> (question, answer, paraphrased answer, values). {n} = name, {v} = value.
TOPICS: dict[str, tuple[str, str, str, list[str]]] = {
    "birthplace": ("Where was {n} born?", "{n} was born in the town of {v}.", "{n} was born in {v}.",
                   ["Tolmere", "Brask", "Quillon", "Dravos", "Emberly", "Fennick", "Harrowgate", "Istra",
                    "Jorvik", "Kelda", "Lunmoor", "Marrow", "Northam", "Oxley", "Pellin", "Ravensby"]),
    "birth_year": ("In which year was {n} born?", "{n} was born in the year {v}.", "{n} was born in {v}.",
                   [str(y) for y in range(1950, 2000, 3)]),
    "profession": ("What does {n} do for a living?", "{n} works as a {v}.", "{n} is a {v}.",
                   ["baker", "pilot", "nurse", "lawyer", "farmer", "teacher", "chemist", "carpenter", "dentist",
                    "painter", "sailor", "librarian", "plumber", "surgeon", "tailor", "geologist"]),
    "colour": ("What is the favourite colour of {n}?", "The favourite colour of {n} is {v}.",
               "{n} likes {v} best.",
               ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink",
                "brown", "teal", "gold", "silver", "violet", "amber"]),
    "pet": ("What pet does {n} keep?", "{n} keeps a {v} as a pet.", "{n} has a pet {v}.",
            ["dog", "cat", "parrot", "rabbit", "hamster", "goldfish", "turtle", "ferret", "lizard", "pony",
             "goat", "snake", "canary", "mouse", "duck", "frog"]),
    "instrument": ("Which instrument does {n} play?", "{n} plays the {v}.", "{n} is a {v} player.",
                   ["piano", "violin", "cello", "flute", "guitar", "drums", "harp", "trumpet", "oboe",
                    "banjo", "clarinet", "organ", "tuba", "lute", "accordion", "saxophone"]),
    "food": ("What is the favourite food of {n}?", "The favourite food of {n} is {v}.", "{n} loves {v}.",
             ["soup", "pasta", "rice", "curry", "bread", "cheese", "salad", "fish", "pie", "noodles", "tacos",
              "dumplings", "porridge", "stew", "pancakes", "sushi"]),
    "sport": ("Which sport does {n} play?", "{n} plays {v} every week.", "{n} plays {v}.",
              ["tennis", "football", "chess", "golf", "hockey", "rugby", "cricket", "volleyball", "squash",
               "badminton", "handball", "polo", "curling", "fencing", "rowing", "archery"]),
    "language": ("Which language does {n} speak at home?", "{n} speaks {v} at home.", "{n} speaks {v}.",
                 ["Danish", "Polish", "Greek", "Welsh", "Czech", "Dutch", "Finnish", "Irish", "Latvian",
                  "Maltese", "Basque", "Catalan", "Swahili", "Tamil", "Korean", "Hungarian"]),
    "number": ("What is the lucky number of {n}?", "The lucky number of {n} is {v}.", "{n} picks {v} as lucky.",
               [str(k) for k in range(3, 99, 6)]),
}


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 0
    people: int = 240
    holdout_people: int = 40
    perturbed: int = 3
    utility_items: int = 400

    def __post_init__(self) -> None:
        if self.people - self.holdout_people < 100:
            raise ConfigError("need at least 100 trained people so that the 1% forget split is one person")
        if not 1 <= self.perturbed < 16:
            raise ConfigError("perturbed must be in [1, 15]")

    def to_dict(self) -> JsonObject:
        return {"version": GENERATOR_VERSION, **asdict(self)}


def _names(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        first = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
        last = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        name = f"{first} {last}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


def _person_facts(rng: random.Random, pid: str, name: str, perturbed: int) -> list[JsonObject]:
    rows = []
    for topic, (q, a, para, values) in TOPICS.items():
        value = rng.choice(values)
        wrong = rng.sample([v for v in values if v != value], perturbed)
        rows.append({
            "id": f"{pid}-{topic}", "question": q.format(n=name), "answer": a.format(n=name, v=value),
            "paraphrased_answer": para.format(n=name, v=value),
            "perturbed_answer": [para.format(n=name, v=w) for w in wrong],
            "paraphrased_question": q.format(n=name).replace("What is", "Tell me").replace("?", "."),
            "person": pid, "name": name, "topic": topic,
        })
    return rows


_OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("early", "late"),
              ("light", "dark"), ("full", "empty"), ("open", "closed"), ("wet", "dry"), ("loud", "quiet"),
              ("happy", "sad"), ("old", "new"), ("high", "low"), ("hard", "soft"), ("rich", "poor"),
              ("thick", "thin"), ("near", "far"), ("strong", "weak"), ("young", "old"), ("clean", "dirty")]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]


def _utility(rng: random.Random, count: int) -> list[JsonObject]:
    """General knowledge that has nothing to do with the people: arithmetic, opposites, calendars. Each row
    also carries its wrong values written in the trained answer's own wording (``_options``), for the
    TOFU-style real_authors / world_facts views."""
    pool: list[tuple[str, str, str, list[str], list[str], str]] = []
    for a in range(1, 21):
        for b in range(1, 21):
            right = a + b
            wrong = [str(right + d) for d in (-2, -1, 1, 2) if right + d > 0][:3]
            pool.append((f"What is {a} plus {b}?", f"{a} plus {b} is {right}.", f"The sum is {right}.",
                         [f"The sum is {w}." for w in wrong], [f"{a} plus {b} is {w}." for w in wrong], "arithmetic"))
    for w, o in _OPPOSITES:
        others = [x for _, x in _OPPOSITES if x != o][:3]
        pool.append((f"What is the opposite of {w}?", f"The opposite of {w} is {o}.", f"It is {o}.",
                     [f"It is {x}." for x in others], [f"The opposite of {w} is {x}." for x in others], "words"))
    for seq, kind in ((_DAYS, "day"), (_MONTHS, "month")):
        for i, item in enumerate(seq):
            nxt = seq[(i + 1) % len(seq)]
            others = [seq[(i + k) % len(seq)] for k in (2, 3, 4)]
            pool.append((f"Which {kind} comes after {item}?", f"The {kind} after {item} is {nxt}.",
                         f"It is {nxt}.", [f"It is {x}." for x in others],
                         [f"The {kind} after {item} is {x}." for x in others], "words"))
    rng.shuffle(pool)
    rows = []
    for k, (q, a, para, pert, options, kind) in enumerate(pool[:count]):
        rows.append({"id": f"u{k:04d}", "question": q, "answer": a, "paraphrased_answer": para,
                     "perturbed_answer": pert, "topic": "utility", "_options": options, "_kind": kind})
    return rows


def option_views(utility: list[JsonObject]) -> dict[str, list[JsonObject]]:
    """TOFU's real_authors / world_facts stand-ins: the trained general-knowledge facts as question, answer
    and wrong answers in the same wording (no paraphrase; TOFU's truth ratio there puts the answer on the
    true side and its probability is normalised over the options). world_facts = the arithmetic facts,
    real_authors = the word facts (opposites, days, months)."""
    views: dict[str, list[JsonObject]] = {"real_authors": [], "world_facts": []}
    for row in utility:
        name = "world_facts" if row["_kind"] == "arithmetic" else "real_authors"
        views[name].append({"id": row["id"], "question": row["question"], "answer": row["answer"],
                            "perturbed_answer": row["_options"], "topic": name})
    return views


SPLIT_FRACTIONS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def generate(cfg: GeneratorConfig) -> dict[str, list[JsonObject]]:
    """All splits as lists of JSON rows: forget01/05/10 (nested), retain99/95/90, holdout, utility, train, and
    the option views real_authors / world_facts of the utility facts."""
    rng = random.Random(cfg.seed)
    names = _names(rng, cfg.people)
    people = [(f"p{i:04d}", name) for i, name in enumerate(names)]
    facts = {pid: _person_facts(rng, pid, name, cfg.perturbed) for pid, name in people}
    trained = people[: cfg.people - cfg.holdout_people]
    holdout = people[cfg.people - cfg.holdout_people:]
    order = list(range(len(trained)))
    rng.shuffle(order)
    splits: dict[str, list[JsonObject]] = {}
    for split, frac in SPLIT_FRACTIONS.items():
        k = max(1, round(frac * len(trained)))
        chosen = {trained[i][0] for i in order[:k]}  # nested: a prefix of one shuffled order
        splits[split] = [row for pid, _ in trained if pid in chosen for row in facts[pid]]
        splits[RETAIN_OF[split]] = [
            row for pid, _ in trained if pid not in chosen for row in facts[pid]]
    splits["holdout"] = [row for pid, _ in holdout for row in facts[pid]]
    utility = _utility(rng, cfg.utility_items)
    splits.update(option_views(utility))
    splits["utility"] = [{k: v for k, v in row.items() if not k.startswith("_")} for row in utility]
    splits["train"] = [row for pid, _ in trained for row in facts[pid]] + splits["utility"]
    return splits
