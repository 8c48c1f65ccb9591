"""The robustness evaluator (DESIGN.md, "Metrics" and "Evaluation trace").

For a model and a step it builds every (eval set x condition) prompt, runs ONE batched greedy
generation and ONE teacher-forced pass per batch (cut after the generated think and `<answer>`,
logits restricted to the option letters and renormalised), scores accuracy and consistency with
the recipe's faithfulness scorer, and returns:

- trace rows (`eval/trace.jsonl`, the exact schema of DESIGN.md), one per (step, dataset, condition);
- per-example records (`eval/records/step_XXXXXX.jsonl`);
- per dataset and perturbation, the AUROC of base P(correct) for staying correct (`eval/auroc.jsonl`);
- shortcut signals per condition: think length, distinct-2, identical thinks (`eval/signals.jsonl`).

Distributed (accelerate): batches are planned globally (sorted by prompt length, fixed composition),
dealt round-robin to processes, every process runs the same number of forward passes, results are
gathered and only the main process scores and writes — rows equal those of a one-process run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlvlm.metrics import robustness_auroc, shortcut_signals, trace_row

log = logging.getLogger("rlvlm.evaluate")

ANSWER_OPEN = "<answer>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TRACE = "trace.jsonl"
AUROC = "auroc.jsonl"
SIGNALS = "signals.jsonl"
ERRORS = "errors.jsonl"
RECORDS = "records"
SIGNAL_METRICS = ("think_words", "distinct_2", "identical_share", "empty_think_share", "format", "answered")
LOG_METRICS = ("accuracy", "consistency", "consistent_accuracy", "option_entropy", "p_correct")


class EvaluationError(RuntimeError):
    """The evaluator failed (on any process); raised on every process alike."""


# ============================================================================ eval sets and prompts


def dataset_labels(specs) -> list[str]:
    """A unique label per eval DatasetSpec: its name, qualified by split (then position) when repeated."""
    names = [s.name for s in specs]
    labels = [s.name if names.count(s.name) == 1 else f"{s.name}-{s.split}" for s in specs]
    return [lab if labels.count(lab) == 1 else f"{lab}-{i}" for i, lab in enumerate(labels)]


def load_eval_sets(recipe) -> dict[str, list[dict]]:
    from rlvlm.data.load import load_examples

    return {label: load_examples(spec) for label, spec in zip(dataset_labels(recipe.data.eval), recipe.data.eval)}


def resolve_conditions(conditions) -> tuple[str, ...]:
    from rlvlm.perturb import CONDITIONS

    if not conditions:
        return CONDITIONS
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; valid: {', '.join(CONDITIONS)}")
    return tuple(conditions)


def prepare_items(eval_sets: dict[str, list[dict]], conditions, seed: int = 0) -> list[dict]:
    """Prompt-ready examples for every (dataset, condition); an example a condition cannot be built
    for (e.g. a non-numeric free-form answer under wrong_*) is left out of that condition."""
    from rlvlm.perturb import perturb

    items, skipped = [], 0
    for label, examples in eval_sets.items():
        for condition in conditions:
            for i, ex in enumerate(examples):
                try:
                    item = perturb(ex, condition, seed=seed + i)
                except ValueError:
                    skipped += 1
                    continue
                item["dataset"] = label
                items.append(item)
    if skipped:
        log.warning("%d (example, condition) pairs cannot be built and are left out of the evaluation", skipped)
    return items


def _images(item: dict) -> list:
    if item.get("images") is not None:
        return list(item["images"])
    return [item["image"]] if item.get("image") is not None else []


def forced_answer_suffix(think_prefix: str | None, completion: str) -> str:
    """The completion cut right where the answer letter goes: after its first `<answer>` (and an
    opening parenthesis it wrote there), closing the think and opening the answer when the model did
    not. Returned relative to the end of the prompt (which already holds any think prefix)."""
    prefix = think_prefix or ""
    response = prefix + completion
    k = response.find(ANSWER_OPEN, len(prefix))
    if k >= 0:
        end = k + len(ANSWER_OPEN)
        m = re.match(r"\s*\(", response[end:])
        cut = response[: end + (m.end() if m else 0)]
    else:
        j = response.find(THINK_CLOSE)
        if j < 0:
            cut = response + THINK_CLOSE + ANSWER_OPEN
        else:
            cut = response[: max(j + len(THINK_CLOSE), len(prefix))] + ANSWER_OPEN
    return cut[len(prefix) :]


def own_think(think_prefix: str | None, think: str | None) -> str:
    """The part of the think the model wrote itself (a pre-filled open think is removed; a pre-filled
    closed think leaves nothing)."""
    if not think:
        return ""
    if think_prefix:
        if THINK_CLOSE in think_prefix:
            return ""
        pre = think_prefix.split(THINK_OPEN, 1)[-1].strip()
        if think.startswith(pre):
            return think[len(pre) :].strip()
    return think


# ============================================================================ model passes


def _letter_token_ids(tokenizer, n_options: int) -> list[list[int]]:
    """Per option letter, the single-token spellings of it ("B" and " B") that the tokenizer has."""
    out = []
    for k in range(n_options):
        letter = chr(ord("A") + k)
        ids = []
        for text in (letter, " " + letter):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise EvaluationError(f"the tokenizer has no single token for option letter {letter!r}")
        out.append(ids)
    return out


def _encode(processor, texts: list[str], images: list[list]):
    tok = getattr(processor, "tokenizer", processor)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        kwargs = {"images": images} if any(images) else {}
        return processor(text=texts, padding=True, return_tensors="pt", **kwargs)
    finally:
        tok.padding_side = side


def run_batch(model, processor, items: list[dict], max_new_tokens: int, letter_ids_cache: dict) -> list[tuple]:
    """(completion, option probabilities) per item: one greedy `generate`, one teacher-forced forward."""
    import torch

    tok = getattr(processor, "tokenizer", processor)
    images = [_images(it) for it in items]
    enc = _encode(processor, [it["_text"] for it in items], images).to(model.device)
    gen = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        use_cache=True,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    completions = processor.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    texts = [it["_text"] + forced_answer_suffix(it.get("think_prefix"), c) for it, c in zip(items, completions)]
    enc = _encode(processor, texts, images).to(model.device)
    logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
    out = []
    for row, it, completion in zip(logits, items, completions):
        n = len(it.get("options") or [])
        if n == 0:
            out.append((completion, []))
            continue
        if n not in letter_ids_cache:
            letter_ids_cache[n] = _letter_token_ids(tok, n)
        groups = letter_ids_cache[n]
        flat = [i for g in groups for i in g]
        p = torch.softmax(row[flat], dim=-1).tolist()
        probs, k = [], 0
        for g in groups:
            probs.append(float(sum(p[k : k + len(g)])))
            k += len(g)
        out.append((completion, probs))
    return out


def plan_batches(items: list[dict], batch_size: int) -> list[list[int]]:
    """Global batches of fixed composition (by prompt length, then position), whatever the process count."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i]["_text"]), i))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _state():
    """accelerate's process state. Several processes without a GPU (launch/accelerate/multi_cpu.yaml)
    join one gloo group as CPU processes, as `Recipe.grpo_kwargs` arranges for training."""
    from accelerate import PartialState

    import torch

    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    return PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not gpu)


def _all_gather(obj: list) -> list:
    if _state().num_processes == 1:
        return obj
    from accelerate.utils import gather_object

    return gather_object(obj)


def _broadcast(obj):
    if _state().num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def sync_error(message: str | None) -> str | None:
    """Every process's error message (or None) -> the first one, on every process."""
    errors = [m for m in _all_gather([message]) if m]
    return errors[0] if errors else None


# ============================================================================ scoring


def load_scorer(section):
    """The consistency scorer named by `evaluation.faithfulness` (rule | judge | counterfactual | a
    registered reward | module:function), a function with the faithfulness scorers' interface."""
    from rlvlm.composition import resolve

    return resolve(section.faithfulness, section.faithfulness_kwargs)[1]


def score(items: list[dict], completions: list[str], probs: list[list[float]], scorer=None) -> list[dict]:
    """Per-example records: response, parsed think/answer, correct, consistent, option probabilities."""
    from rewards.accuracy import accuracy_reward
    from rewards.parsing import LETTERS, is_well_formatted, resolve_gold, resolve_option, split_response
    from rlvlm.metrics import option_entropy

    if scorer is None:
        from rewards.faithfulness import consistency_reward as scorer
    options = [it.get("options") or None for it in items]
    prefixes = [it.get("think_prefix") for it in items]
    correct = accuracy_reward(completions, [it["answer"] for it in items], options=options, think_prefix=prefixes)
    consistent = scorer(
        completions,
        options=options,
        think_prefix=prefixes,
        prompts=[it["prompt"] for it in items],
        answer=[it["answer"] for it in items],
        image=[it.get("image") for it in items],
        images=[it.get("images") for it in items],
    )
    records = []
    for it, c, ok, cons, p, opts, prefix in zip(items, completions, correct, consistent, probs, options, prefixes):
        response = (prefix or "") + c
        think, answer = split_response(response)
        gold = resolve_gold(it["answer"], opts) if opts else None
        pred = resolve_option(answer, opts) if opts else None
        records.append(
            {
                "dataset": it["dataset"],
                "condition": it.get("condition", "base"),
                "id": it["id"],
                "target": it.get("target"),
                "gold": LETTERS[gold] if gold is not None else it["answer"],
                "response": response,
                "think": think,
                "answer": answer,
                "pred": LETTERS[pred] if pred is not None else None,
                "correct": bool(ok),
                "consistent": bool(cons),
                "judged": cons is not None,
                "format": is_well_formatted(response),
                "option_probs": p,
                "p_correct": float(p[gold]) if p and gold is not None and gold < len(p) else 0.0,
                "option_entropy": option_entropy(p) if p else None,
                "own_think": own_think(prefix, think),
            }
        )
    return records


# ============================================================================ one evaluation


@dataclass
class EvalResult:
    step: int
    trace: list[dict] = field(default_factory=list)
    auroc: list[dict] = field(default_factory=list)
    signals: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def log_dict(self) -> dict[str, float]:
        """Flat scalars `<dataset>/<condition>/<metric>` (the trainer's loggers add the `eval/` prefix)."""
        out = {}
        for row in self.trace:
            key = f"{row['dataset']}/{row['condition']}"
            for m in LOG_METRICS:
                out[f"{key}/{m}"] = row[m]
            for cat, v in row["categories"].items():
                out[f"{key}/{cat}"] = v / row["n"] if row["n"] else 0.0
        for row in self.signals:
            key = f"{row['dataset']}/{row['condition']}"
            for m in SIGNAL_METRICS:
                if row.get(m) is not None:
                    out[f"{key}/{m}"] = row[m]
        if self.trace:
            out["runtime"] = self.seconds
        for row in self.auroc:
            key = f"{row['dataset']}/{row['condition']}"
            for m in ("auroc", "auroc_entropy"):
                if row.get(m) is not None:
                    out[f"{key}/{m}"] = row[m]
        return out


def aggregate(step: int, records: list[dict], base_records: list[dict] | None = None) -> EvalResult:
    """Trace, AUROC and signal rows from per-example records (in the items' order).

    `base_records`: base-condition records of this step evaluated earlier, used for the AUROC of
    perturbations evaluated now when base itself is not re-evaluated."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["condition"]), []).append(r)
    result = EvalResult(step=step, records=records)
    for (ds, cond), recs in groups.items():
        result.trace.append(trace_row(step, ds, cond, recs))
        signals = shortcut_signals([r["own_think"] for r in recs])
        signals["format"] = sum(r["format"] for r in recs) / len(recs)
        signals["answered"] = sum(r["pred"] is not None for r in recs) / len(recs)
        signals["unjudged"] = sum(not r["judged"] for r in recs)
        result.signals.append({"step": step, "dataset": ds, "condition": cond, "n": len(recs), **signals})
    bases = {ds: recs for (ds, cond), recs in groups.items() if cond == "base"}
    for r in base_records or []:
        if (r["dataset"], "base") not in groups:
            bases.setdefault(r["dataset"], []).append(r)
    for (ds, cond), recs in groups.items():
        if cond == "base" or ds not in bases:
            continue
        row = {"step": step, "dataset": ds, "condition": cond, **robustness_auroc(bases[ds], recs)}
        if row["note"]:
            log.info("AUROC %s/%s at step %d skipped: %s", ds, cond, step, row["note"])
        result.auroc.append(row)
    return result


class Evaluator:
    """Prompts built once (per processor); `run(model, step)` evaluates them."""

    def __init__(self, processor, eval_sets: dict[str, list[dict]], section, conditions=None):
        from rlvlm.prefill import ensure_prefill

        ensure_prefill(processor)  # *_think conditions continue an open <think>
        self.processor = processor
        self.section = section
        self.conditions = resolve_conditions(conditions if conditions is not None else section.conditions)
        self.items = prepare_items(eval_sets, self.conditions, seed=section.seed)
        texts = processor.apply_chat_template(
            [it["prompt"] for it in self.items], add_generation_prompt=True, tokenize=False
        )
        for it, text in zip(self.items, texts):
            it["_text"] = text
        self.datasets = list(eval_sets)
        self.scorer = load_scorer(section)
        self._letter_ids: dict = {}

    @classmethod
    def from_recipe(cls, recipe, processor, conditions=None) -> "Evaluator":
        return cls(processor, load_eval_sets(recipe), recipe.evaluation, conditions)

    def keys(self) -> set[tuple[str, str]]:
        return {(it["dataset"], it["condition"]) for it in self.items}

    def _forward(self, model, items: list[dict]) -> list[tuple]:
        """Every process takes its round-robin share of the global batches (padded with repeats so all
        processes run the same number of forward passes); results gathered on every process."""
        state = _state()
        batches = plan_batches(items, self.section.batch_size)
        mine = batches[state.process_index :: state.num_processes]
        per_process = math.ceil(len(batches) / state.num_processes)
        results, error = [], None
        for j in range(per_process):
            batch = mine[j] if j < len(mine) else (mine[-1] if mine else batches[-1])
            try:
                out = run_batch(model, self.processor, [items[i] for i in batch], self.section.max_new_tokens, self._letter_ids)
            except Exception as e:  # noqa: BLE001 - reported on every process below
                log.exception("evaluator forward pass failed on process %d", state.process_index)
                error = f"process {state.process_index}: {type(e).__name__}: {e}"
                break
            if j < len(mine):
                results.extend(zip(batch, out))
        gathered = _all_gather([("error", error)] if error else results)
        errors = [x[1] for x in gathered if x[0] == "error"]
        if errors:
            raise EvaluationError(errors[0])
        by_index = dict(gathered)
        return [by_index[i] for i in range(len(items))]

    def run(self, model, step: int, only: set | None = None, base_records: list[dict] | None = None) -> EvalResult:
        """Evaluate `model` (eval mode, no grad; its train/eval mode is restored) at `step`, on the
        (dataset, condition) pairs in `only` (all when None). Raises EvaluationError on every process."""
        import torch

        start = time.perf_counter()
        items = [it for it in self.items if only is None or (it["dataset"], it["condition"]) in only]
        was_training = model.training
        model.eval()
        result, error = None, None
        try:
            with torch.no_grad():
                outputs = self._forward(model, items)
                if _state().is_main_process:
                    try:
                        if hasattr(self.scorer, "bind"):  # a policy-based scorer (counterfactual) reads this model
                            self.scorer.bind(model, self.processor, collective=False)  # main process only
                        records = score(items, [o[0] for o in outputs], [o[1] for o in outputs], self.scorer)
                        result = aggregate(step, records, base_records)
                    except Exception as e:  # noqa: BLE001 - reported on every process below
                        log.exception("evaluator scoring failed")
                        error = f"scoring: {type(e).__name__}: {e}"
        finally:
            model.train(was_training)
        error = _broadcast(error)
        if error:
            raise EvaluationError(error)
        if result is None:  # not the main process: it only took part in the forward passes
            result = EvalResult(step=step)
        result.seconds = time.perf_counter() - start
        return result


# ============================================================================ files


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file ([] when absent); an unreadable line (a torn write) is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d is not valid JSON; skipped", path, n)
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines in one write and fsync, so a killed run never leaves half an evaluation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_jsonl(path: Path, rows: list[dict]) -> None:
    """Rewrite a JSONL file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _merge(path: Path, rows: list[dict], key) -> None:
    new = {key(r) for r in rows}
    replace_jsonl(path, [r for r in read_jsonl(path) if key(r) not in new] + rows)


def records_path(eval_dir: Path, step: int) -> Path:
    return Path(eval_dir) / RECORDS / f"step_{step:06d}.jsonl"


def evaluated(eval_dir: Path) -> set[tuple[int, str, str]]:
    """(step, dataset, condition) keys already in the trace."""
    return {(r["step"], r["dataset"], r["condition"]) for r in read_jsonl(Path(eval_dir) / TRACE)}


def todo(eval_dir: Path, step: int, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    done = evaluated(eval_dir)
    return {k for k in keys if (step, *k) not in done}


def base_records(eval_dir: Path, step: int) -> list[dict]:
    return [r for r in read_jsonl(records_path(eval_dir, step)) if r.get("condition") == "base"]


def write_result(eval_dir: Path, result: EvalResult) -> None:
    """Records, AUROC and signals first (each replaced atomically), the trace last in one append: the
    trace is the commit point, so a crash in between leaves the step to be evaluated again."""
    eval_dir = Path(eval_dir)
    step_key = lambda r: (r["step"], r["dataset"], r["condition"])  # noqa: E731
    _merge(records_path(eval_dir, result.step), result.records, lambda r: (r["dataset"], r["condition"]))
    if result.auroc:
        _merge(eval_dir / AUROC, result.auroc, step_key)
    _merge(eval_dir / SIGNALS, result.signals, step_key)
    done = evaluated(eval_dir)
    append_jsonl(eval_dir / TRACE, [r for r in result.trace if step_key(r) not in done])


def format_rows(rows: list[dict]) -> str:
    """A compact text table of trace rows (for the console)."""
    lines = [f"{'step':>6} {'dataset':<12} {'condition':<20} {'n':>5} {'acc':>6} {'cons':>6} {'c_acc':>6} {'H':>6} {'p_cor':>6}"]
    for r in rows:
        lines.append(
            f"{r['step']:>6} {r['dataset']:<12} {r['condition']:<20} {r['n']:>5} {r['accuracy']:>6.3f} "
            f"{r['consistency']:>6.3f} {r['consistent_accuracy']:>6.3f} {r['option_entropy']:>6.3f} {r['p_correct']:>6.3f}"
        )
    return "\n".join(lines)


# ============================================================================ rlvlm eval


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


def _recipe_for_eval(args, overrides: dict):
    from rlvlm.recipe import _set_dotted, build_recipe, load_recipe

    if args.recipe:
        return load_recipe(args.recipe, overrides)
    raw: dict = {"name": "eval"}
    for key, value in overrides.items():
        _set_dotted(raw, key, value)
    return build_recipe(raw)


def load_model(name: str, dtype: str = "auto"):
    """A VLM and its processor from a directory or model id, on this process's device."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(name)
    model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype)
    return model.to(_state().device), processor


def evaluate_cli(args, overrides: dict) -> int:
    """`rlvlm eval MODEL [--recipe R] [--out DIR] [--conditions a,b] [--step N] [--key value ...]`."""
    from rlvlm.data.load import check_dataset
    from rlvlm.models import check_model_name, is_tiny, resolve_model
    from rlvlm.recipe import ModelSection, RecipeError

    overrides = dict(overrides)
    if getattr(args, "conditions", None):
        overrides["evaluation.conditions"] = [c.strip() for c in args.conditions.split(",") if c.strip()]
    recipe = _recipe_for_eval(args, overrides)
    section = ModelSection(**{**recipe.model.model_dump(), "name": args.model})
    check_model_name(section)
    if not is_tiny(section) and "/" not in args.model and not Path(args.model).exists():
        raise RecipeError(f"Model path '{args.model}' does not exist (a model id has the form 'org/name').")
    for spec in recipe.data.eval:
        check_dataset(spec)
    load_scorer(recipe.evaluation)  # a bad faithfulness scorer fails before the model is built

    step = args.step if getattr(args, "step", None) is not None else infer_step(args.model)
    out = Path(args.out) if args.out else default_out(args.model)
    path = resolve_model(section, recipe.warm_start, progress=not getattr(args, "quiet", False))
    try:
        model, processor = load_model(path, recipe.model.dtype)
    except (OSError, ValueError) as e:  # not a model directory, or one without a processor
        raise RecipeError(
            f"Cannot load model '{args.model}': it is neither a model directory nor a model id available offline ({e})."
        ) from None
    evaluator = Evaluator.from_recipe(recipe, processor)
    state = _state()
    pending = _broadcast(todo(out, step, evaluator.keys()) if state.is_main_process else None)
    if not pending:
        print(f"rlvlm eval: step {step} is already in {out / TRACE}; nothing to do.")
        return 0
    bases = base_records(out, step) if state.is_main_process else []
    result = evaluator.run(model, step, only=pending, base_records=bases)
    if state.is_main_process:
        write_result(out, result)
        print(format_rows(sorted(result.trace, key=lambda r: (r["dataset"], r["condition"]))))
        print(f"rlvlm eval: {len(result.trace)} rows in {result.seconds:.1f}s -> {out / TRACE}, {records_path(out, step)}")
    return 0
