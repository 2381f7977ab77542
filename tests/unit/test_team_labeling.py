"""Labeling as a team: each person is handed a prompt nobody else holds, doubly-labeled prompts go to two
different people and give the agreement, progress is counted per person; the agreement measures themselves."""

from __future__ import annotations

import json

import pytest

from core.errors import InputError
from measures.agreement import kendalls_w, pairwise_agreement
from stages.rank.labeling import LabelingTask
from stages.rank.labels import latest_by_person, read_labels


def test_pairwise_agreement_and_kendalls_w():
    assert pairwise_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert pairwise_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == 0.0
    assert pairwise_agreement([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 3)
    assert pairwise_agreement([1, 1, 2], [1, 1, 3]) == 1.0  # a tie both people gave agrees
    assert kendalls_w([[1, 2, 3, 4]] * 3) == pytest.approx(1.0)
    assert kendalls_w([[1, 2, 3, 4], [4, 3, 2, 1]]) == pytest.approx(0.0)
    # three people, three answers: the textbook value 12 S / (m^2 (n^3 - n)) with S over rank sums 3, 7, 8
    assert kendalls_w([[1, 2, 3], [1, 3, 2], [1, 2, 3]]) == pytest.approx(12 * 14 / (9 * 24))
    assert kendalls_w([[1, 1, 2], [1, 1, 2]]) == pytest.approx(1.0)  # ties corrected for: still full agreement


@pytest.fixture
def task(tmp_path) -> LabelingTask:
    samples = [{"prompt": [{"role": "user", "content": f"question {i}"}], "answers": ["a", "b", "c"]}
               for i in range(4)]
    return LabelingTask("people", samples, [f"k{i}" for i in range(4)], tmp_path / "labels.jsonl", min_labeled=2,
                        double_labeled=1, guidelines="Prefer the answer that follows the instruction.")


def label(task: LabelingTask, labeler: str, ranks: list[int]) -> dict:
    key = task.state(labeler)["item"]["key"]
    status, state = task.submit({"key": key, "labeler": labeler, "ranks": ranks})
    assert status == 200, state
    return state


def test_two_people_are_never_handed_the_same_prompt_and_a_doubly_labeled_one_reaches_both(task):
    assert task.state("ana")["item"]["key"] == "k0"
    assert task.state("bo")["item"]["key"] == "k1"  # k0 is ana's while she ranks it
    assert task.state("ana")["item"]["key"] == "k0"  # asking again hands her the same prompt
    task.submit({"key": "k0", "labeler": "ana", "ranks": [1, 2, 3]})
    assert task.state("ana")["item"]["key"] == "k2"  # k1 is bo's
    task.submit({"key": "k1", "labeler": "bo", "ranks": [1, 2, 3]})
    assert task.state("bo")["item"]["key"] == "k0"  # ranked by two people: ana's, then his
    state = label(task, "bo", [2, 1, 3])
    assert state["by_labeler"] == {"ana": 1, "bo": 2}
    assert state["agreement"] == {"items": 1, "pairwise": pytest.approx(2 / 3),
                                  "kendalls_w": pytest.approx(kendalls_w([[1, 2, 3], [2, 1, 3]]))}
    assert state["guidelines"] == "Prefer the answer that follows the instruction."
    # a third person is never handed k0 (nor k2, ana's, nor k3, handed to bo with his last answer)
    assert task.state("cy")["item"] is None
    status, refused = task.submit({"key": "k0", "labeler": "cy", "ranks": [3, 2, 1]})
    assert status == 409 and "ana, bo labeled this prompt first" in refused["error"]
    assert {r.get("labeler") for r in read_labels(task.labels_path).values()} <= {"ana", "bo"}
    assert state["labeled"] == 2  # prompts with a ranking, whoever gave it


def test_a_person_may_correct_their_own_label_and_a_single_labeled_prompt_is_done_after_one(task):
    for key in ("k0", "k1"):  # k0 needs two people, k1 one
        assert task.submit({"key": key, "labeler": "ana", "ranks": [1, 2, 3]})[0] == 200
    status, _ = task.submit({"key": "k0", "labeler": "ana", "ranks": [3, 2, 1]})  # ana corrects her own
    assert status == 200 and read_labels(task.labels_path)["k0"]["ranks"] == [3, 2, 1]
    assert task.submit({"key": "k1", "labeler": "bo", "ranks": [1, 2, 3]})[0] == 409
    assert task.submit({"key": "k0", "labeler": "bo", "ranks": [1, 2, 3]})[0] == 200
    assert task.state("bo")["by_labeler"] == {"ana": 2, "bo": 1}


def ranker(order: list[str], completed_by, **more) -> dict:
    """One annotation as Label Studio's JSON export holds it: a Ranker result over the task's List."""
    return {"id": 1, "completed_by": completed_by, "was_cancelled": False, **more,
            "result": [{"from_name": "rank", "to_name": "answers", "type": "ranker",
                        "value": {"ranker": {"answers": order}}}]}


def test_label_studio_tasks_out_and_its_export_back_in_as_each_annotators_ranking(task, tmp_path):
    out = tmp_path / "todo.json"
    assert task.export_rows(out, format="label-studio") == 4
    tasks = json.loads(out.read_text())
    assert tasks[0]["data"]["prompt"] == "user: question 0"
    assert [a["id"] for a in tasks[0]["data"]["answers"]] == ["answer-0", "answer-1", "answer-2"]
    assert '<Ranker name="rank" toName="answers"/>' in (tmp_path / "todo.label-config.xml").read_text()

    # what the project exports after two people ranked task 1 and one of them task 2 (and cancelled task 3)
    exported = [{"id": 7, **tasks[0], "annotations": [ranker(["answer-2", "answer-0", "answer-1"], {"email": "ana@x"}),
                                                      ranker(["answer-2", "answer-1", "answer-0"], 12)]},
                {"id": 8, **tasks[1], "annotations": [ranker(["answer-0", "answer-1", "answer-2"], {"email": "ana@x"})]},
                {"id": 9, **tasks[2], "annotations": [ranker(["answer-1", "answer-0", "answer-2"], 12, was_cancelled=True)]}]
    back = tmp_path / "export.json"
    back.write_text(json.dumps(exported))
    assert task.import_rows(back, format="label-studio") == 3
    people = latest_by_person(task.labels_path)
    assert people["k0"]["ana@x"]["ranks"] == [2, 3, 1] and people["k0"]["label-studio user 12"]["ranks"] == [3, 2, 1]
    assert people["k1"]["ana@x"]["ranks"] == [1, 2, 3] and "k2" not in people
    assert task.state()["agreement"]["items"] == 1

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{**tasks[3], "annotations": [ranker(["answer-0", "answer-0", "answer-1"], 3)]}]))
    with pytest.raises(InputError) as refused:
        task.import_rows(broken, format="label-studio")
    assert refused.value.problems == [f"{broken}: task 1: the ranker holds ['answer-0', 'answer-0', 'answer-1'], "
                                      "expected each of ['answer-0', 'answer-1', 'answer-2'] once"]
    assert "k3" not in latest_by_person(task.labels_path)  # nothing of a refused file is stored
    odd = tmp_path / "odd.json"  # shapes no export has: one line each, never a traceback
    odd.write_text(json.dumps([{**tasks[3], "annotations": ["x", {"result": "y"}, {"result": [{"type": "ranker",
                                                                                                "value": 3}]}]}, 5]))
    with pytest.raises(InputError) as refused:
        task.import_rows(odd, format="label-studio")
    assert refused.value.problems == [f"{odd}: task 2: expected data with the key and answers `rlhf label --export` wrote"]


def test_argilla_dataset_out_and_its_records_back_in_as_each_users_ranking(task, tmp_path):
    out = tmp_path / "todo"
    assert task.export_rows(out, format="argilla") == 4
    settings = json.loads((out / ".argilla" / "settings.json").read_text())
    assert [f["name"] for f in settings["fields"]] == ["prompt", "answer_1", "answer_2", "answer_3"]
    [question] = settings["questions"]
    assert question["type"] == "ranking" and [o["value"] for o in question["settings"]["options"]] == \
        ["answer_1", "answer_2", "answer_3"]
    assert settings["guidelines"] == "Prefer the answer that follows the instruction."
    records = json.loads((out / "records.json").read_text())
    assert records[0]["id"] == "k0" and records[0]["fields"] == {"prompt": "user: question 0", "answer_1": "a",
                                                                 "answer_2": "b", "answer_3": "c"}
    with pytest.raises(InputError, match="exists"):
        task.export_rows(out, format="argilla")  # nothing is overwritten

    # what `dataset.records.to_json` writes once two users ranked k0 (the SDK's values, best first), one k1 in
    # the server's {value, rank} items with a tie, and a draft of k2
    ana, bo = "2b6c1a8e-0c0a-4c55-9d36-1b0e4b2f6a11", "9f0e2d31-5b7a-4e0c-8a55-3c2d1e0f9a77"
    records[0]["responses"] = {"ranking": [{"value": ["answer_3", "answer_1", "answer_2"], "user_id": ana},
                                           {"value": ["answer_3", "answer_2", "answer_1"], "user_id": bo}]}
    records[1]["responses"] = {"ranking": [{"value": [{"value": "answer_2", "rank": 1}, {"value": "answer_1", "rank": 1},
                                                      {"value": "answer_3", "rank": 2}], "user_id": ana}]}
    records[2]["responses"] = {"ranking": [{"value": ["answer_1", "answer_2", "answer_3"], "user_id": bo,
                                            "status": "draft"}]}
    back = tmp_path / "ranked.json"
    back.write_text(json.dumps(records))
    assert task.import_rows(back, format="argilla") == 3
    people = latest_by_person(task.labels_path)
    assert people["k0"][f"argilla user {ana}"]["ranks"] == [2, 3, 1]
    assert people["k0"][f"argilla user {bo}"]["ranks"] == [3, 2, 1]
    assert people["k1"][f"argilla user {ana}"]["ranks"] == [1, 1, 2] and "k2" not in people
    assert task.state()["agreement"]["items"] == 1

    records[3]["responses"] = {"ranking": [{"value": ["answer_1", "answer_1", "answer_2"], "user_id": bo}]}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([records[3], {"fields": "x"}]))
    with pytest.raises(InputError) as refused:
        task.import_rows(broken, format="argilla")
    assert refused.value.problems == [
        f"{broken}: record 1: the ranking holds ['answer_1', 'answer_1', 'answer_2'], expected each of "
        "['answer_1', 'answer_2', 'answer_3'] once",
        f"{broken}: record 2: expected an id and fields as `rlhf label --export` wrote them"]
    assert "k3" not in latest_by_person(task.labels_path)


def test_argillas_own_sdk_reads_the_exported_dataset_and_writes_what_is_imported(task, tmp_path):
    rg = pytest.importorskip("argilla", reason="pip install argilla")
    httpx = pytest.importorskip("httpx")
    # the SDK checks its login before it builds anything; this answers that one call, offline
    me = {"id": "6d3c0a4e-1f2b-4c5d-8e9f-0a1b2c3d4e5f", "username": "offline", "role": "owner"}
    rg.Argilla(api_url="http://argilla.invalid", api_key="offline",
               mounts={"http://argilla.invalid": httpx.MockTransport(lambda request: httpx.Response(200, json=me))})
    out = tmp_path / "todo"
    task.export_rows(out, format="argilla")
    settings = rg.Settings.from_json(out / ".argilla" / "settings.json")
    assert settings.questions["ranking"].values == ["answer_1", "answer_2", "answer_3"]
    assert [field.name for field in settings.fields] == ["prompt", "answer_1", "answer_2", "answer_3"]
    records = [rg.Record.from_dict(record) for record in json.loads((out / "records.json").read_text())]
    assert records[0].id == "k0" and records[0].fields["answer_3"] == "c"

    user = "2b6c1a8e-0c0a-4c55-9d36-1b0e4b2f6a11"
    ranked = rg.Record(id=records[0].id, fields=dict(records[0].fields),
                       responses=[rg.Response("ranking", ["answer_2", "answer_3", "answer_1"], user_id=user)])
    back = tmp_path / "ranked.json"
    back.write_text(json.dumps([ranked.to_dict()]))  # what `dataset.records.to_json` writes for it
    assert task.import_rows(back, format="argilla") == 1
    assert latest_by_person(task.labels_path)["k0"][f"argilla user {user}"]["ranks"] == [3, 1, 2]
