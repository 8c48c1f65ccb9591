"""The robustness evaluator (docs/evaluation.md).

    items         eval sets, prompt-ready items per condition, prompt lengths, batch planning
    generation    greedy generation (transformers, vLLM engines) and the option probabilities
    distributed   the collectives every process takes part in
    scoring       per-example records: correct, consistent, option probabilities
    results       trace / AUROC / signal rows from records, logger scalars, console table
    trace         the on-disk trace (RUN_DIR/eval/); what report, sweep and follower read
    schedule      which saved checkpoints are evaluated (evaluation.every)
    evaluator     Evaluator: one evaluation of a model at a step
    plan          rlvlm eval --plan: the cost of a recipe's evaluation
    follow        rlvlm eval --follow: a run's checkpoints as they appear
    cli           rlvlm eval
"""
