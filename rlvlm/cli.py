"""The `rlvlm` command line. Bad input exits with status 2 and a one-paragraph message, before any model is built."""

from __future__ import annotations

import argparse
import logging
import sys

from rlvlm.recipe import RecipeError, load_recipe, parse_overrides

USAGE_ERROR = 2


def _train(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.train import RunStopped, train

    recipe = load_recipe(args.recipe, parse_overrides(extra))
    try:
        out = train(recipe, progress=not args.quiet)
    except RunStopped as e:
        print(f"rlvlm train: {e}", file=sys.stderr)
        _end_distributed()
        return 1
    print(f"rlvlm: run finished in {out}")
    _end_distributed()
    return 0


def _end_distributed() -> None:
    """Leave the process group together: a rank that exits while another still holds its gloo/NCCL
    connections can be aborted (SIGABRT) at interpreter shutdown."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def _eval(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.evaluation.cli import evaluate_cli

    code = evaluate_cli(args, parse_overrides(extra))
    _end_distributed()
    return code


def _report(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.report import report_cli

    if extra:
        raise RecipeError(f"Unexpected argument(s) {' '.join(extra)}; usage: rlvlm report RUN_DIR [RUN_DIR ...] [--out DIR].")
    return report_cli(args)


def _sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.sweep import sweep_cli

    code = sweep_cli(args, parse_overrides(extra))
    _end_distributed()
    return code


def _bench(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.bench import bench_cli

    if extra:
        raise RecipeError(f"Unexpected argument(s) {' '.join(extra)}; usage: rlvlm bench [--out FILE.json] [--quick] [--gpu-only].")
    if args.gpu_only:
        import torch

        if not torch.cuda.is_available():
            raise RecipeError("rlvlm bench --gpu-only measures GPU throughput, and torch sees no CUDA device here.")
    return bench_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlvlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="GRPO fine-tuning from a recipe",
        description="Train from RECIPE.yaml. Any recipe key can be overridden as --key value "
        "(GRPOConfig keys such as --max_steps, --save_steps, --seed, --output_dir; section keys dotted, "
        "e.g. --model.name Qwen/Qwen2.5-VL-7B-Instruct). Resume a run with --resume_from_checkpoint true.",
    )
    p.add_argument("recipe", help="path to the recipe YAML")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no printed log lines "
                   "(the logs still reach trainer_state.json and report_to)")
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or model id, follow a run's checkpoints, or plan an evaluation's cost",
        description="rlvlm eval MODEL: evaluate MODEL (a checkpoint directory, a model id, or 'tiny') on the "
        "recipe's eval sets under its evaluation conditions (default: all eight), writing OUT/trace.jsonl rows "
        "(the same schema as a run's eval/trace.jsonl), OUT/records/step_XXXXXX.jsonl, OUT/auroc.jsonl and "
        "OUT/signals.jsonl; a step already in OUT/trace.jsonl is not evaluated again. "
        "rlvlm eval --follow RUN_DIR: evaluate a run trained with evaluation.mode: follow, the starting model "
        "as step 0 and then each checkpoint as it appears, into RUN_DIR/eval; exits 0 once the run has finished "
        "and its last checkpoint is evaluated; killed and started again, it goes on where its trace stops. "
        "rlvlm eval --plan RECIPE: print one JSON object with what one checkpoint's evaluation costs. "
        "Recipe keys can be overridden as --key value (e.g. --evaluation.max_new_tokens 32).",
    )
    p.add_argument("model", nargs="?", default=None, help="checkpoint directory, model id, or 'tiny'")
    p.add_argument("--follow", default=None, metavar="RUN_DIR", help="evaluate RUN_DIR's checkpoints as they appear")
    p.add_argument("--plan", default=None, metavar="RECIPE", help="print what the recipe's evaluation costs (JSON)")
    p.add_argument("--tokens_per_s", type=float, default=None, help="with --plan: the evaluator's generation "
                   "rate, generated tokens/s of all its GPUs together, for hours per checkpoint and per run")
    p.add_argument("--tokens_per_generation", type=float, default=None, help="with --plan: mean generated tokens "
                   "per response (default: evaluation.max_new_tokens, an upper bound)")
    p.add_argument("--poll", type=float, default=30.0, help="with --follow: seconds between looks for new checkpoints")
    p.add_argument("--max_wait", type=float, default=None, help="with --follow: give up (exit 2) after this many "
                   "seconds without a new checkpoint (default: wait until the run finishes)")
    p.add_argument("--recipe", default=None, help="recipe whose data.eval and evaluation sections to use "
                   "(default: the built-in defaults)")
    p.add_argument("--out", default=None, help="directory for the trace and per-example records "
                   "(default: MODEL/eval for a directory, runs/eval/<model id> otherwise)")
    p.add_argument("--conditions", default=None, help="comma-separated subset of the eight conditions, e.g. base,wrong_think")
    p.add_argument("--step", type=int, default=None, help="step recorded in the rows (default: N of a checkpoint-N "
                   "directory, else 0)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_eval)

    p = sub.add_parser(
        "report",
        help="plots and tables from evaluation traces",
        description="Write PNG plots (accuracy-consistency trajectory, accuracy and consistency per condition, "
        "option entropy and P(correct) over steps, shortcut signals) and report.md with tables, for one or "
        "several runs side by side. RUN_DIR holds eval/trace.jsonl (or is a directory written by rlvlm eval).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report for one run, "
                   "./rlvlm-report for several)")
    p.set_defaults(run=_report)

    p = sub.add_parser(
        "sweep",
        help="run every (configuration, seed) of a sweep recipe and compare them",
        description="Run each (configuration, seed) of SWEEP.yaml as an ordinary run under DIR/<config>/seed<N>/ "
        "(overrides --key value apply to every run; finished runs are skipped on a re-run), then write "
        "DIR/ablation.json, DIR/ablation.md and plots comparing the configurations.",
    )
    p.add_argument("recipe", help="path to the sweep recipe YAML")
    p.add_argument("--output_dir", default=None, help="sweep directory (default: runs/<sweep name>)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each an `rlvlm train` process with "
                   "an equal share of the CPU threads and its own GPU(s); output in DIR/<config>/seed<N>.log (default 1: "
                   "one after another in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no printed log lines "
                   "(the logs still reach trainer_state.json and report_to)")
    p.set_defaults(run=_sweep)

    p = sub.add_parser(
        "bench",
        help="measure trainer overhead, evaluator and reward cost (and GPU throughput on a GPU)",
        description="Time rlvlm against plain TRL on the embedded default, side by side, medians of several "
        "repeats; print a table and write JSON.",
    )
    p.add_argument("--out", default="bench.json", help="JSON file to write (default: bench.json)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run, not a measurement)")
    p.add_argument("--gpu-only", action="store_true", help="only the GPU throughput (needs a CUDA device)")
    p.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, extra)
    except RecipeError as e:
        print(f"rlvlm {args.command}: error: {e}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
