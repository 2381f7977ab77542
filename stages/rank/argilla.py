"""Argilla's own formats (argilla 2.x) for ranking sampled answers, torch-free and without a server.

Out: a dataset folder laid out as `rg.Dataset.to_disk` writes one, which `rg.Dataset.from_disk(FOLDER,
client=client)` loads into a server: `.argilla/settings.json` (`rg.Settings.to_json`: a `prompt` field, a text
field per answer, a RankingQuestion over them, the guidelines), `.argilla/dataset.json` (the dataset's name) and
`records.json` (`dataset.records.to_json`: a record per prompt, its id the prompt's key).

In: what a labeled dataset's `dataset.records.to_json(FILE)` writes (or a `to_disk` folder), read back as
rankings, one per response of the ranking question, signed by the Argilla user id that gave it. The SDK holds a
ranking as the answers' values best first; the server's model as `{"value", "rank"}` items, ties allowed.
"""

from __future__ import annotations

from stages.rank.label_studio import rendered_prompt

#: the ranking question's name in the dataset's settings
QUESTION = "ranking"
#: where `rg.Dataset.to_disk` keeps the settings and the dataset model, and the records file beside them
SETTINGS_FILE, DATASET_FILE, RECORDS_FILE = ".argilla/settings.json", ".argilla/dataset.json", "records.json"


def answer_field(index: int) -> str:
    """The field (and ranking option) name of answer `index`."""
    return f"answer_{index + 1}"


def _text_field(name: str, *, title: str, required: bool) -> dict:
    return {"name": name, "title": title, "required": required, "description": None,
            "settings": {"type": "text", "use_markdown": False}, "type": "text"}


def settings_of(rows: list[dict], *, guidelines: str | None) -> dict:
    """`rg.Settings.serialize()` of a dataset ranking rows `{"key", "prompt", "answers"}`: every answer a field,
    required up to the fewest answers any prompt has."""
    most = max((len(row["answers"]) for row in rows), default=0)
    fewest = min((len(row["answers"]) for row in rows), default=0)
    fields = [_text_field("prompt", title="Prompt", required=True),
              *(_text_field(answer_field(i), title=f"Answer {i + 1}", required=i < fewest) for i in range(most))]
    question = {"name": QUESTION, "title": "Rank the answers, best first", "description": None, "required": True,
                "settings": {"type": "ranking", "options": [{"text": f"Answer {i + 1}", "value": answer_field(i)}
                                                            for i in range(most)]},
                "type": "ranking"}
    return {"guidelines": guidelines or "Rank the answers to the prompt from best to worst.", "questions": [question],
            "fields": fields, "vectors": [], "metadata": [], "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": 1}, "mapping": None}


def records_of(rows: list[dict]) -> list[dict]:
    """`Record.to_dict()` of each row `{"key", "prompt", "answers"}`, as `dataset.records.to_json` writes them."""
    return [{"id": row["key"],
             "fields": {"prompt": rendered_prompt(row["prompt"]),
                        **{answer_field(i): answer for i, answer in enumerate(row["answers"])}},
             "metadata": {}, "suggestions": {}, "responses": {}, "vectors": {}, "status": "pending", "_server_id": None}
            for row in rows]


def rankings_of(export: object) -> tuple[list[dict], list[str]]:
    """(records `{"key", "ranks", "labeler"}`, problems `record N: ...`) from `dataset.records.to_json`'s list:
    each submitted response to the ranking question is one person's ranking of the record's answers (a
    response marked draft or discarded is left out)."""
    if not isinstance(export, list):
        return [], ["expected Argilla's records export (`dataset.records.to_json`): a list of records"]
    records, problems = [], []
    for number, record in enumerate(export, 1):
        fields = record.get("fields") if isinstance(record, dict) else None
        if not isinstance(fields, dict) or not isinstance(record.get("id"), str):
            problems.append(f"record {number}: expected an id and fields as `rlhf label --export` wrote them")
            continue
        ids = [answer_field(i) for i in range(len(fields)) if answer_field(i) in fields]
        responses = (record.get("responses") or {}).get(QUESTION) or []
        for response in responses if isinstance(responses, list) else []:
            if not isinstance(response, dict) or response.get("status", "submitted") != "submitted":
                continue
            ranks = _ranks(response.get("value"), ids)
            if ranks is None:
                problems.append(f"record {number}: the ranking holds {response.get('value')!r}, expected each of "
                                f"{ids} once")
                continue
            records.append({"key": record["id"], "ranks": ranks, "labeler": f"argilla user {response.get('user_id')}"})
    return records, problems


def _ranks(value: object, ids: list[str]) -> list[int] | None:
    """Each answer's rank (1 = best) from a ranking response: values best first (the SDK), or `{"value",
    "rank"}` items (the server's model, where equal ranks are ties); None when it does not rank every answer once."""
    if not isinstance(value, list):
        return None
    if all(isinstance(item, dict) for item in value):
        order = [item.get("value") for item in value]
        ranks_by_id = {item.get("value"): item.get("rank", position) for position, item in enumerate(value, 1)}
    else:
        order = value
        ranks_by_id = {item: position for position, item in enumerate(value, 1) if isinstance(item, str)}
    if sorted(map(str, order)) != sorted(ids) or len(order) != len(ids):
        return None
    ranks = [ranks_by_id[i] for i in ids]
    return ranks if all(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 for rank in ranks) else None
