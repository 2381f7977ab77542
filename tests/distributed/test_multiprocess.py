"""Every stage kind with 2 processes on CPU through the real `accelerate launch`: DDP and DeepSpeed ZeRO-2/3
over gloo. Artifacts have the single-process format and reload with plain transformers; the global batch
holds across process counts; a ZeRO stage killed with SIGKILL resumes."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.distributed import FSDP_REFUSAL
from core.layout import StageDirs
from core.manifest import read_manifest
from tests.helpers import (
    REPO,
    eval_stage,
    kill_during,
    ppo_stage,
    pretrain_stage,
    rank_stage,
    ranking_subset,
    reward_stage,
    rlhf,
    sample_stage,
    sft_stage,
    small_corpus,
    write_pipeline,
)

pytestmark = pytest.mark.slow

ACCELERATE = REPO / "configs" / "accelerate"
TRL_KIND_STAGES = ("dpo_ddp", "dpo_zero3", "kto_ddp", "kto_zero2", "grpo_ddp", "grpo_zero3", "rloo_ddp", "rloo_zero2")


def launched(stage: dict, config: str) -> dict:
    stage["launch"] = {"accelerate_config": str(ACCELERATE / f"{config}_cpu.yaml")}
    return stage


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Path:
    """One pipeline whose stages use different launch settings: 1 process, DDP, ZeRO-2 and ZeRO-3."""
    directory = tmp_path_factory.mktemp("multi")
    corpus = small_corpus(directory)
    pre = {"max_steps": 12, "save_every": 6, "batch_size": 8, "micro_batch_size": 2}
    chat = {"max_steps": 6, "save_every": 3}
    sft = lambda config: launched(sft_stage("pre_ddp", **chat), config)  # noqa: E731
    rankings = ranking_subset(directory / "rankings.jsonl", 100)
    rm = lambda config: launched(reward_stage("pre_ddp", rankings, **chat), config)  # noqa: E731
    ppo = lambda **settings: ppo_on(corpus, **settings)  # noqa: E731
    stages = {
        "pre_single": pretrain_stage(corpus, **pre),
        "pre_ddp": launched(pretrain_stage(corpus, **pre), "ddp"),
        "pre_zero2": launched(pretrain_stage(corpus, **pre), "zero2"),
        "pre_zero3": launched(pretrain_stage(corpus, **pre), "zero3"),
        "sft_ddp": sft("ddp"), "sft_zero3": sft("zero3"),
        "rm_ddp": rm("ddp"), "rm_zero3": rm("zero3"),
        # PPO under each engine, and the frozen models in each placement: ZeRO-3 shards offloaded to host memory
        # under ZeRO-2 training, shards under ZeRO-3 (auto), and (ppo_resume) whole replicas under ZeRO-3
        "ppo_ddp": launched(ppo(), "ddp"),
        "ppo_zero2": launched(ppo(frozen_models="shard", offload_frozen=True), "zero2"),
        "ppo_zero3": launched(ppo(), "zero3"),
        "ppo_resume": launched(ppo(frozen_models="replicate", save_every=1), "zero3"),  # run by the resume test
        "ppo_lora_zero3": launched(ppo(learning_rate=1e-2), "zero3"),  # the reference = the adapter switched off
    }
    stages["ppo_lora_zero3"]["lora"] = {"r": 4, "alpha": 8}
    # an odd ptx batch over 2 processes and 2 micro-batches each: with unequal ptx shares one rank ran a ZeRO-3
    # forward the other never joined (a hang); the shares are now rounded up to equal ones
    stages["ppo_lora_zero3"]["ppo"].update(micro_batch_size=1)
    stages["ppo_lora_zero3"]["ppo"]["ptx"]["batch_size"] = 3
    # the row stages on 2 processes: each samples, ranks or answers its share; the main one gathers in order
    rule = {"kind": "rule", "function": "stages.rank.rules:reference_overlap"}
    stages.update({
        "samples_ddp": launched(sample_stage("sft_ddp", prompts=12, save_every=4), "ddp"),
        "ranked_single": rank_stage("samples_ddp", **rule),
        "ranked_ddp": launched(rank_stage("samples_ddp", **rule), "ddp"),
        "judged_ddp": launched(eval_stage({"sft": "sft_ddp", "ppo": "ppo_ddp"}, prompts=10, judge=rule), "ddp"),
    })
    stages["ranked_single"]["save_every"] = stages["ranked_ddp"]["save_every"] = 5
    # the TRL-based kinds from the DDP SFT policy, each under DDP and a ZeRO stage (TRL's reference copies
    # become DeepSpeed engines; grpo/rloo generate with gathered ZeRO-3 weights)
    preference = {"inputs": {"model": "sft_ddp"}, "samples": {"count": 1, "max_new_tokens": 4},
                  "data": {"train": [str(rankings)], "max_length": 64, "validation_fraction": 0.2, "skip_bad_rows": True},
                  "train": {"batch_size": 8, "learning_rate": 1e-3, **chat}}
    group = {"inputs": {"model": "sft_ddp", "reward": "rm_ddp"}, "generation": {"num_generations": 4, "max_new_tokens": 8},
             "data": {"train": [str(REPO / "data" / "sft" / "chatterbot" / "train.jsonl")], "max_length": 40},
             "evaluation_prompts": 4, "train": {"batch_size": 8, "learning_rate": 1e-3, "max_steps": 3, "save_every": 3}}
    for kind, configs, settings in (("dpo", ("ddp", "zero3"), preference), ("kto", ("ddp", "zero2"), preference),
                                    ("grpo", ("ddp", "zero3"), group), ("rloo", ("ddp", "zero2"), group)):
        for config in configs:
            stages[f"{kind}_{config}"] = launched({"kind": kind, **copy.deepcopy(settings)}, config)
    for stage in ("sft_ddp", "sft_zero3"):
        stages[stage]["data"]["max_length"] = 64
    path = write_pipeline(directory / "p.yaml", stages)
    result = rlhf("run", path, "--only", *(name for name in stages if name != "ppo_resume"))
    assert result.returncode == 0, result.stdout + result.stderr
    return directory / "run"


def ppo_on(corpus: Path, frozen_models: str = "auto", offload_frozen: bool = False, **train) -> dict:
    """A 4-iteration PPO stage on the DDP-trained SFT and reward models (PPO-ptx on `corpus`)."""
    stage = ppo_stage("sft_ddp", "rm_ddp", corpus, **{"max_steps": 4, "save_every": 2, **train})
    stage["ppo"].update(frozen_models=frozen_models, offload_frozen=offload_frozen)
    return stage


def test_every_stage_kind_runs_on_two_processes_and_reloads(mixed_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    for stage in ("pre_ddp", "pre_zero2", "pre_zero3", "sft_ddp", "sft_zero3", "rm_ddp", "rm_zero3", "ppo_ddp",
                  "ppo_zero2", "ppo_zero3", *TRL_KIND_STAGES):
        manifest = read_manifest(StageDirs(mixed_run / stage))
        assert manifest["world_size"] == 2, stage
        loader = AutoModelForSequenceClassification if stage.startswith("rm") else AutoModelForCausalLM
        model = loader.from_pretrained(mixed_run / stage / "artifact")
        assert sum(p.numel() for p in model.parameters()) > 100_000  # full weights, not ZeRO-3 shards
    assert read_manifest(StageDirs(mixed_run / "pre_single"))["world_size"] == 1
    for stage in ("ppo_ddp", "ppo_zero2", "ppo_zero3"):
        ppo = read_manifest(StageDirs(mixed_run / stage))["metrics"]
        assert ppo["eval/ppo_score"] is not None and ppo["train/iterations"] == 4, stage
        critic = AutoModelForSequenceClassification.from_pretrained(mixed_run / stage / "artifact" / "critic")
        assert sum(p.numel() for p in critic.parameters()) > 100_000


def test_under_zero3_the_trainer_stages_load_their_model_as_partitions(mixed_run):
    """The training arguments come before the model, so transformers loads a pretrained one under zero.Init: no
    process ever holds the whole model (the 8B example would otherwise need a full fp32 copy per rank). A new
    model (pre_zero3) is built whole, so that it starts from the same weights under every launch."""
    for stage in ("sft_zero3", "rm_zero3"):
        log = (mixed_run / stage / "logs" / "attempt-1.log").read_text()
        assert "(loaded as ZeRO-3 partitions)" in log, stage
    for stage in ("pre_zero3", "pre_ddp", "pre_zero2", "sft_ddp", "rm_ddp"):
        assert "ZeRO-3 partitions" not in (mixed_run / stage / "logs" / "attempt-1.log").read_text(), stage


def test_zero_logs_hold_no_library_deprecation_warnings(mixed_run):
    """DeepSpeed calls torch.distributed's deprecated collectives every step: a third of a ZeRO log was those
    warnings, which no user can act on."""
    logs = sorted(mixed_run.glob("*zero*/logs/attempt-*.log"))
    assert len(logs) >= 8
    noisy = [log.parent.parent.name for log in logs if "is deprecated" in log.read_text()]
    assert not noisy, noisy


def test_the_global_batch_holds_across_process_counts_and_engines(mixed_run):
    # batch 8 = 1 process x 2 sequences x 4 accumulation steps = 2 processes x 2 x 2: the same optimization
    losses = {s: read_manifest(StageDirs(mixed_run / s))["metrics"]["eval/loss"]
              for s in ("pre_single", "pre_ddp", "pre_zero2", "pre_zero3")}
    for loss in losses.values():
        assert loss == pytest.approx(losses["pre_single"], rel=1e-4), losses
    for stage in ("sft_ddp", "sft_zero3", "rm_ddp", "rm_zero3", *TRL_KIND_STAGES):
        assert read_manifest(StageDirs(mixed_run / stage))["metrics"]["train/effective_batch"] == 8, stage


def weights(directory: Path) -> list:
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(directory).parameters())


def largest_difference(first: list, second: list) -> float:
    return max((a - b).abs().max().item() for a, b in zip(first, second))


def test_ppo_gives_the_same_policy_under_ddp_zero2_and_zero3(mixed_run):
    # the same rollouts (each process samples its share of the prompts), one joint gradient norm, the same
    # global mini-batch: only the engine differs
    ddp = weights(mixed_run / "ppo_ddp" / "artifact")
    moved = largest_difference(ddp, weights(mixed_run / "sft_ddp" / "artifact"))
    assert moved > 1e-3  # PPO changed the SFT policy
    for stage in ("ppo_zero2", "ppo_zero3"):
        assert largest_difference(weights(mixed_run / stage / "artifact"), ddp) < moved / 100, stage
    scores = {s: read_manifest(StageDirs(mixed_run / s))["metrics"]["train/last_score"]
              for s in ("ppo_ddp", "ppo_zero2", "ppo_zero3")}
    assert max(scores.values()) - min(scores.values()) < 1e-4, scores


def test_lora_ppo_under_zero3_saves_the_merged_policy_and_its_adapter(mixed_run):
    artifact = mixed_run / "ppo_lora_zero3" / "artifact"
    assert (artifact / "adapter" / "adapter_config.json").is_file()  # the adapter, for peft users
    merged = weights(artifact)  # plain transformers: the adapter merged into full weights
    assert 1e-3 < largest_difference(merged, weights(mixed_run / "sft_ddp" / "artifact"))
    assert read_manifest(StageDirs(mixed_run / "ppo_lora_zero3"))["world_size"] == 2


def test_a_killed_zero3_ppo_stage_resumes_with_the_uninterrupted_weights(mixed_run):
    path = mixed_run.parent / "p.yaml"
    step = kill_during(mixed_run / "ppo_resume", path, "--only", "ppo_resume")
    assert step < 4
    done = rlhf("run", path, "--only", "ppo_resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[ppo_resume] resuming from step-{step:06d}" in done.stdout
    manifest = read_manifest(StageDirs(mixed_run / "ppo_resume"))
    assert manifest["resumed_from_step"] == step and manifest["world_size"] == 2
    # ppo_zero3 ran the same configuration without interruption (frozen models sharded rather than replicated)
    resumed, whole = weights(mixed_run / "ppo_resume" / "artifact"), weights(mixed_run / "ppo_zero3" / "artifact")
    assert largest_difference(resumed, whole) < 1e-5


def test_a_killed_zero3_stage_resumes(tmp_path):
    corpus = small_corpus(tmp_path)
    stage = launched(pretrain_stage(corpus, max_steps=30, save_every=5, batch_size=8, micro_batch_size=2), "zero3")
    path = write_pipeline(tmp_path / "p.yaml", {"pre": stage})
    step = kill_during(tmp_path / "run" / "pre", path)
    assert step < 30
    done = rlhf("run", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[pre] resuming from step-{step:06d}" in done.stdout
    manifest = read_manifest(StageDirs(tmp_path / "run" / "pre"))
    assert manifest["resumed_from_step"] == step and manifest["metrics"]["train/steps"] == 30
    assert manifest["world_size"] == 2


def test_the_slurm_node_launcher_runs_a_stage(tmp_path):
    """launch/slurm/node_launch.sh as `srun` would start it on a one-node allocation with 2 processes."""
    import os
    import subprocess
    import sys

    corpus = small_corpus(tmp_path, paragraphs=150)
    path = write_pipeline(tmp_path / "p.yaml", {"pre": pretrain_stage(corpus, max_steps=4, save_every=10)})
    env = dict(os.environ, SLURM_NNODES="1", SLURM_NODEID="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517",
               GPUS_PER_NODE="2", PYTHON=sys.executable,
               RLHF_STAGE_LAUNCHER=f"bash {REPO / 'launch' / 'slurm' / 'node_launch.sh'}")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path), "--launch", "ddp_cpu"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_manifest(StageDirs(tmp_path / "run" / "pre"))["world_size"] == 2


def test_the_row_stages_split_their_prompts_over_two_processes_and_gather_them_in_order(mixed_run):
    import json

    def rows(stage: str, name: str) -> list[dict]:
        return [json.loads(line) for line in (mixed_run / stage / "artifact" / name).read_text().splitlines()]

    samples = rows("samples_ddp", "samples.jsonl")
    assert len(samples) == 12 and len({json.dumps(r["prompt"]) for r in samples}) == 12
    assert all(len(r["answers"]) == 4 for r in samples)
    for stage in ("samples_ddp", "ranked_ddp", "judged_ddp"):
        assert read_manifest(StageDirs(mixed_run / stage))["world_size"] == 2, stage
    # a rule labels the same on 1 and 2 processes (its noise is seeded per prompt, not per process)
    ranked = (mixed_run / "ranked_ddp" / "artifact" / "rankings.jsonl").read_bytes()
    assert ranked == (mixed_run / "ranked_single" / "artifact" / "rankings.jsonl").read_bytes()
    answers = rows("judged_ddp", "answers.jsonl")
    assert len(answers) == 10 and all(set(r["answers"]) == {"sft", "ppo"} for r in answers)
    metrics = read_manifest(StageDirs(mixed_run / "judged_ddp"))["metrics"]
    table = {entry["name"]: entry for entry in metrics["policies"]}
    assert table["sft"]["kl"] == 0.0 and table["sft"]["win_rate"] == 0.5 and table["ppo"]["kl"] != 0.0



def test_fsdp_is_refused_by_plan_and_by_a_stage_launched_by_hand_before_anything_is_written(tmp_path):
    # accelerate engages FSDP only on GPUs: on CPU such a launch silently ran DDP (the same losses to the digit)
    fsdp = yaml.safe_load((ACCELERATE / "ddp_cpu.yaml").read_text())
    fsdp.update(distributed_type="FSDP", fsdp_config={"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"})
    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text(yaml.safe_dump(fsdp))
    stage = pretrain_stage(small_corpus(tmp_path), max_steps=4)
    stage["launch"] = {"accelerate_config": str(config)}
    path = write_pipeline(tmp_path / "p.yaml", {"pre": stage})
    planned = rlhf("plan", path)
    assert planned.returncode == 2
    assert f"error: stage pre: launch.accelerate_config: {config} asks for FSDP; {FSDP_REFUSAL}" in planned.stderr
    by_hand = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m",
                              "stages.pretrain", "--config", str(path), "--stage", "pre"], capture_output=True,
                             text=True, timeout=300, cwd=REPO)
    assert by_hand.returncode != 0
    assert f"error: stage pre: the accelerate config asks for FSDP; {FSDP_REFUSAL}" in by_hand.stdout + by_hand.stderr
    assert not (tmp_path / "run" / "pre").exists()
