"""Label Studio's own formats for ranking sampled answers (torch-free): tasks to import into a project whose
labeling config is LABEL_CONFIG (a List of the answers and a Ranker over it), and that project's JSON export
read back as rankings, one per annotation, signed by who completed it.

Label Studio's Ranker saves, per annotation, `{"type": "ranker", "value": {"ranker": {<list name>: [ids, best
first]}}}` (labelstud.io/tags/ranker); an order has no ties, so every rank is distinct.
"""

from __future__ import annotations

#: the labeling config to paste into the Label Studio project (Settings -> Labeling Interface -> Code)
LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <List name="answers" value="$answers" title="Answers: drag the best to the top"/>
  <Ranker name="rank" toName="answers"/>
</View>"""


def answer_id(index: int) -> str:
    """The id of answer `index` in a task's List."""
    return f"answer-{index}"


def rendered_prompt(prompt: list[dict]) -> str:
    """A chat prompt as the text Label Studio shows: one `role: content` paragraph per turn."""
    return "\n\n".join(f"{turn['role']}: {turn['content']}" for turn in prompt)


def tasks_of(rows: list[dict]) -> list[dict]:
    """Label Studio tasks (`{"data": ...}`) of rows `{"key", "prompt", "answers"}`."""
    return [{"data": {"key": row["key"], "prompt": rendered_prompt(row["prompt"]),
                      "answers": [{"id": answer_id(i), "title": f"Answer {i + 1}", "body": answer}
                                  for i, answer in enumerate(row["answers"])]}}
            for row in rows]


def rankings_of(export: object) -> tuple[list[dict], list[str]]:
    """(records `{"key", "ranks", "labeler"}`, problems `task N: ...`) from a Label Studio JSON export: each
    annotation that was not cancelled and holds a ranker result is one person's ranking of the task's answers."""
    if not isinstance(export, list):
        return [], ["expected Label Studio's JSON export: a list of tasks"]
    records, problems = [], []
    for number, task in enumerate(export, 1):
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("key"), str) or not isinstance(data.get("answers"), list):
            problems.append(f"task {number}: expected data with the key and answers `rlhf label --export` wrote")
            continue
        ids = [answer_id(i) for i in range(len(data["answers"]))]
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            order = _ranker_order(annotation)
            if order is None:
                continue
            if not all(isinstance(i, str) for i in order) or sorted(order) != sorted(ids):
                problems.append(f"task {number}: the ranker holds {order}, expected each of {ids} once")
                continue
            records.append({"key": data["key"], "ranks": [order.index(i) + 1 for i in ids],
                            "labeler": _who(annotation.get("completed_by"))})
    return records, problems


def _ranker_order(annotation: dict) -> list | None:
    """The ids an annotation's ranker result holds, best first (None without one)."""
    results = annotation.get("result")
    for result in results if isinstance(results, list) else []:
        value = result.get("value") if isinstance(result, dict) and result.get("type") == "ranker" else None
        ranker = value.get("ranker") if isinstance(value, dict) else None
        if isinstance(ranker, dict):
            return next((order for order in ranker.values() if isinstance(order, list)), None)
    return None


def _who(completed_by: object) -> str:
    """Label Studio's annotator: a user id, or a user object with an email."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "label-studio")
    return f"label-studio user {completed_by}" if completed_by is not None else "label-studio"
