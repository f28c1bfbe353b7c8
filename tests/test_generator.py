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


def test_option_views_are_the_trained_facts_with_wrong_answers_in_the_same_wording() -> None:
    s = generate(GeneratorConfig())
    trained = {r["id"]: r for r in s["utility"]}
    views = s["real_authors"] + s["world_facts"]
    assert len(views) == len(trained) and {r["id"] for r in views} == set(trained)
    assert s["world_facts"] and s["real_authors"]
    for r in views:
        t = trained[r["id"]]
        assert (r["question"], r["answer"]) == (t["question"], t["answer"]) and "paraphrased_answer" not in r
        assert len(r["perturbed_answer"]) == 3 and r["answer"] not in r["perturbed_answer"]
        # same wording: the answer and each wrong one differ in the value only
        assert all(len(set(w.split()) ^ set(r["answer"].split())) == 2 for w in r["perturbed_answer"])
    assert all(" plus " in r["question"] for r in s["world_facts"])
    assert not any(k.startswith("_") for r in s["utility"] for k in r)
