"""SG-IoU / Entity-IoU / Relation-IoU on hand-written graphs."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.metrics.graph_iou import GraphIoU, graph_iou, normalize_name, singular
from schemas import SceneGraph


def sg(objects: list[str], relations: list[tuple[int, str, int]] = ()) -> SceneGraph:
    return SceneGraph.from_json(
        {
            "objects": [{"id": i, "name": n} for i, n in enumerate(objects)],
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in relations],
        }
    )


TARGET = sg(["man", "horse", "hat"], [(0, "riding", 1), (0, "wearing", 2)])


def test_identical_graphs_score_one():
    assert graph_iou(TARGET, TARGET) == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}


def test_partial_overlap_is_set_iou():
    predicted = sg(["man", "horse", "dog"], [(0, "riding", 1), (2, "chasing", 1)])
    # triples {man riding horse} ∩ → 1 of 3; entities {man, horse} of {man, horse, hat, dog}; predicates 1 of 3
    assert graph_iou(predicted, TARGET) == pytest.approx({"sg_iou": 1 / 3, "entity_iou": 2 / 4, "relation_iou": 1 / 3})


def test_symmetric():
    predicted = sg(["man", "dog"], [(0, "walking", 1)])
    assert graph_iou(predicted, TARGET) == graph_iou(TARGET, predicted)


def test_duplicates_collapse():
    # two "man" nodes with the same relation to the horse are one entity and one triple
    predicted = sg(["man", "man", "horse", "hat"], [(0, "riding", 2), (1, "riding", 2), (0, "wearing", 3)])
    assert graph_iou(predicted, TARGET) == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}


def test_ids_do_not_matter():
    shuffled = SceneGraph.from_json(
        {
            "objects": [{"id": 7, "name": "hat"}, {"id": 3, "name": "horse"}, {"id": 5, "name": "man"}],
            "relations": [{"subject": 5, "predicate": "wearing", "object": 7}, {"subject": 5, "predicate": "riding", "object": 3}],
        }
    )
    assert graph_iou(shuffled, TARGET)["sg_iou"] == 1.0


def test_direction_matters_for_triples():
    reversed_ = sg(["man", "horse", "hat"], [(1, "riding", 0), (0, "wearing", 2)])
    assert graph_iou(reversed_, TARGET) == pytest.approx({"sg_iou": 1 / 3, "entity_iou": 1.0, "relation_iou": 1.0})


def test_empty_graphs():
    empty = SceneGraph()
    assert graph_iou(empty, empty) == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}
    assert graph_iou(empty, TARGET) == {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0}
    assert graph_iou(TARGET, empty) == {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0}
    # objects but no relations on both sides: the relation sets are both empty → 1.0
    objects_only = sg(["man"])
    assert graph_iou(objects_only, sg(["man"])) == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}
    assert graph_iou(objects_only, TARGET) == {"sg_iou": 0.0, "entity_iou": 1 / 3, "relation_iou": 0.0}


# Every empty / non-empty combination of the three sets, against the module docstring's rule (per metric: both
# sets empty -> 1.0, exactly one empty -> 0.0, else |A ∩ B| / |A ∪ B|), values written out by hand.
# E: no objects (all three sets empty); M / D: one object "man" / "dog", no relations (triples and predicates
# empty, entities not); T: TARGET (all three non-empty: 2 triples, 3 entities, 2 predicates).
EMPTY_CASES = {
    "E": SceneGraph(),
    "M": sg(["man"]),
    "D": sg(["dog"]),
    "T": TARGET,
}


@pytest.mark.parametrize(
    ("predicted", "target", "expected"),
    [
        ("E", "E", (1.0, 1.0, 1.0)),  # all empty on both sides
        ("E", "M", (1.0, 0.0, 1.0)),  # triples and predicates empty on both sides; entities only in the target
        ("M", "E", (1.0, 0.0, 1.0)),
        ("E", "T", (0.0, 0.0, 0.0)),  # everything asked, nothing found
        ("T", "E", (0.0, 0.0, 0.0)),  # nothing asked, something found
        ("M", "M", (1.0, 1.0, 1.0)),
        ("M", "D", (1.0, 0.0, 1.0)),  # non-empty disjoint entity sets
        ("M", "T", (0.0, 1 / 3, 0.0)),  # {man} of {man, horse, hat}; empty triples / predicates vs non-empty
        ("T", "M", (0.0, 1 / 3, 0.0)),
        ("T", "T", (1.0, 1.0, 1.0)),
    ],
)
def test_empty_set_conventions_match_the_docstring(predicted, target, expected):
    scores = graph_iou(EMPTY_CASES[predicted], EMPTY_CASES[target])
    assert (scores["sg_iou"], scores["entity_iou"], scores["relation_iou"]) == pytest.approx(expected, abs=1e-12)
    metric = GraphIoU()
    metric.update(EMPTY_CASES[predicted], EMPTY_CASES[target])
    assert metric.compute() == scores


def test_failed_items_count_as_zero_not_as_empty_graphs():
    # documented: a failed judgement scores 0.0 on all three, even where an empty graph would score 1.0
    metric = GraphIoU()
    metric.update(SceneGraph(), SceneGraph())  # 1.0, 1.0, 1.0
    assert metric.update_failed() == {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0}
    metric.update(sg(["man"]), TARGET)  # 0, 1/3, 0
    metric.update_failed()
    assert len(metric.scores) == 4
    assert metric.compute() == pytest.approx({"sg_iou": 1 / 4, "entity_iou": (1 + 1 / 3) / 4, "relation_iou": 1 / 4})


@pytest.mark.parametrize(
    ("plural", "expected"),
    [
        ("people", "person"),
        ("men", "man"),
        ("women", "woman"),
        ("children", "child"),
        ("feet", "foot"),
        ("teeth", "tooth"),
        ("mice", "mouse"),
        ("puppies", "puppy"),
        ("glasses", "glass"),
        ("boxes", "box"),
        ("benches", "bench"),
        ("dishes", "dish"),
        ("buses", "bus"),
        ("horses", "horse"),
        ("cats", "cat"),
        ("ties", "tie"),
        ("leaves", "leaf"),
        ("flies", "fly"),  # five letters: rule 2
        ("buzzes", "buzz"),
        ("octopus", "octopus"),  # -us stays
        ("axis", "axis"),  # -is stays
        # already singular
        ("glass", "glass"),
        ("bus", "bus"),
        ("tennis", "tennis"),
        ("gas", "gas"),
        ("person", "person"),
    ],
)
def test_singular(plural, expected):
    assert singular(plural) == expected


def test_name_normalisation():
    assert normalize_name("  Young   Men ") == "young man"
    assert normalize_name("") == "" and normalize_name("   ") == ""
    assert normalize_name("traffic_lights") == "traffic light"


def test_plural_forms_match():
    predicted = sg(["Men", "horses", "hats"], [(0, "riding", 1), (0, "Wearing", 2)])
    assert graph_iou(predicted, TARGET) == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}


def test_synonyms_applied_after_normalisation():
    predicted = sg(["guys", "pony", "cap"], [(0, "on top of", 1), (0, "wears", 2)])
    without = graph_iou(predicted, TARGET)
    assert without["entity_iou"] == 0.0
    synonyms = {"guy": "man", "Pony": "horse", "caps": "hat", "on top of": "riding", "wears": "wearing"}
    assert graph_iou(predicted, TARGET, synonyms) == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}


def test_accumulator_means():
    metric = GraphIoU()
    assert metric.update(TARGET, TARGET)["sg_iou"] == 1.0
    metric.update(SceneGraph(), TARGET)
    assert metric.compute() == {"sg_iou": 0.5, "entity_iou": 0.5, "relation_iou": 0.5}
    metric.reset()
    with pytest.raises(ValueError, match="at least one"):
        metric.compute()


def test_accumulator_synonyms():
    metric = GraphIoU(synonyms={"pony": "horse"})
    metric.update(sg(["man", "pony", "hat"], [(0, "riding", 1), (0, "wearing", 2)]), TARGET)
    assert metric.compute()["sg_iou"] == 1.0


def test_a_dangling_relation_is_no_triple_but_its_predicate_counts() -> None:
    """A relation whose object id is missing (a graph built without validation) forms no triple; its predicate
    still belongs to the predicate set."""
    from schemas import SGObject, SGRelation

    dangling = SceneGraph([SGObject(0, "dog", []), SGObject(1, "ball", [])], [SGRelation(0, "near", 1), SGRelation(0, "on", 7)])
    clean = SceneGraph([SGObject(0, "dog", []), SGObject(1, "ball", [])], [SGRelation(0, "near", 1), SGRelation(1, "on", 0)])
    assert graph_iou(dangling, clean) == {"sg_iou": 0.5, "entity_iou": 1.0, "relation_iou": 1.0}


def test_compute_without_updates_says_so() -> None:
    with pytest.raises(ValueError, match=r"^GraphIoU\.compute\(\) needs at least one update\(\)$"):
        GraphIoU().compute()


def test_std_over_items_is_the_population_std() -> None:
    metric = GraphIoU()
    metric.update(TARGET, TARGET)  # 1, 1, 1
    metric.update_failed()  # 0, 0, 0
    assert metric.compute_std() == {"sg_iou_std": 0.5, "entity_iou_std": 0.5, "relation_iou_std": 0.5}
    metric.update(sg(["man"]), TARGET)  # 0, 1/3, 0
    entity = [1.0, 0.0, 1 / 3]
    mean = sum(entity) / 3
    expected = {
        "sg_iou_std": math.sqrt(2 / 9),  # population std of (1, 0, 0)
        "entity_iou_std": math.sqrt(sum((x - mean) ** 2 for x in entity) / 3),
        "relation_iou_std": math.sqrt(2 / 9),
    }
    assert metric.compute_std() == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match=r"^GraphIoU\.compute_std\(\) needs at least one update\(\)$"):
        GraphIoU().compute_std()


def test_states_reduce_across_processes() -> None:
    """torchmetrics' sync with a stand-in all-gather (this process's state, then another process's): the items
    are concatenated and the failed counts summed, so the means are over both processes' items."""
    def all_gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, other[tensor.ndim]]

    ours = GraphIoU(dist_sync_fn=all_gather, distributed_available_fn=lambda: True)
    theirs = GraphIoU()
    ours.update(TARGET, TARGET)
    ours.update_failed()
    theirs.update(sg(["man"]), TARGET)
    theirs.update_failed()
    theirs.update_failed()
    other = {0: theirs.failed.clone(), 2: torch.cat(theirs.scores)}  # by the state's dimensions
    assert ours.compute() == pytest.approx({"sg_iou": 1 / 5, "entity_iou": (1 + 1 / 3) / 5, "relation_iou": 1 / 5})
    with ours.sync_context(dist_sync_fn=all_gather, distributed_available=lambda: True):
        assert int(ours.failed) == 3
        assert ours.per_item() == [
            {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0},
            {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0},
            {"sg_iou": 0.0, "entity_iou": 1 / 3, "relation_iou": 0.0},
            {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0},
            {"sg_iou": 0.0, "entity_iou": 0.0, "relation_iou": 0.0},
        ]
    assert int(ours.failed) == 1 and len(ours.per_item()) == 2  # unsynced again: this process's own
