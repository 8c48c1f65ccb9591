"""The `rlvlm` command line. Bad input exits with status 2 and a one-paragraph message, before any model is built."""

from __future__ import annotations

import argparse
import logging
import sys

from rlvlm.recipe import RecipeError, load_recipe, parse_overrides

USAGE_ERROR = 2


def _train(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.train import train, validate, check_run_dir

    recipe = load_recipe(args.recipe, parse_overrides(extra))
    validate(recipe)
    check_run_dir(recipe)
    out = train(recipe, progress=not args.quiet)
    print(f"rlvlm: run finished in {out}")
    return 0


def _eval(args: argparse.Namespace, extra: list[str]) -> int:
    from rlvlm.evaluate import evaluate_cli

    return evaluate_cli(args, parse_overrides(extra))


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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or model id",
        description="Evaluate MODEL (a checkpoint directory or model id) on the recipe's eval sets.",
    )
    p.add_argument("model", help="checkpoint directory or model id")
    p.add_argument("--recipe", default=None, help="recipe whose data.eval and evaluation sections to use")
    p.add_argument("--out", default=None, help="directory for the trace and per-example records")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_eval)
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
