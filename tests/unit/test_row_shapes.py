"""Every row shape TRL reads, normalised: SFT (text, prompt/completion as strings or messages, conversations with
tool turns and extra keys), preferences (explicit and implicit prompt, strings and conversations, K-wise), and
unpaired rows refused by name."""

from __future__ import annotations

import json
import re

import pytest

from rows.records import prompt_row, ranking_row, sft_row
from rows.textfiles import BadRow

USER = {"role": "user", "content": "What is 2 * 3?"}
ASSISTANT = {"role": "assistant", "content": "6."}
TOOL_CALL = {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 3}}}]}
TOOL = {"role": "tool", "name": "multiply", "content": "6"}
TOOLS = [{"type": "function", "function": {"name": "multiply", "parameters": {"type": "object"}}}]


def test_sft_text_rows_are_language_modelling():
    assert sft_row({"text": "Once upon a time."}) == {"text": "Once upon a time."}


def test_sft_prompt_completion_as_strings_or_messages():
    assert sft_row({"prompt": USER["content"], "completion": "6."}) == {"prompt": [USER], "completion": [ASSISTANT]}
    assert sft_row({"prompt": [USER], "completion": [ASSISTANT]}) == {"prompt": [USER], "completion": [ASSISTANT]}
    # a conversational completion may hold several turns, ending with the assistant's
    row = sft_row({"prompt": [USER], "completion": [TOOL_CALL, TOOL, ASSISTANT]})
    assert row["completion"] == [TOOL_CALL, TOOL, ASSISTANT]


def test_sft_conversations_keep_tool_turns_extra_keys_and_tools():
    row = sft_row({"messages": [USER, TOOL_CALL, TOOL, {**ASSISTANT, "reasoning_content": "2 times 3"}], "tools": TOOLS})
    assert row["prompt"] == [USER, TOOL_CALL, TOOL]
    assert row["completion"] == [{**ASSISTANT, "reasoning_content": "2 times 3"}]
    assert json.loads(row["tools"]) == TOOLS  # one Arrow type for every row; TRL parses the string
    # the Nones that Parquet and Arrow give a message for keys it does not have are dropped
    from_arrow = sft_row({"messages": [{**USER, "name": None, "tool_calls": None}, {**ASSISTANT, "tool_calls": None}]})
    assert from_arrow == {"prompt": [USER], "completion": [ASSISTANT]}


@pytest.mark.parametrize("row, message", [
    ({"messages": [USER, {"role": "robot", "content": "x"}]}, "messages[1].role is 'robot'"),
    ({"messages": [USER, {"role": "user", "content": "6", "tool_calls": []}]}, "tool_calls must be a list, on an assistant"),
    ({"prompt": "p", "completion": [USER]}, "completion must end with an assistant message"),
    ({"messages": [USER, ASSISTANT], "tools": "{not json"}, "tools is a string but not JSON"),
    ({"prompt": "p", "completion": "c", "label": True}, "an unpaired preference row (prompt, completion, label: KTO's shape)"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "a preference row (chosen/rejected or answers)"),
    ({"title": "x"}, 'expected "prompt" and "completion", "messages", or "text"'),
])
def test_unusable_sft_rows_say_what_was_expected(row, message):
    with pytest.raises(BadRow, match=re.escape(message)):
        sft_row(row)


EXPECTED_PAIR = {"prompt": [USER], "answers": ["6.", "5."], "ranks": [1, 2]}


@pytest.mark.parametrize("row", [
    {"prompt": USER["content"], "chosen": "6.", "rejected": "5."},  # explicit, standard
    {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "5."}]},  # explicit, conversational
    # explicit prompt whose chosen/rejected repeat it (UltraFeedback binarized)
    {"prompt": USER["content"], "chosen": [USER, ASSISTANT], "rejected": [USER, {"role": "assistant", "content": "5."}]},
    # implicit prompt, conversational (TRL's extract_prompt shape)
    {"chosen": [USER, ASSISTANT], "rejected": [USER, {"role": "assistant", "content": "5."}]},
    # implicit prompt, an hh-rlhf transcript
    {"chosen": "\n\nHuman: What is 2 * 3?\n\nAssistant: 6.", "rejected": "\n\nHuman: What is 2 * 3?\n\nAssistant: 5."},
    {"prompt": [USER], "answers": ["6.", "5."]},  # K-wise, best first
    {"prompt": [USER], "answers": ["5.", "6."], "ranks": [2, 1]} | {"answers": ["6.", "5."], "ranks": [1, 2]},
], ids=["explicit", "explicit-conversational", "explicit-repeated", "implicit-conversational", "hh-rlhf", "k-wise",
        "k-wise-ranks"])
def test_every_preference_shape_becomes_one_ranking(row):
    assert ranking_row(row) == EXPECTED_PAIR


def test_hh_rlhf_multi_turn_transcripts_keep_their_turns():
    history = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2 * 3?\n\nAssistant:"
    row = ranking_row({"chosen": history + " 6.", "rejected": history + " I don't know."})
    assert row["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                             USER]
    assert row["answers"] == ["6.", "I don't know."]
    # two answers that begin alike still split at the turn, never inside the answer
    row = ranking_row({"chosen": history + " It is 6.", "rejected": history + " It is 5."})
    assert row["prompt"][-1] == USER and row["answers"] == ["It is 6.", "It is 5."]


def test_implicit_plain_text_splits_at_a_word_boundary():
    row = ranking_row({"chosen": "Question: colour of the sky? Answer: blue", "rejected": "Question: colour of the sky? Answer: bland"})
    assert row["prompt"] == [{"role": "user", "content": "Question: colour of the sky? Answer:"}]
    assert row["answers"] == ["blue", "bland"]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "completion": "c", "label": False}, "an unpaired preference row (prompt, completion, label: KTO's shape)"),
    ({"chosen": [USER, ASSISTANT], "rejected": [{"role": "user", "content": "other"}, ASSISTANT]}, "share no turns"),
    ({"chosen": [USER, ASSISTANT, USER, ASSISTANT], "rejected": [USER, {"role": "assistant", "content": "5."}]},
     "must share every turn but a final assistant turn"),
    ({"prompt": "p", "chosen": [USER, ASSISTANT, ASSISTANT], "rejected": "b"}, "chosen must be a string or one assistant message"),
    ({"chosen": "sky", "rejected": "sea"}, "share no beginning"),
])
def test_unusable_preference_rows_say_what_was_expected(row, message):
    with pytest.raises(BadRow, match=re.escape(message)):
        ranking_row(row)


def test_prompts_come_from_every_shape_with_their_reference():
    assert prompt_row({"prompt": USER["content"]}) == {"prompt": [USER], "best_answer": None}
    assert prompt_row({"messages": [USER, ASSISTANT]})["prompt"] == [USER]
    hh = {"chosen": "\n\nHuman: What is 2 * 3?\n\nAssistant: 6.", "rejected": "\n\nHuman: What is 2 * 3?\n\nAssistant: 5."}
    assert prompt_row(hh) == {"prompt": [USER], "best_answer": "6."}
    with pytest.raises(BadRow, match="a text row has no prompt"):
        prompt_row({"text": "Once upon a time."})


def test_unpaired_rows_and_rankings_become_labelled_answers_for_kto():
    from rows.records import unpaired_row

    assert unpaired_row({"prompt": USER["content"], "completion": "6.", "label": True}) == {
        "prompt": [USER], "completions": ["6."], "labels": [True]}
    assert unpaired_row({"prompt": [USER], "completion": [ASSISTANT], "label": False})["labels"] == [False]
    # a ranking splits at its median rank: above desirable, below undesirable, at the median left out
    four = unpaired_row({"prompt": "p", "answers": ["a", "b", "c", "d"]})
    assert (four["completions"], four["labels"]) == (["a", "b", "c", "d"], [True, True, False, False])
    three = unpaired_row({"prompt": "p", "answers": ["a", "b", "c"], "ranks": [1, 2, 3]})
    assert (three["completions"], three["labels"]) == (["a", "c"], [True, False])
    assert unpaired_row({"prompt": "p", "chosen": "a", "rejected": "b"})["labels"] == [True, False]
    with pytest.raises(BadRow, match="label must be true .desirable. or false"):
        unpaired_row({"prompt": "p", "completion": "c", "label": "yes"})


def test_sharegpt_and_alpaca_rows_are_named_shapes_and_the_input_joins_the_prompt():
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": USER["content"]},
                                  {"from": "gpt", "value": "6."}]}
    assert sft_row(sharegpt) == {"prompt": [{"role": "system", "content": "Be brief."}, USER], "completion": [ASSISTANT]}
    alpaca = {"instruction": "Multiply the numbers.", "input": "2 and 3", "output": "6."}
    joined = {"role": "user", "content": "Multiply the numbers.\n\n2 and 3"}
    assert sft_row(alpaca) == {"prompt": [joined], "completion": [ASSISTANT]}
    assert sft_row({"instruction": USER["content"], "input": "", "output": "6."})["prompt"] == [USER]
    assert prompt_row({"instruction": "Multiply the numbers.", "input": "2 and 3"})["prompt"] == [joined]
    with pytest.raises(BadRow, match="ShareGPT"):
        sft_row({"conversations": [{"from": "bot", "value": "hi"}]})
    with pytest.raises(BadRow, match="Alpaca"):
        sft_row({"instruction": "x", "input": 3, "output": "y"})
