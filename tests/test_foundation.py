"""The tiny model, tokenizer and processor; recipe errors through the CLI; a short GRPO run end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, AutoProcessor

from rlvlm.data import shapes
from rlvlm.perturb import perturb
from rlvlm.recipe import WarmStartSection

import shapes_oracles  # tests/shapes_oracles.py: the independent scene-graph oracles

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-shapes.yaml"


def test_tiny_build_is_deterministic(tiny_model_path, tmp_path):
    from safetensors.torch import load_file

    from rlvlm.tiny import build_tiny

    again = build_tiny(seed=0, path=tmp_path / "again", progress=False)
    assert (again / "tokenizer.json").read_text() == (Path(tiny_model_path) / "tokenizer.json").read_text()
    a, b = load_file(Path(tiny_model_path) / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = build_tiny(seed=1, path=tmp_path / "other", progress=False)
    c = load_file(other / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_processor_image_tokens_match_the_vision_features(tiny_model_path):
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    examples = shapes.generate_examples("eval", 2)
    texts = processor.apply_chat_template([perturb(e, "base", 0)["prompt"] for e in examples], add_generation_prompt=True, tokenize=False)
    enc = processor(text=texts, images=[[e["image"]] for e in examples], padding=True, return_tensors="pt")
    n_image_tokens = int((enc["input_ids"] == model.config.image_token_id).sum())
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
    tokens = features.pooler_output if hasattr(features, "pooler_output") else features
    n_features = sum(t.shape[0] for t in tokens) if isinstance(tokens, (list, tuple)) else tokens.shape[0]
    grid = shapes.GRID
    assert n_image_tokens == n_features == 2 * grid * grid  # one merged token per shapes cell
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 3


def test_tokenizer_knows_the_tags_and_the_option_letters(tiny_model_path):
    tok = AutoProcessor.from_pretrained(tiny_model_path).tokenizer
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tok.tokenize(tag) == [tag]
    for letter in "ABCD":
        assert tok.tokenize(letter) == [letter]
    text = "<think>I count the red circles: there are 2. So the answer is (C) 2.</think><answer>C</answer>"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


class Result:
    """What a command left: its exit status and what it printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(rlvlm_cli):
    """`rlvlm ARGS` in this process, as a Result."""
    return lambda *args: Result(*rlvlm_cli(*args))


def test_the_module_entry_point_exits_with_the_commands_status(tmp_path):
    """`python -m rlvlm` (the console script's target, rlvlm.cli:main) hands main's status to the shell."""
    r = subprocess.run([sys.executable, "-m", "rlvlm", "train", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max_stpes", "4"], "Did you mean 'max_steps'"),
        (["--max_steps", "four"], "max_steps"),
        (["--model.nme", "x"], "Did you mean 'model.name'"),
        (["--model.name", "./no/such/model"], "does not exist"),
        (["--warm_start.epochs", "-1"], "warm_start.epochs"),
        (["--rewards", "[{name: nope}]"], "Unknown reward 'nope'"),
    ],
)
def test_bad_overrides_exit_2_with_a_message(args, needle, tmp_path, cli):
    r = cli("train", str(RECIPE), "--output_dir", str(tmp_path / "run"), *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_missing_and_broken_recipes_exit_2(tmp_path, cli):
    r = cli("train", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: [unclosed\n")
    r = cli("train", str(broken))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    assert cli("train", str(listy)).returncode == 2


def test_existing_run_dir_is_refused_not_overwritten(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    r = cli("train", str(RECIPE), "--output_dir", str(run))
    assert r.returncode == 2 and "already exists" in r.stderr and "--resume_from_checkpoint" in r.stderr
    assert (run / "keep.txt").read_text() == "mine"
    r = cli("train", str(RECIPE), "--output_dir", str(run), "--resume_from_checkpoint", "true")
    assert r.returncode == 2 and "no complete checkpoint" in r.stderr


def test_every_command_has_help(cli):
    for command in ("train", "eval", "report", "sweep", "bench"):
        r = cli(command, "--help")
        assert r.returncode == 0 and "usage" in r.stdout


def test_default_run_dir_is_runs_recipe_name():
    from rlvlm.recipe import load_recipe

    assert load_recipe(RECIPE).grpo["output_dir"] == str(Path("runs") / "tiny-shapes")


def test_warm_start_rows_teach_correct_reasoning():
    from rewards.accuracy import accuracy_reward
    from rewards.faithfulness import consistency_reward
    from rewards.format import format_reward
    from rlvlm.warmstart import sft_rows

    rows = sft_rows(WarmStartSection(n_examples=64))
    completions = [r["completion"] for r in rows]
    examples = shapes.generate_examples("train", 64)
    answers, options = [e["answer"] for e in examples], [e["options"] for e in examples]
    assert accuracy_reward(completions, answers, options=options) == [1.0] * 64
    assert format_reward(completions) == [1.0] * 64
    assert consistency_reward(completions, options=options) == [1.0] * 64


def test_warm_start_captions_are_never_contradicted_by_the_target():
    """Some SFT prompts carry a caption (the habit wrong_caption measures); the teacher, shown a caption,
    reasons toward the option it states, true or false, even where it confuses the gold option."""
    from rewards.faithfulness import consistency_reward
    from rlvlm.warmstart import sft_rows

    n = 1600
    section = WarmStartSection(n_examples=n, captions={"correct_caption": 0.2, "wrong_caption": 0.05},
                               teacher_confusions={"compare": {"yellow": "green"}}, teacher_error_rate=1.0)
    examples = shapes.generate_examples("train", n)
    true_captions = false_captions = 0
    for row, ex in zip(sft_rows(section), examples):
        text = row["prompt"][-1]["content"][-1]["text"]
        first_line = text.split("\n")[0]
        if first_line == ex["question"]:
            continue  # no caption
        think = row["completion"][0]["content"].split("<think>")[1].split("</think>")[0]
        caption_true = shapes_oracles.statement_is_true(ex, first_line)
        true_captions += caption_true
        false_captions += not caption_true
        assert shapes_oracles.statement_is_true(ex, think) == caption_true
        assert consistency_reward([row["completion"]], options=[ex["options"]]) == [1.0]
    assert abs(true_captions / n - 0.2) < 0.03 and abs(false_captions / n - 0.05) < 0.02
    with pytest.raises(ValueError, match="warm_start.captions"):
        WarmStartSection(captions={"wrong_think": 0.1})


def test_warm_start_self_corrections_and_short_reasonings():
    """self_correction: wrong reasoning, SELF_CORRECTION, then the gold reasoning and answer (the think's
    last conclusion is gold); short_reasoning: one sentence that states no fact, then the conclusion."""
    from rewards.accuracy import accuracy_reward
    from rewards.faithfulness import consistency_reward
    from rewards.format import format_reward
    from rlvlm.warmstart import SELF_CORRECTION, sft_rows

    n = 1000
    section = WarmStartSection(n_examples=n, captions={}, self_correction=0.1, short_reasoning=0.1)
    examples = shapes.generate_examples("train", n)
    corrected = short = 0
    for row, ex in zip(sft_rows(section), examples):
        completion = [row["completion"]]
        think = row["completion"][0]["content"].split("<think>")[1].split("</think>")[0]
        assert accuracy_reward(completion, [ex["answer"]], options=[ex["options"]]) == [1.0]
        assert format_reward(completion) == [1.0]
        assert consistency_reward(completion, options=[ex["options"]]) == [1.0]
        if SELF_CORRECTION in think:
            corrected += 1
            first, second = think.split(SELF_CORRECTION)
            assert not shapes_oracles.statement_is_true(ex, first) and shapes_oracles.statement_is_true(ex, second)
        elif shapes.implied_option(ex["question"], ex["options"], think) is None and len(think.split(".")) == 3:
            short += 1  # "<opener>. So the answer is (X) <text>." states no fact to imply an option
    assert abs(corrected / n - 0.1) < 0.03 and abs(short / n - 0.1) < 0.03


def test_a_confused_teacher_answers_the_option_it_confuses_with_reasoning_that_implies_it():
    """teacher_confusions: the SFT targets of examples whose gold option the teacher confuses go, at
    teacher_error_rate, to the confused option, with false reasoning that leads there; the rest stay gold."""
    from rewards.faithfulness import consistency_reward
    from rlvlm.warmstart import sft_rows

    n = 800
    section = WarmStartSection(n_examples=n, captions={}, teacher_confusions={"compare": {"yellow": "green"}},
                               teacher_error_rate=0.7)
    rows, examples = sft_rows(section), shapes.generate_examples("train", n)
    confusable = wrong = 0
    for row, ex in zip(rows, examples):
        response = row["completion"][0]["content"]
        letter = response.split("<answer>")[1][0]
        gold_text = ex["options"][ord(ex["answer"]) - ord("A")]
        if (ex["family"], gold_text) != ("compare", "yellow"):
            assert letter == ex["answer"]
            continue
        confusable += 1
        if letter != ex["answer"]:
            wrong += 1
            assert ex["options"][ord(letter) - ord("A")] == "green"
            think = response.split("<think>")[1].split("</think>")[0]
            assert not shapes_oracles.statement_is_true(ex, think)
            assert consistency_reward([row["completion"]], options=[ex["options"]]) == [1.0]
    assert confusable > 30 and abs(wrong / confusable - 0.7) < 0.15
    assert sft_rows(WarmStartSection(n_examples=64, teacher_confusions={"compare": {"yellow": "green"}})) == sft_rows(
        WarmStartSection(n_examples=64))  # teacher_error_rate defaults to 0: a perfect teacher
    with pytest.raises(ValueError, match="keyed by shapes family"):
        WarmStartSection(teacher_confusions={"yellow": {"yellow": "green"}})


def test_a_teacher_filtered_on_answers_keeps_gold_answers_after_wrong_reasoning():
    """teacher_answer_kept: of the confused rows, that share keeps the gold answer while the reasoning
    argues the confused option (the think contradicts the answer: consistency 0, the answer correct)."""
    from rewards.accuracy import accuracy_reward
    from rewards.faithfulness import consistency_reward
    from rlvlm.warmstart import sft_rows, warm_start_dir

    n = 800
    confusions = {"compare": {"yellow": "green"}}
    section = WarmStartSection(n_examples=n, captions={}, teacher_confusions=confusions, teacher_error_rate=1.0,
                               teacher_answer_kept=0.5)
    kept = drifted = 0
    for row, ex in zip(sft_rows(section), shapes.generate_examples("train", n)):
        if (ex["family"], ex["options"][ord(ex["answer"]) - ord("A")]) != ("compare", "yellow"):
            continue
        completion = [row["completion"]]
        think = row["completion"][0]["content"].split("<think>")[1].split("</think>")[0]
        assert shapes.implied_option(ex["question"], ex["options"], think) == ex["options"].index("green")
        if accuracy_reward(completion, [ex["answer"]], options=[ex["options"]]) == [1.0]:
            kept += 1
            assert consistency_reward(completion, options=[ex["options"]]) == [0.0]
        else:
            drifted += 1
    assert kept > 15 and drifted > 15 and abs(kept / (kept + drifted) - 0.5) < 0.2
    base = Path("/tmp/tiny")
    assert warm_start_dir(base, WarmStartSection()) != warm_start_dir(base, WarmStartSection(teacher_answer_kept=0.5))
    with pytest.raises(ValueError, match="yelow is not an option of compare questions"):
        WarmStartSection(teacher_confusions={"compare": {"yelow": "green"}})


@pytest.mark.slow
def test_two_step_grpo_run_writes_a_checkpoint_that_reloads_and_generates(tiny_model_path, tmp_path, capsys):
    """`rlvlm train` end to end on the (untrained) tiny model: checkpoints, trace, reload, generate."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe.update(
        warm_start={"enabled": False},
        data={"train": {"name": "shapes", "n": 16}, "eval": [{"name": "shapes", "split": "eval", "n": 4}]},
        evaluation={"conditions": ["base", "wrong_think"], "max_new_tokens": 8, "batch_size": 8},
        num_generations=2, per_device_train_batch_size=4, max_completion_length=8,
        max_steps=2, save_steps=2, logging_steps=1,
        # an untrained model earns no accuracy; a plugin reward with spread makes GRPO move the weights
        rewards=[{"name": "accuracy"}, {"name": f"{tmp_path / 'plugin.py'}:length", "weight": 0.1}],
    )
    (tmp_path / "plugin.py").write_text(
        "def length(completions, **kwargs):\n"
        "    return [float(len(c if isinstance(c, str) else c[0]['content'])) for c in completions]\n"
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    from rlvlm.cli import main

    assert main(["train", str(path), "--output_dir", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "'loss'" not in out + err and "2/2 [" not in err  # --quiet: no log dicts, no progress bar
    assert json.loads((run / "trainer_state.json").read_text())["log_history"][0]["loss"] is not None
    ckpt = run / "checkpoint-2"
    assert ckpt.is_dir()
    rows = [json.loads(line) for line in (run / "eval" / "trace.jsonl").read_text().splitlines()]
    assert sorted({(r["step"], r["condition"]) for r in rows}) == [(0, "base"), (0, "wrong_think"), (2, "base"), (2, "wrong_think")]
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    processor = AutoProcessor.from_pretrained(ckpt)
    ex = perturb(shapes.generate_examples("eval", 1)[0], "base", 0)
    text = processor.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[[ex["image"]]], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4
    # the checkpoint differs from where it started: GRPO updated the weights
    start = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    assert any(not torch.equal(p, q) for p, q in zip(start.state_dict().values(), model.state_dict().values()))


def test_vision_pretraining_trains_the_vision_tower_alone(tiny_model_path):
    """Two steps of the vision warm-up (the slow test below runs the default section to the end): a probe
    for colour, shape, row and column per merged token; the vision tower moves, the decoder does not."""
    from rlvlm.warmstart import pretrain_vision

    processor = AutoProcessor.from_pretrained(tiny_model_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe = pretrain_vision(model, processor, WarmStartSection(vision_steps=2, n_examples=64), progress=False)
    assert probe.in_features == model.config.vision_config.out_hidden_size
    assert probe.out_features == 5 + 5 + shapes.GRID + shapes.GRID  # colours/shapes and "empty", rows, columns
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("model.visual.") for n in moved), sorted(moved)[:5]


@pytest.mark.slow
def test_vision_pretraining_makes_every_cell_readable(tiny_model_path):
    """After the vision warm-up (the default section's steps and learning rate) a linear probe reads
    each held-out cell's colour, shape, row and column off the merged vision tokens the decoder sees."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rlvlm.warmstart import PROBE_TARGETS, pretrain_vision

    processor = AutoProcessor.from_pretrained(tiny_model_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_path)
    probe = pretrain_vision(model, processor, WarmStartSection(), progress=False)
    test = shapes.generate_examples("test", 64)
    with torch.no_grad():
        pixels = processor.image_processor(images=[e["image"] for e in test], return_tensors="pt")
        tokens = model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
        logits = probe(tokens).split([5, 5, shapes.GRID, shapes.GRID], dim=-1)
    colours, kinds = list(shapes.COLORS) + ["empty"], list(shapes.SHAPES) + ["empty"]
    truth = {t: [] for t in PROBE_TARGETS}
    for ex in test:
        cells = {(o["row"], o["col"]): o for o in ex["scene"]["objects"]}
        for row in range(shapes.GRID):
            for col in range(shapes.GRID):
                obj = cells.get((row, col))
                truth["colour"].append(colours.index(obj["color"]) if obj else 4)
                truth["shape"].append(kinds.index(obj["shape"]) if obj else 4)
                truth["row"].append(row)
                truth["column"].append(col)
    for name, logit in zip(PROBE_TARGETS, logits):
        accuracy = (logit.argmax(-1) == torch.tensor(truth[name])).float().mean().item()
        assert accuracy > 0.9, (name, accuracy)

    # Readable is not enough: the decoder learns the loudest directions first, so no attribute may
    # drown the others. Among object cells (RMS-normalised, as the decoder's first norm sees them),
    # shape must explain about as much of the tokens' variance as colour does (without the codes,
    # colour took ~93% and shape ~2%).
    x = tokens / tokens.pow(2).mean(-1, keepdim=True).sqrt()
    objects = torch.tensor(truth["shape"]) < 4
    x = x[objects] - x[objects].mean(0)

    def share(labels):
        labels = torch.tensor(labels)[objects]
        return sum((labels == k).sum() * x[labels == k].mean(0).pow(2).sum() for k in labels.unique()) / x.pow(2).sum()

    colour_share, shape_share = share(truth["colour"]).item(), share(truth["shape"]).item()
    assert shape_share > 0.5 * colour_share and shape_share > 0.1, (colour_share, shape_share)


def test_embedded_default_trains_on_prompts_the_warm_start_never_saw(caplog):
    from rlvlm.data.load import load_examples
    from rlvlm.recipe import load_recipe
    from rlvlm.train import validate, warm_start_overlap

    recipe = load_recipe(RECIPE)
    assert warm_start_overlap(recipe) == 0
    key = lambda e: (json.dumps(e["scene"], sort_keys=True), e["question"])  # noqa: E731
    seen = {key(e) for e in shapes.generate_examples("train", recipe.warm_start.n_examples, seed=recipe.warm_start.seed)}
    train = load_examples(recipe.data.train)
    assert sum(key(e) in seen for e in train) < 0.01 * len(train)  # tiny scenes repeat now and then

    overlapping = load_recipe(RECIPE, {"data.train.seed": recipe.warm_start.seed})
    assert warm_start_overlap(overlapping) == recipe.data.train.n
    with caplog.at_level("WARNING", logger="rlvlm"):
        validate(overlapping)
    assert "warm-start was fine-tuned on" in caplog.text


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` entry
    return tmp_path / "netrc"


def test_wandb_logs_offline_only_when_no_key_and_no_mode_is_set(no_wandb_key, monkeypatch):
    from rlvlm.train import default_wandb_offline

    assert not default_wandb_offline(["tensorboard"]) and "WANDB_MODE" not in os.environ
    assert default_wandb_offline(["wandb"]) and os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice stands
    assert not default_wandb_offline(["wandb"]) and os.environ["WANDB_MODE"] == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert not default_wandb_offline(["wandb"]) and "WANDB_MODE" not in os.environ
    monkeypatch.delenv("WANDB_API_KEY")
    no_wandb_key.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")  # `wandb login`
    assert not default_wandb_offline(["wandb"]) and "WANDB_MODE" not in os.environ


@pytest.mark.slow
def test_report_to_wandb_without_a_key_runs_offline_with_the_evaluator_tables(tiny_model_path, no_wandb_key, tmp_path):
    """Without the default, wandb.init stops the run: "No API key configured"."""
    recipe = {
        "name": "wandb-offline", "warm_start": {"enabled": False},
        "data": {"train": {"name": "shapes", "n": 8}, "eval": [{"name": "shapes", "split": "eval", "n": 4}]},
        "evaluation": {"conditions": ["base"], "max_new_tokens": 8, "batch_size": 8},
        "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8,
        "max_steps": 1, "save_steps": 1, "bf16": False, "report_to": "wandb",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "rlvlm", "train", str(path), "--output_dir", str(tmp_path / "run"),
                           "--quiet"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "logs offline" in done.stderr
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    assert list((run / "files" / "media" / "table" / "eval" / "shapes" / "base").glob("samples_*.table.json"))


def test_the_embedded_default_uses_the_shipped_warm_start_without_building(tiny_model_path, monkeypatch):
    """The main job's warm-start ships with rlvlm (rlvlm/warm_starts, named by its cache key): from an
    empty cache it is installed, weights byte for byte, and no SFT runs; it then loads and generates."""
    from rlvlm import warmstart
    from rlvlm.recipe import load_recipe

    section = load_recipe(RECIPE).warm_start
    shipped = warmstart.shipped_warm_start(warmstart.warm_start_dir(tiny_model_path, section))
    assert shipped is not None, "rlvlm/warm_starts lacks the warm-start of recipes/tiny-shapes.yaml: ship it"

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped warm-start was not used")

    monkeypatch.setattr(warmstart, "_build", no_build)
    out = warmstart.warm_start(tiny_model_path, section, progress=False)
    assert (out / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
    assert warmstart.warm_start(tiny_model_path, section, progress=False) == out  # now cached
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    ex = shapes.generate_examples("eval", 1)[0]
    text = processor.apply_chat_template(perturb(ex, "base", 0)["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[ex["image"]], return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=False).startswith("<think>")


@pytest.mark.slow
def test_ship_rebuilds_a_warm_start_from_scratch_into_the_shipped_folder(tmp_path, rlvlm_cache, monkeypatch):
    """`python -m rlvlm.warmstart RECIPE`: builds the recipe's warm-start (never reusing a cache), writes
    it under its cache key, drops shipped copies of other keys, and a run with that section installs it."""
    from rlvlm import warmstart
    from rlvlm.recipe import load_recipe
    from rlvlm.tiny import build_tiny

    recipe = tmp_path / "small.yaml"
    recipe.write_text(yaml.safe_dump({"base": str(RECIPE), "name": "small",
                                      "warm_start": {"vision_steps": 2, "n_examples": 32, "epochs": 0.5, "batch_size": 16}}))
    dest = tmp_path / "warm_starts"
    (dest / "tiny-sft-stale").mkdir(parents=True)
    shipped = warmstart.ship(str(recipe), dest, progress=False)
    assert [p.name for p in dest.iterdir()] == [shipped.name]
    assert sorted(p.name for p in shipped.iterdir()) == sorted(warmstart.SHIPPED_FILES)
    section = load_recipe(recipe).warm_start
    base = build_tiny(seed=0, progress=False)
    assert shipped.name == warmstart.warm_start_dir(base, section).name

    monkeypatch.setattr(warmstart, "SHIPPED", dest)
    out = warmstart.warm_start(base, section, progress=False)
    assert (out / "model.safetensors").read_bytes() == (shipped / "model.safetensors").read_bytes()
