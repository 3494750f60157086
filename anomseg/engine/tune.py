"""Hyperparameter search with Optuna over any stage config (heads or segmentation fine-tuning).

A tuning config names the stage config to start from, the search space as dotted paths into it
(list items by index: ``heads.0.options.lambda_g``) and the objective, the validation AUROC:

* ``stage: heads``: the best validation AUROC of the first head (pooled open-vs-closed pixels);
* ``stage: seg``: train (fine-tune) the segmenter, then evaluate ``objective.method`` on the
  validation split with ``tools/eval_caos.py``'s pipeline (per-image AUROC).

Trials are stored in ``<out>/study.db`` (SQLite), so a killed search resumes; every trial writes
to ``<out>/trial_<n>``. Outputs: ``trials.csv`` and ``best.yaml`` (the stage config with the best
parameters applied), ``tune.yaml`` (the resolved tuning config).
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

from anomseg.files import make_dirs
from anomseg.config import ConfigError, load_config, save_config


def set_path(cfg: dict, dotted: str, value) -> None:
    """Set ``cfg[a][b][0][c] = value`` for ``dotted = "a.b.0.c"``; raises ConfigError naming a missing part."""
    node = cfg
    parts = dotted.split(".")
    for i, p in enumerate(parts[:-1]):
        key = int(p) if isinstance(node, list) else p
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                raise ConfigError(f"search space key {dotted!r}: {'.'.join(parts[:i + 1])} does not exist in the config") from None
    last = parts[-1]
    node[int(last) if isinstance(node, list) else last] = value


def _suggest(trial, name: str, spec: dict):
    kind = spec.get("type", "float")
    if kind == "float":
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    raise ConfigError(f"search space {name!r}: type {kind!r} is unknown; use float, int or categorical")


def _stage(stage: str):
    if stage == "heads":
        from anomseg.engine.train_heads import DEFAULTS, run_head_training

        def objective(cfg, tcfg):
            summary = run_head_training(cfg, progress=False)
            return summary[cfg["heads"][0]["name"]]["best_auroc"]
        return DEFAULTS, objective
    if stage == "seg":
        from anomseg.engine.evaluate import DEFAULTS as EVAL_DEFAULTS
        from anomseg.engine.evaluate import run_evaluation
        from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS, train_segmentation

        def objective(cfg, tcfg):
            train_segmentation(cfg, progress=False)
            obj = tcfg.get("objective", {})
            method = obj.get("method", {"name": "msp"})
            ev = copy.deepcopy(EVAL_DEFAULTS)
            ev.update(out=str(Path(cfg["out"]) / "val_eval"), seed=cfg["seed"], methods=[method],
                      overlays={"images": 0, "threshold": "tpr95"}, protocol=obj.get("protocol", "per_image"))
            ev["data"] = {"name": cfg["data"]["name"], "root": cfg["data"]["root"], "split": cfg["data"]["val_split"],
                          "options": cfg["data"].get("options", {})}
            ev["backbone"] = {"checkpoint": str(Path(cfg["out"]) / "checkpoints" / "last.pth")}
            return run_evaluation(ev, progress=False)["methods"][method["name"]]["auroc"]
        return SEG_DEFAULTS, objective
    raise ConfigError(f"stage={stage!r}: choose 'heads' or 'seg'")


def run_tuning(tcfg: dict) -> dict:
    """Run (or resume) the search; returns ``{"best_value", "best_params", "trials"}``."""
    import optuna

    out = Path(tcfg["out"])
    make_dirs(out)
    save_config(tcfg, out / "tune.yaml")
    defaults, objective = _stage(tcfg["stage"])
    base = load_config(tcfg["base"], tcfg.get("base_overrides", []), defaults)
    space = tcfg["space"]
    for key in space:  # fail on a bad path before the first trial, not inside it
        set_path(copy.deepcopy(base), key, None)

    def run_trial(trial):
        cfg = copy.deepcopy(base)
        for key, spec in space.items():
            set_path(cfg, key, _suggest(trial, key, spec))
        cfg["out"] = str(out / f"trial_{trial.number}")
        return objective(cfg, tcfg)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="anomseg", storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=tcfg.get("seed", 0)))
    done = len([t for t in study.trials if t.state.is_finished()])
    remaining = max(0, tcfg.get("trials", 10) - done)
    if remaining:
        study.optimize(run_trial, n_trials=remaining, show_progress_bar=True)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "val_auroc", *space])
        for t in trials:
            w.writerow([t.number, t.value, *[t.params.get(k) for k in space]])
    best = copy.deepcopy(base)
    for key, value in study.best_params.items():
        set_path(best, key, value)
    save_config(best, out / "best.yaml")
    return {"best_value": study.best_value, "best_params": study.best_params, "trials": len(trials)}
