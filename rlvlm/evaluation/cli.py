"""`rlvlm eval`: one model (`rlvlm eval MODEL`), a run's checkpoints as they appear (`--follow RUN_DIR`),
or the cost of a recipe's evaluation (`--plan RECIPE`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rlvlm.evaluation import trace
from rlvlm.evaluation.distributed import broadcast, process_state
from rlvlm.evaluation.evaluator import Evaluator
from rlvlm.evaluation.results import format_rows
from rlvlm.evaluation.scoring import load_scorer


def infer_step(model: str) -> int:
    """The training step of a checkpoint directory (`checkpoint-N`, or its trainer_state.json), else 0."""
    path = Path(model)
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    if m:
        return int(m.group(1))
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text()).get("global_step", 0))
        except (ValueError, TypeError, json.JSONDecodeError):
            return 0
    return 0


def default_out(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path / "eval"
    return Path("runs") / "eval" / re.sub(r"[^A-Za-z0-9._-]+", "_", model)


def recipe_for_eval(recipe_path: str | None, overrides: dict):
    """The recipe whose data.eval and evaluation sections an evaluation uses (the defaults without one)."""
    from rlvlm.recipe import build_recipe, load_recipe, set_dotted

    if recipe_path:
        return load_recipe(recipe_path, overrides)
    raw: dict = {"name": "eval"}
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return build_recipe(raw)


def load_model(name: str, section=None):
    """A VLM and its processor from a directory or model id, on this process's device, loaded as the
    recipe's model section says (dtype, attention kernel: `models.model_init_kwargs`, as for training)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rlvlm.models import model_init_kwargs
    from rlvlm.recipe import ModelSection

    processor = AutoProcessor.from_pretrained(name)
    kwargs = model_init_kwargs(section if section is not None else ModelSection())
    model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
    return model.to(process_state().device), processor


def evaluate_model(args, overrides: dict) -> int:
    """`rlvlm eval MODEL [--recipe R] [--out DIR] [--conditions a,b] [--step N] [--key value ...]`."""
    from rlvlm.data.load import check_dataset
    from rlvlm.models import check_model_name, is_tiny, resolve_model, warm_start_model
    from rlvlm.recipe import ModelSection, RecipeError

    recipe = recipe_for_eval(args.recipe, overrides)
    section = ModelSection(**{**recipe.model.model_dump(), "name": args.model})
    check_model_name(section)
    if not is_tiny(section) and "/" not in args.model and not Path(args.model).exists():
        raise RecipeError(f"Model path '{args.model}' does not exist (a model id has the form 'org/name').")
    for spec in recipe.data.eval:
        check_dataset(spec)
    scorer = load_scorer(recipe.evaluation)  # a bad faithfulness scorer fails before the model is built
    if callable(getattr(scorer, "probe", None)):  # and a judge that does not answer, too
        from rlvlm.preflight import check_judges

        check_judges([("evaluation.faithfulness", scorer)])

    step = args.step if getattr(args, "step", None) is not None else infer_step(args.model)
    out = Path(args.out) if args.out else default_out(args.model)
    progress = not getattr(args, "quiet", False)
    path = resolve_model(section, progress=progress)
    path = warm_start_model(section, path, recipe.warm_start, progress=progress)
    try:
        model, processor = load_model(path, recipe.model)
    except (OSError, ValueError) as e:  # not a model directory, or one without a processor
        raise RecipeError(
            f"Cannot load model '{args.model}': it is neither a model directory nor a model id available offline ({e})."
        ) from None
    evaluator = Evaluator.from_recipe(recipe, processor)
    main = process_state().is_main_process
    pending = broadcast(trace.todo(out, step, evaluator.keys()) if main else None)
    if not pending:
        print(f"rlvlm eval: step {step} is already in {out / trace.TRACE}; nothing to do.")
        return 0
    bases = trace.base_records(out, step) if main else []
    try:
        result = evaluator.run(model, step, only=pending, base_records=bases)
    finally:
        close = getattr(getattr(evaluator, "scorer", None), "close", None)
        if callable(close):
            close()  # a judge's HTTP client
    if main:
        trace.write_result(out, result)
        print(format_rows(sorted(result.trace, key=lambda r: (r["dataset"], r["condition"]))))
        print(f"rlvlm eval: {len(result.trace)} rows in {result.seconds:.1f}s -> {out / trace.TRACE}, {trace.records_path(out, step)}")
    return 0


def plan_cli(args, overrides: dict) -> int:
    from rlvlm.data.load import known_datasets
    from rlvlm.evaluation.plan import plan
    from rlvlm.recipe import RecipeError, load_recipe

    if args.tokens_per_s is not None and args.tokens_per_s <= 0:
        raise RecipeError(f"--tokens_per_s must be positive, got {args.tokens_per_s}.")
    recipe = load_recipe(args.plan, overrides)
    for spec in recipe.data.eval:  # the names only: a plan comes before the data is fetched
        if spec.name not in known_datasets():
            raise RecipeError(f"Unknown dataset '{spec.name}'. Known: {known_datasets()}.")
    print(json.dumps(plan(recipe, args.tokens_per_s, args.tokens_per_generation), indent=1))
    return 0


def evaluate_cli(args, overrides: dict) -> int:
    from rlvlm.recipe import RecipeError

    overrides = dict(overrides)
    if getattr(args, "conditions", None):
        overrides["evaluation.conditions"] = [c.strip() for c in args.conditions.split(",") if c.strip()]
    chosen = [name for name, given in (("MODEL", args.model), ("--follow", args.follow), ("--plan", args.plan)) if given]
    if len(chosen) != 1:
        raise RecipeError("rlvlm eval takes one of MODEL, --follow RUN_DIR or --plan RECIPE"
                          + (f"; got {' and '.join(chosen)}." if chosen else "."))
    if args.plan:
        return plan_cli(args, overrides)
    if args.follow:
        from rlvlm.evaluation.follow import Follower

        if overrides:
            raise RecipeError("rlvlm eval --follow reads the run's own recipe (RUN_DIR/recipe.yaml); "
                              f"it takes no overrides (got {', '.join('--' + k for k in overrides)}).")
        follower = Follower(Path(args.follow), progress=not args.quiet)
        return follower.run(poll_seconds=args.poll, max_wait_seconds=args.max_wait)
    return evaluate_model(args, overrides)
