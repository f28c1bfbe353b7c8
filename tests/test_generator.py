from __future__ import annotations

import json

from unlearn.benchmark.generator import RETAIN_OF, TOPICS, GeneratorConfig, generate


def _dump(splits: dict) -> bytes:
    return json.dumps(splits, sort_keys=True).encode()


def test_same_seed_same_bytes_other_seed_differs() -> None:
    assert _dump(generate(GeneratorConfig(seed=3))) == _dump(generate(GeneratorConfig(seed=3)))
    assert _dump(generate(GeneratorConfig(seed=3))) != _dump(generate(GeneratorConfig(seed=4)))


def test_splits_disjoint_by_person_and_nested() -> None:
    cfg = GeneratorConfig()
    s = generate(cfg)
    people = lambda rows: {r.get("person") for r in rows}  # noqa: E731
    trained = people(s["train"]) - {None}
    assert len(trained) >= 200 and len(TOPICS) >= 10
    assert len([r for r in s["train"] if "person" in r]) == len(trained) * len(TOPICS)
    assert people(s["holdout"]).isdisjoint(trained)
    assert people(s["forget01"]) < people(s["forget05"]) < people(s["forget10"])
    for forget, retain in RETAIN_OF.items():
        assert people(s[forget]).isdisjoint(people(s[retain]))
        assert people(s[forget]) | people(s[retain]) == trained
    assert len(people(s["forget10"])) == round(0.1 * len(trained))
    assert len(people(s["forget01"])) == 2
    assert not any("person" in r for r in s["utility"])


def test_facts_have_paraphrase_and_wrong_perturbations() -> None:
    s = generate(GeneratorConfig())
    names = {r["name"] for r in s["train"] if "name" in r}
    assert len(names) == len({r["person"] for r in s["train"] if "person" in r})  # names are unique
    for r in s["forget10"] + s["utility"]:
        assert len(r["perturbed_answer"]) >= 3
        assert r["paraphrased_answer"] not in r["perturbed_answer"]
        assert len(set(r["perturbed_answer"])) == len(r["perturbed_answer"])
