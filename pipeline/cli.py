"""`rlhf run | plan | status | report | schema | …`: exit 0 on success, 1 when a stage failed, 2 on bad input."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from rich.table import Table

from core.errors import InputError, StageFailed
from core.layout import RUN_RECORD
from core.lock import RunLock
from core.schema import LaunchSettings
from pipeline.assets import ACCELERATE_CONFIGS, EMBEDDED_PIPELINE
from pipeline.chat import chat
from pipeline.clean import apply, clean_plan, human_size
from pipeline.config import load_pipeline
from pipeline.environment import environment, package_version
from pipeline.export import export_stage, push_to_hub, verify_run
from pipeline.label_server import is_loopback, make_server, page_address
from pipeline.labeling import labeling_task
from pipeline.overrides import from_current_directory
from pipeline.plan import hasher_for, make_plan, stage_spec, stage_states
from pipeline.registry import KINDS
from pipeline.report import write_report
from pipeline.report.compare import write_comparison
from pipeline.runner import before_launch_problems, make_console, print_override_notes, run_pipeline, status_table
from pipeline.settings_doc import json_schema, kind_summaries, render_markdown, render_rows, settings_reference
from pipeline.status import show_status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="Run an RLHF pipeline (pretrain -> sft -> sample -> rank -> reward -> ppo -> eval) "
                                     "declared in one YAML file, skipping stages whose inputs did not change.")
    parser.add_argument("--version", action="version", version=f"rlhf-pipeline {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="versions of this package, Python and the stack, and the devices (for bug reports)")

    run = sub.add_parser("run", help="run every stage that is not fresh, in order; resume interrupted ones")
    run.add_argument("config", nargs="?", default=str(EMBEDDED_PIPELINE),
                     help="pipeline file (default: the embedded tiny pipeline)")
    run.add_argument("--only", nargs="+", metavar="STAGE", help="consider only these stages")
    run.add_argument("--from", dest="start", metavar="STAGE", help="consider this stage and everything downstream")
    run.add_argument("--restart", nargs="+", metavar="STAGE", default=[],
                     help="discard these stages' checkpoints and run them from step 0")
    run.add_argument("--dry-run", action="store_true", help="show the plan, launch nothing")
    run.add_argument("--launch", metavar="CONFIG", help="accelerate config for every stage of this run: a file, or a "
                     "name in configs/accelerate/ (cpu, ddp, zero2, zero3, zero3_offload, ddp_cpu, zero3_cpu, ...)")
    run.add_argument("--num-processes", type=int, metavar="N", help="processes per stage for this run")

    plan = sub.add_parser("plan", help="what `rlhf run` would do, and why")
    plan.add_argument("config", nargs="?", default=str(EMBEDDED_PIPELINE))
    for command in (run, plan):
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                             help="override a value of the file for this command (YAML; checked like the file), "
                                  "e.g. stages.sft.train.learning_rate=1e-5; a relative path is read from the "
                                  "current directory (run_dir, and values naming an existing file or folder)")
        command.add_argument("--no-overrides", action="store_true",
                             help="leave out the overrides a run saved with --save-overrides")
    run.add_argument("--save-overrides", action="store_true",
                     help="keep this run's overrides (saved ones and --set): later commands on this file apply them")

    spec = sub.add_parser("spec", help="print the spec.json of one stage (what `accelerate launch -m stages.<kind> "
                          "--config CONFIG --stage NAME` runs; its state says whether it is fresh)")
    spec.add_argument("config")
    spec.add_argument("--stage", required=True)
    spec.add_argument("--restart", action="store_true")

    report = sub.add_parser("report", help="write RUN_DIR/report/ (report.md, report.html, plots); with several "
                            "runs, a comparison of them in --to DIR")
    report.add_argument("targets", nargs="*", default=[str(EMBEDDED_PIPELINE)], metavar="TARGET",
                        help="RUN_DIR or pipeline file; several: compare them side by side")
    report.add_argument("--to", type=Path, help="the folder of a comparison (compare.md, compare.html, plots/)")

    clean = sub.add_parser("clean", help="remove checkpoints of complete stages (and, with --yes, their artifacts)")
    clean.add_argument("target", help="RUN_DIR or pipeline file")
    clean.add_argument("--keep-artifacts", action="store_true",
                       help="remove only checkpoints and leftovers: every stage stays fresh")
    clean.add_argument("--yes", action="store_true", help="also remove the artifacts of complete stages")
    clean.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")

    status = sub.add_parser("status", help="a table of the stages of a run directory (or of a pipeline file)")
    status.add_argument("target", nargs="?", default=str(EMBEDDED_PIPELINE), help="RUN_DIR or pipeline file")
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) while a run is going")

    label = sub.add_parser("label", help="people rank a rank stage's sampled answers: a local page, or JSONL export/import")
    label.add_argument("target", help="RUN_DIR or pipeline file")
    label.add_argument("--stage", help="the rank stage (default: the only one whose labeler is human)")
    label.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    label.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    label.add_argument("--export", type=Path, metavar="FILE", help="write the unlabeled prompts and answers")
    label.add_argument("--import", dest="import_file", type=Path, metavar="FILE",
                       help="append rankings ({prompt, answers, ranks}, or key and ranks; or a tool's export)")
    label.add_argument("--format", choices=("jsonl", "label-studio", "argilla"), default="jsonl",
                       help="of --export / --import: ours (JSONL); Label Studio's tasks and JSON export (the "
                            "export writes the project's labeling config beside the tasks, FILE.label-config.xml); "
                            "Argilla's: --export FOLDER for rg.Dataset.from_disk, --import the file "
                            "dataset.records.to_json wrote")

    verify = sub.add_parser("verify", help="check every stage's artifact against the sha256 its manifest recorded "
                            "(before sharing, exporting or trusting a run directory you received)")
    verify.add_argument("target", help="RUN_DIR or pipeline file")

    chat = sub.add_parser("chat", help="talk to a stage's model in the terminal (its chat template, streamed)")
    chat.add_argument("target", help="RUN_DIR or pipeline file")
    chat.add_argument("stage")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--system", help="a system message before the first turn")
    chat.add_argument("--seed", type=int, help="the same seed and lines give the same answers")
    schema = sub.add_parser("schema", help="a stage kind's settings: key, type, default and what each does")
    schema.add_argument("kind", nargs="?", help="a stage kind (sft, ppo, dpo, ...); left out: every kind, one line each "
                        "(with --markdown: docs/settings.md, every kind's settings)")
    schema.add_argument("--json", action="store_true", help="the kind's JSON Schema, for editors and tools")
    schema.add_argument("--markdown", action="store_true", help="as a markdown section with a table")
    export = sub.add_parser("export", help="a clean model folder of a stage (weights, tokenizer, adapter, model card)")
    export.add_argument("target", help="RUN_DIR or pipeline file")
    export.add_argument("stage")
    export.add_argument("--to", type=Path, required=True, metavar="DIR", help="a new or empty folder")
    export.add_argument("--push-to-hub", metavar="OWNER/NAME", help="also upload the folder to this Hub model repo")
    export.add_argument("--private", action="store_true", help="create the Hub repo private")
    return parser


def launch_override(config: str | None, num_processes: int | None):
    """LaunchSettings from `--launch` (a file, or a name in configs/accelerate/) and `--num-processes`."""

    path = None
    if config:
        named = ACCELERATE_CONFIGS / f"{config}.yaml"
        path = Path(config).resolve() if Path(config).is_file() else named
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
            raise InputError(f"--launch {config}: no such file, and not a name in {ACCELERATE_CONFIGS} ({names})")
    if num_processes is not None and num_processes < 1:
        raise InputError(f"--num-processes {num_processes}: expected a positive number")
    return LaunchSettings.model_construct(accelerate_config=str(path) if path else None, num_processes=num_processes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rlhf` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            pipeline = _load_with_overrides(args)
            if args.launch or args.num_processes:
                pipeline.override = launch_override(args.launch, args.num_processes)
            run_pipeline(pipeline, args.only, args.start, restart=args.restart, dry_run=args.dry_run,
                         save_overrides=args.save_overrides)
        elif args.command == "plan":
            _plan(_load_with_overrides(args))
        elif args.command == "spec":
            print(json.dumps(_spec(Path(args.config), args.stage, args.restart)))
        elif args.command == "report":
            print(f"report: {_report(args.targets, args.to)}")
        elif args.command == "clean":
            _clean(Path(args.target), args.keep_artifacts, args.yes, dry_run=args.dry_run)
        elif args.command == "status":
            _status(Path(args.target), args.watch)
        elif args.command == "label":
            _label(Path(args.target), args)
        elif args.command == "env":
            for name, value in environment().items():
                print(f"- {name}: {value}")
        elif args.command == "chat":
            return chat(_pipeline_of(Path(args.target)), args.stage, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_p=args.top_p, system=args.system, seed=args.seed)
        elif args.command == "schema":
            print(_schema(args.kind, as_json=args.json, as_markdown=args.markdown), end="")
        elif args.command == "verify":
            return _verify(Path(args.target))
        elif args.command == "export":
            folder = export_stage(_pipeline_of(Path(args.target)), args.stage, args.to)
            print(f"exported {args.stage} to {folder}", flush=True)
            if args.push_to_hub:
                try:
                    print(f"pushed to {push_to_hub(folder, args.push_to_hub, private=args.private)}")
                except Exception as e:  # the Hub client's own errors (offline, auth, network) in one line
                    print(f"error: --push-to-hub {args.push_to_hub}: {type(e).__name__}: {e}", file=sys.stderr)
                    return 1
    except InputError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rlhf schema ppo | head`: the reader left; Python's own advice, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


def _load_with_overrides(args: argparse.Namespace):
    """The pipeline file of `run`/`plan` with the saved overrides (unless --no-overrides), then this command's
    --set, their relative paths read from the current directory."""
    given = from_current_directory(args.overrides, cwd=Path.cwd())
    return load_pipeline(args.config, given, recorded=not args.no_overrides)


def _plan(pipeline) -> None:
    console = make_console()
    print_override_notes(pipeline, console)
    try:
        plan = make_plan(pipeline)
    except InputError as e:  # a conflict: still show the table, then the problem
        make_console().print(status_table(stage_states(pipeline)))
        raise e
    make_console().print(status_table(plan.statuses, plan))
    problems = before_launch_problems(pipeline, plan.to_run)  # what `rlhf run` would refuse before launching
    if problems:
        raise InputError(problems)


def _spec(config: Path, stage: str, restart: bool) -> dict:
    """The spec of one stage as `rlhf run` would write it, for a stage launched by hand."""
    pipeline = load_pipeline(config)
    if stage not in pipeline.stages:
        raise InputError(f"--stage {stage}: no such stage in {config} (stages: {', '.join(pipeline.stages)})")
    hasher = hasher_for(pipeline)
    return stage_spec(pipeline, stage, stage_states(pipeline, hasher), hasher=hasher, restart=restart)


def _report(targets: list[str], to: Path | None) -> Path:
    """One run's report in its run directory, or several runs compared in `to`."""
    if len(targets) == 1:
        if to is not None:
            raise InputError("--to: only for a comparison of several runs (one run's report goes to RUN_DIR/report/)")
        return write_report(_pipeline_of(Path(targets[0])))
    if to is None:
        raise InputError(f"rlhf report {' '.join(targets)}: several runs are compared into a folder; give --to DIR")
    pipelines = [_pipeline_of(Path(target)) for target in targets]
    inside = [p.run_dir for p in pipelines if p.run_dir.resolve() in (to.resolve(), *to.resolve().parents)]
    if inside:
        raise InputError(f"--to {to}: inside the run directory {inside[0]}; write the comparison outside the runs")
    return write_comparison(pipelines, to)


def _status(target: Path, watch: float | None = None) -> None:
    """Status of a pipeline file (saying which overrides it applies), or of a run directory through the
    pipeline file its stages recorded (as that run was made)."""
    pipeline, console = _pipeline_of(target), make_console()
    if not target.is_dir():
        print_override_notes(pipeline, console)
    show_status(pipeline, console, watch)


def _clean(target: Path, keep_artifacts: bool, yes: bool, *, dry_run: bool) -> None:
    pipeline = _pipeline_of(target)
    console = make_console()
    console.print(f"run directory: {pipeline.run_dir}")
    with contextlib.nullcontext() if dry_run else RunLock(pipeline.run_dir):  # never under a running `rlhf run`
        removals, kept = clean_plan(pipeline, keep_artifacts)
        table = Table(show_edge=False, pad_edge=False)
        for column in ("stage", "path", "size", "why"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for r in removals:
            table.add_row(r.stage, str(r.path.relative_to(pipeline.run_dir)), human_size(r.size), r.why)
        total = human_size(sum(r.size for r in removals))
        if removals:
            console.print(table)
        for note in kept:
            console.print(note)
        if not removals:
            console.print("nothing to remove")
            return
        artifacts = [r for r in removals if r.path.name == "artifact"]
        if dry_run:
            console.print(f"dry run: {len(removals)} paths, {total} would be removed")
            return
        if artifacts and not yes:
            raise InputError(f"this removes the artifacts of {len(artifacts)} complete stage(s); add --yes to confirm, "
                             "or --keep-artifacts to remove only checkpoints")
        apply(removals, pipeline.run_dir)
        console.print(f"removed {len(removals)} paths, {total} from {pipeline.run_dir}")


def _schema(kind: str | None, *, as_json: bool, as_markdown: bool) -> str:
    """What `rlhf schema` prints: one kind's settings (text, JSON Schema or markdown), every kind's one-line
    description, or with --markdown and no kind the whole settings reference (docs/settings.md)."""
    if kind is None:
        if as_json:
            raise InputError("rlhf schema --json: name a kind (kinds: " + ", ".join(KINDS) + ")")
        if as_markdown:
            return settings_reference()
        return "".join(f"{name}: {summary}\n" for name, summary in kind_summaries()) + \
            "rlhf schema KIND: a kind's settings\n"
    if as_json:
        return json.dumps(json_schema(kind), indent=2) + "\n"
    return (render_markdown(kind) if as_markdown else render_rows(kind)) + "\n"


def _verify(target: Path) -> int:
    """Print each stage's verdict; 1 when any artifact differs from its manifest."""
    pipeline = _pipeline_of(target)
    print(f"run directory: {pipeline.run_dir}")
    found = verify_run(pipeline)
    for stage, problems in found.items():
        print(f"{stage}: {'ok' if not problems else '; '.join(problems)}")
    if not found:
        print("no stage has a manifest yet")
    return 1 if any(found.values()) else 0


def _label(target: Path, args: argparse.Namespace) -> None:
    """Serve the labeling page until Ctrl-C, or export / import labels."""
    task = labeling_task(_pipeline_of(target), args.stage)
    if args.export:
        print(f"{args.export}: {task.export_rows(args.export, format=args.format)} unlabeled items of {task.stage}")
        return
    if args.import_file:
        count = task.import_rows(args.import_file, format=args.format)
        state = task.state()
        print(f"{task.stage}: {count} labels imported; {state['labeled']}/{task.min_labeled} ranked")
        return
    try:
        server = make_server(task, args.host, args.port)
    except OSError as e:
        raise InputError(f"--host {args.host} --port {args.port}: cannot serve there ({e.strerror or e}); "
                         "pick another port, or --port 0 for any free one") from None
    state = task.state()
    if not is_loopback(args.host):
        print(f"WARNING: --host {args.host} serves every prompt and answer of {task.stage} to anyone who can reach "
              "this machine and has the address below (its token is the only lock); serve on 127.0.0.1 and "
              "forward the port (ssh -L) unless that network is yours", file=sys.stderr, flush=True)
    print(f"labeling {task.stage}: {state['labeled']}/{task.min_labeled} ranked, {state['handled']} of {state['total']} "
          f"handled; open {page_address(server)} (Ctrl-C to stop: every submission is already saved)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _pipeline_of(target: Path):
    """The pipeline of a pipeline file, or of a run directory (through the file its stages recorded)."""

    if target.is_dir():
        recorded = _recorded_pipeline(target)
        if recorded is None:
            raise InputError(f"{target}: not a run directory with a readable pipeline file (no stage's spec.json "
                             "or manifest.json names one that still exists)")
        return load_pipeline(recorded, run_dir=target)
    return load_pipeline(target)


def _recorded_pipeline(run_dir: Path) -> Path | None:
    """The pipeline file the latest `rlhf run` in `run_dir` ran, else one its stages' records name."""
    records = [run_dir / RUN_RECORD, *sorted(run_dir.glob("*/manifest.json")), *sorted(run_dir.glob("*/spec.json"))]
    for record in records:
        try:
            path = Path(json.loads(record.read_text())["pipeline"])
        except (OSError, ValueError, KeyError):
            continue
        if path.is_file():
            return path
    return None


if __name__ == "__main__":
    sys.exit(main())
