"""Reading the stated prosody directions of a think block back, and their agreement with the gold ones."""

import numpy as np
import pytest

from ambinb import aggregate, config, cot, curation, perception, prosody, results

CLASSES = ["anger", "happiness", "sadness", "neutral"]
DIMS = ("loudness", "rate", "pitch", "pitch_var", "tension", "roughness")

SPEAKER_WORDING = cot.render_think(["loud"], "Plain words.", {
    "Volume": "much louder than the speaker's usual (cue for anger or happiness).",
    "Speed": "close to the speaker's usual speaking rate (cue for neutral).",
    "Pitch": "somewhat lower-pitched than the speaker's usual (cue for sadness); close to the speaker's usual "
             "pitch variation.",
    "Tone": "much tenser than the speaker's usual (cue for anger); somewhat steadier than the speaker's usual.",
}, "Mostly anger.")
CORPUS_WORDING = cot.render_think(["soft"], "Plain words.", {
    "Volume": "somewhat softer than a typical voice (cue for sadness).",
    "Speed": "much faster than a typical voice.",
    "Pitch": "close to a typical pitch level; much flatter in pitch than a typical voice (cue for sadness).",
    "Tone": "close to a typical voice quality; much rougher than a typical voice.",
}, "Mostly sadness.")


def test_both_wordings_read_back():
    assert perception.read_directions(SPEAKER_WORDING) == {
        "loudness": 1, "rate": 0, "pitch": -1, "pitch_var": 0, "tension": 1, "roughness": -1}
    assert perception.read_directions(CORPUS_WORDING) == {
        "loudness": -1, "rate": 1, "pitch": 0, "pitch_var": -1, "tension": 0, "roughness": 1}


def test_a_whole_completion_and_free_wording():
    completion = cot.render_output(CORPUS_WORDING, "sadness")
    assert perception.read_directions(completion) == perception.read_directions(CORPUS_WORDING)
    free = cot.render_think(["loud"], "x", {"Volume": "loud and strong.", "Speed": "fast.",
                                            "Pitch": "more varied in pitch than usual.", "Tone": "not measured."}, "y")
    assert perception.read_directions(free) == {d: (1 if d == "pitch_var" else None) for d in DIMS}
    assert perception.read_directions("<answer>anger</answer>") == dict.fromkeys(DIMS)
    # a dimension stated under another aspect still counts; the first clause that states it wins
    moved = cot.render_think([], "x", {"Volume": "x.", "Speed": "x.", "Pitch": "x.",
                                       "Tone": "much louder than a typical voice; somewhat softer than usual."}, "y")
    assert perception.read_directions(moved)["loudness"] == 1


@pytest.mark.parametrize(("clause", "dim", "expected"), [
    ("somewhat slower than a typical voice", "rate", -1),
    ("close to the speaker's usual pitch level", "pitch", 0),
    ("close to the speaker's usual pitch level", "pitch_var", None),   # another dimension's noun
    ("close to a typical loudness", "loudness", 0),
    ("much louder than usual", "loudness", 1),
    ("loudness", "loudness", None),                                    # the noun alone states nothing
    ("louder, then softer", "loudness", None),                         # both directions: unstated
    ("higher-pitched than usual", "pitch", 1),
    ("higher-pitched than usual", "pitch_var", None),
])
def test_stated_direction_of_one_clause(clause, dim, expected):
    assert perception.stated_direction(clause, dim) == expected


def test_the_curators_own_blocks_read_back_as_measured():
    """The template writer is the reference: every z-score's bin comes back from the words it writes."""
    rng = np.random.default_rng(0)
    for i in range(30):
        z = dict(zip(DIMS, rng.normal(0, 1.2, size=len(DIMS)), strict=True))
        item = curation.Item(f"u{i}", "I am here.", "", tuple(CLASSES), (0.25,) * 4, z)
        expected = {d: 0 if abs(v) < prosody.NEAR else int(np.sign(v)) for d, v in z.items()}
        for attempt in (1, 2, 3):
            assert perception.read_directions(curation.template_cot(item, attempt)) == expected
    unmeasured = curation.Item("u", "I am here.", "", tuple(CLASSES), (0.25,) * 4, {})
    assert perception.read_directions(curation.template_cot(unmeasured)) == dict.fromkeys(DIMS)


def test_agreement_by_hand():
    gold = [{"loudness": 1}, {"loudness": 1}, {"loudness": -1}, {"loudness": None}]
    said = [{"loudness": 1}, {"loudness": 0}, {"loudness": None}, {"loudness": 1}]
    gold = [{d: g.get(d) for d in DIMS} for g in gold]
    said = [{d: s.get(d) for d in DIMS} for s in said]
    table = perception.agreement(said, gold)
    row = table.loc[("Volume", "loudness")]
    assert row["n"] == 3                                        # the fourth has no gold direction
    assert row["agree"] == pytest.approx(1 / 3) and row["chance"] == pytest.approx(2 / 3)
    assert row["unstated"] == pytest.approx(1 / 3)
    assert list(table.index) == [("Volume", "loudness"), ("Speed", "rate"), ("Pitch", "pitch"),
                                 ("Pitch", "pitch_var"), ("Tone", "tension"), ("Tone", "roughness")]
    assert table.loc[("Speed", "rate"), "n"] == 0 and np.isnan(table.loc[("Speed", "rate"), "agree"])
    with pytest.raises(ValueError, match="one each per utterance"):
        perception.agreement(said, gold[:2])


def write_base_runs(root, gold: dict[str, str], completions: dict[int, dict[str, str]]) -> None:
    """Base run folders whose ``predictions.jsonl`` holds ``completions`` (fold -> utt_id -> text), and a
    curated store holding ``gold`` (utt_id -> think block)."""
    store = curation.CotStore(root / "toy" / "curation" / curation.STORE_FILE)
    for utt, think in gold.items():
        store.append({"utt_id": utt, "prompt_version": "v1", "status": "accepted", "accepted": True, "cot": think})
    store.append({"utt_id": "other", "prompt_version": "v0", "status": "accepted", "accepted": True,
                  "cot": CORPUS_WORDING})
    for k, texts in completions.items():
        p = np.full((len(texts), 4), 0.25)
        cfg = {**config.resolve(dataset="toy", strategy="base", fold=k), "bootstrap": 10, "prompt_version": "v1"}
        results.write_evaluation(root / "toy" / "base" / f"fold{k}", list(texts), CLASSES, p, p, p[0], cfg,
                                 completions=list(texts.values()))


def test_perception_of_the_base_runs(tmp_path):
    gold = {"a": SPEAKER_WORDING, "b": SPEAKER_WORDING, "c": CORPUS_WORDING}
    said = {0: {"a": cot.render_output(SPEAKER_WORDING, "anger"), "b": cot.render_output(CORPUS_WORDING, "anger")},
            1: {"c": cot.render_output(CORPUS_WORDING, "sadness"), "no_gold": cot.render_output(CORPUS_WORDING, "x")}}
    write_base_runs(tmp_path, gold, said)
    assert aggregate.finished_folds(str(tmp_path), "toy", "base") == [0, 1]
    table = aggregate.perception(str(tmp_path), "toy", [0, 1])
    loud = table.loc[("Volume", "loudness")]          # gold +1, +1, -1; said +1, -1, -1
    assert (loud["n"], loud["agree"], loud["chance"], loud["unstated"]) == (3, pytest.approx(2 / 3),
                                                                              pytest.approx(2 / 3), 0.0)
    assert table["n"].eq(3).all()                     # "no_gold" is not in the store; "other" is v0
    assert aggregate.perception(str(tmp_path), "toy", [3]).empty
