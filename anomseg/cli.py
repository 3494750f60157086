"""The ``anomseg`` command and the shared shape of the config-driven tools (``--config FILE [key.sub=value ...]``).

    anomseg demo --out runs/demo [--full]
    anomseg eval --config eval_synthetic_tiny [key.sub=value ...]     # a packaged config by name, or a path
    anomseg train-seg | train-head | tune --config ...
    anomseg predict --pipeline runs/demo/pipeline.pt photos/ clip.mp4 --out runs/predict
    anomseg data check cityscapes /data/cityscapes
    anomseg zoo [check model_final.pth]
    anomseg visualize runs/demo/eval [--images 0 5] [--threshold best_f1|tpr95|0.5|top5%]
    anomseg make-synthetic data/synthetic [--train 300 ...]

Every subcommand takes the arguments of the script of the same name in ``tools/`` (which only calls it);
``--help`` of a config-driven one lists its config keys with their defaults. Bad input is one line on
stderr (``error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable

from anomseg.config import ConfigError, load_config
from anomseg.errors import AnomsegError

# -- configs by name -------------------------------------------------------------------------------------


def config_dirs() -> list[Path]:
    """Where packaged configs are: the clone's ``configs/`` (editable installs, running from the clone) and
    ``<prefix>/share/anomseg/configs`` (what ``pip install .`` installs)."""
    return [Path(__file__).resolve().parents[1] / "configs", Path(sysconfig.get_path("data")) / "share" / "anomseg" / "configs"]


def packaged_configs() -> list[str]:
    names = set()
    for d in config_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def resolve_config(name: str) -> Path:
    """A config path as given, or a packaged config by name (``demo``, ``eval_synthetic_tiny``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.suffix in ("", ".yaml") and len(path.parts) == 1:
        for d in config_dirs():
            cand = d / f"{path.stem}.yaml"
            if cand.is_file():
                return cand
    raise ConfigError(f"{name}: config not found (neither a file nor a packaged config; packaged: "
                      f"{', '.join(packaged_configs()) or 'none found'})")


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flat(v, key + ".")
        else:
            out.append((key, v))
    return out


def keys_help(defaults: dict | None) -> str:
    """The config keys of a tool with their defaults, one a line (for ``--help``)."""
    if not defaults:
        return ""
    lines = ["config keys (defaults; set in the YAML file or as key.sub=value):"]
    lines += [f"  {k} = {v!r}" for k, v in _flat(defaults)]
    return "\n".join(lines)


def config_tool(description: str, run: Callable[[dict], object], defaults: dict | None = None,
                argv=None, errors: tuple = (AnomsegError,), schema: dict | None = None, prog: str | None = None) -> int:
    """Parse ``--config`` and overrides, check them against ``schema``, run ``run(cfg)``; bad input -> one
    line on stderr (``error: ...``) and exit code 2."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=keys_help(defaults),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config: a path, or a packaged config by name "
                                                   f"({', '.join(packaged_configs())})")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=2 out=runs/x")
    a = p.parse_args(argv)
    try:
        source = resolve_config(a.config)
        run(load_config(source, a.overrides, defaults, schema))
    except errors as exc:
        from anomseg.options import OptionError

        where = f"{source}{' (with overrides)' if a.overrides else ''}: " if isinstance(exc, OptionError) else ""
        print(f"error: {where}{exc}", file=sys.stderr)  # an option's value: said with the file it came from
        return 2
    except OSError as exc:
        if not _path_too_long(exc):
            raise
        return 2
    finally:
        _cleanup_distributed()
    return 0


def _cleanup_distributed() -> None:
    """End a process group a run started (a tool that never got that far has not even imported torch)."""
    if "anomseg.distributed" in sys.modules:
        sys.modules["anomseg.distributed"].cleanup()


def _path_too_long(exc: OSError) -> bool:
    """Print one line for a path the system cannot take (a name over 255 bytes, a path over 4096); False for any
    other OSError (the caller re-raises it)."""
    if getattr(exc, "errno", None) != errno.ENAMETOOLONG:
        return False
    name = str(exc.filename or "")
    shown = name if len(name) <= 80 else f"{name[:40]}...{name[-20:]} ({len(name)} characters)"
    print(f"error: {shown}: a path or name too long for the file system (at most 255 characters a name); choose a "
          f"shorter out / path", file=sys.stderr)
    return True


def one_line(fn: Callable[[], object], errors: tuple = (AnomsegError,)) -> tuple[int, object]:
    """``(0, fn())``, or ``(2, None)`` after one ``error: ...`` line on stderr for bad input (``errors``, or a path the
    file system cannot take); any other error propagates."""
    try:
        return 0, fn()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, None
    except OSError as exc:
        if not _path_too_long(exc):
            raise
        return 2, None


# -- the subcommands ---------------------------------------------------------------------------------------

def eval_main(argv=None, prog: str | None = None) -> int:
    from anomseg.engine.evaluate import DEFAULTS, SCHEMA, markdown_table, run_evaluation

    def evaluate_and_print(cfg: dict) -> None:
        report = run_evaluation(cfg)
        if report is not None:  # rank 0
            print(markdown_table(report))
    return config_tool("Evaluate anomaly scores and heads on a dataset split.", evaluate_and_print, DEFAULTS, argv,
                       errors=(AnomsegError, ValueError), schema=SCHEMA, prog=prog)


def train_seg_main(argv=None, prog: str | None = None) -> int:
    from anomseg.engine.train_seg import DEFAULTS, SCHEMA, train_segmentation

    return config_tool("Train a segmentation backbone.", train_segmentation, DEFAULTS, argv, schema=SCHEMA, prog=prog)


def train_head_main(argv=None, prog: str | None = None) -> int:
    from anomseg.engine.train_heads import DEFAULTS, SCHEMA, run_head_training

    return config_tool("Train per-pixel anomaly heads on a feature bank.", run_head_training, DEFAULTS, argv,
                       schema=SCHEMA, prog=prog)


def tune_main(argv=None, prog: str | None = None) -> int:
    from anomseg.engine.tune import run_tuning

    def tune_and_print(cfg: dict) -> None:
        r = run_tuning(cfg)
        print(f"best validation AUROC {r['best_value']:.4f} with {r['best_params']} ({r['trials']} trials)")
    return config_tool("Tune hyperparameters on validation AUROC (Optuna).", tune_and_print, None, argv,
                       errors=(AnomsegError, ValueError), prog=prog)


def _threshold_arg(text: str):
    if text in ("tpr95", "best_f1") or (text.startswith("top") and text.endswith("%")):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold {text!r}: give best_f1, tpr95, a number, or topK% (e.g. top5%)") from None


def visualize_main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description="Write overlay panels for images of an evaluation and rewrite "
                                                        "its report.html.")
    p.add_argument("eval_dir", help="an evaluation's output folder (holds report.json)")
    p.add_argument("--images", type=int, nargs="*", default=None, help="image indices of the evaluated split")
    p.add_argument("--first", type=int, default=8, help="without --images: the first N images")
    p.add_argument("--threshold", type=_threshold_arg, default="best_f1")
    p.add_argument("--out", default=None, help="output folder (default: <eval_dir>/overlays)")
    a = p.parse_args(argv)
    from anomseg.engine.evaluate import render_overlays

    code, paths = one_line(lambda: render_overlays(a.eval_dir, a.images if a.images is not None else range(a.first),
                                                   a.threshold, a.out),
                           (AnomsegError, FileNotFoundError, IndexError, ValueError))
    if code:
        return code
    print(f"wrote {len(paths)} panels to {paths[0].parent if paths else a.out}")
    return 0


def _segmenter_for_predict(a):
    """The AnomalySegmenter ``anomseg predict`` runs: a pipeline file, or an evaluation config / checkpoint + method."""
    from anomseg.segmenter import AnomalySegmenter, PipelineError

    if a.pipeline:
        if a.config or a.head:
            raise PipelineError("give --pipeline alone (it holds the backbone, method and threshold), or --config / "
                                "--checkpoint with --method and --head, not both")
        seg = AnomalySegmenter.load(a.pipeline, checkpoint=a.checkpoint, device=a.device)
    else:
        if not a.config and not a.checkpoint:
            raise PipelineError("give --pipeline FILE (AnomalySegmenter.save, e.g. the demo's runs/demo/pipeline.pt), or "
                                "--config EVAL_CONFIG and / or --checkpoint FILE")
        backbone, inference, methods = {"name": None, "options": {}, "checkpoint": None}, None, []
        if a.config:
            from anomseg.engine.evaluate import DEFAULTS, SCHEMA

            cfg = load_config(resolve_config(a.config), [], DEFAULTS, SCHEMA)
            backbone, inference, methods = dict(cfg["backbone"]), cfg["inference"], cfg["methods"]
        if a.checkpoint:
            backbone["checkpoint"] = a.checkpoint
        spec = next((m for m in methods if m.get("name") == a.method), None) if a.method else (methods[0] if methods else None)
        if a.config and spec is None and a.method:
            raise PipelineError(f"{a.config}: no method named {a.method!r} (methods: {', '.join(m['name'] for m in methods)})")
        spec = dict(spec or {"name": a.method or "msp"})
        if a.head:
            spec["head"] = a.head
        seg = AnomalySegmenter.from_files(backbone=backbone.get("name"), checkpoint=backbone.get("checkpoint"),
                                          method=spec.get("score", spec["name"]), head=spec.get("head"),
                                          options=spec.get("options"), inference=inference, device=a.device)
    if a.amp is not None:
        from anomseg.models.inference import check_inference_settings

        seg.inference = check_inference_settings({**seg.inference, "amp": a.amp})
    return seg


def predict_main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description="Score your own images, folders, globs, .txt lists or videos: per "
                                "frame a score map, a mask at the operating point and a panel; frames.csv, index.html, "
                                "and per video an overlay video. A rerun into the same --out skips what is written.")
    p.add_argument("inputs", nargs="+", help="image / video files, folders, glob patterns (quoted), .txt lists")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--pipeline", default=None, help="a pipeline file (AnomalySegmenter.save; the demo writes "
                                                    "runs/demo/pipeline.pt): backbone, method and operating point")
    p.add_argument("--config", default=None, help="instead of --pipeline: an evaluation config (its backbone, "
                                                  "inference and methods)")
    p.add_argument("--checkpoint", default=None, help="the backbone checkpoint (replaces the pipeline's / config's)")
    p.add_argument("--method", default=None, help="with --config / --checkpoint: the method (default: the config's "
                                                  "first, else msp)")
    p.add_argument("--head", default=None, help="with --config / --checkpoint: a trained head's best.pth")
    p.add_argument("--threshold", type=float, default=None, help="the operating threshold (default: the pipeline's "
                                                                  "operating point)")
    p.add_argument("--scores", default="npy", choices=("npy", "png16", "none"),
                   help="score maps as float16 .npy (default), 16-bit PNG (scale in the file and the CSV), or none")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--ema", type=float, default=None, help="videos: exponential moving average of the score maps, the "
                                                          "weight of the past in [0, 1) (off by default)")
    p.add_argument("--short-side", type=int, default=None, help="resize frames to this shorter side before scoring "
                                                               "(default: native size)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    p.add_argument("--amp", default=None, choices=("none", "bf16", "fp16"), help="autocast for the backbone "
                                                                                 "(default: the pipeline's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    from anomseg.predict import run_predict

    code, summary = one_line(lambda: run_predict(
        _segmenter_for_predict(a), a.inputs, a.out, threshold=a.threshold, scores=a.scores, batch_size=a.batch_size,
        ema=a.ema, short_side=a.short_side, progress=not a.quiet,
        settings={k: v for k, v in vars(a).items() if k != "quiet"}), (AnomsegError, ValueError))
    if code:
        return code
    fps = f"{summary['fps']:.2f} frames/s" if summary["fps"] else "nothing new to score"
    print(f"{summary['frames']} frames ({summary['scored now']} scored now, {summary['skipped (written before)']} "
          f"written before) in {summary['seconds']:.1f} s: {fps}; open {Path(a.out) / 'index.html'}")
    return 0


def _option_arg(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"option {text!r}: give key=value, e.g. num_val=10")
    from anomseg.config import read_yaml

    return key, read_yaml(value, f"option {key}") if value else value


def data_main(argv=None, prog: str | None = None) -> int:
    from anomseg.data import DATASETS

    p = argparse.ArgumentParser(prog=prog, description="Check a dataset download: layout, frame lists and counts, files, "
                                "image / label sizes and label values; one line per problem with the fix.")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="check a download against the adapter's official layout and counts")
    c.add_argument("name", choices=sorted(DATASETS), metavar="NAME", help=f"one of {', '.join(sorted(DATASETS))}")
    c.add_argument("root", help="the folder the dataset was extracted into")
    c.add_argument("--split", nargs="*", default=None, help="only these splits (default: every split of a full copy)")
    c.add_argument("--option", type=_option_arg, nargs="*", default=[], help="adapter options, key=value")
    c.add_argument("--quick", action="store_true", help="file headers only: no label decoding")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    from anomseg.data.check import check_dataset

    try:
        lines = check_dataset(a.name, a.root, a.split, options=dict(a.option), labels=not a.quick,
                              progress=not a.quiet)
    except (AnomsegError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if not lines:
        print(f"{a.root}: {a.name} is complete (every split checked: layout, counts, files, sizes"
              f"{'' if a.quick else ', label values'})")
    return 1 if lines else 0


def zoo_main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description="The released checkpoints anomseg loads: where each is hosted, its "
                                "licence, hash, config and published numbers; `check FILE` says which one a file is.")
    sub = p.add_subparsers(dest="action")
    c = sub.add_parser("check", help="which released checkpoint a file is (key layout, shapes, hash)")
    c.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    from anomseg.models.zoo import identify, listing

    if a.action != "check":
        print(listing())
        return 0
    found_all = True
    for f in a.files:
        found, line = identify(f)
        print(line)
        found_all &= bool(found)
    return 0 if found_all else 1


def demo_main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog, description="The anomseg demo on the synthetic street scenes (CPU).")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="the fuller profile (configs/demo_full.yaml): every head, longer")
    p.add_argument("--config", default=None, help="demo config, a path or a packaged name (default: demo, or "
                                                  "demo_full with --full)")
    p.add_argument("--workers", type=int, default=None, help="data generator processes (default: all cores)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config, e.g. seg.train.epochs=2")
    a = p.parse_args(argv)
    from anomseg.engine.demo import SCHEMA, print_report, run_demo

    t0 = time.perf_counter()
    code, report = one_line(lambda: run_demo(load_config(resolve_config(a.config or ("demo_full" if a.full else "demo")),
                                                         a.overrides, schema=SCHEMA), a.out, seed=a.seed,
                                             workers=a.workers))
    if code:
        return code
    print()
    print_report(report)
    eval_dir = Path(a.out) / "eval"
    print(f"\nopen {eval_dir / 'report.html'} in a browser (table, curves, histograms, overlays); "
          f"report.json and per_image.csv beside it; {time.perf_counter() - t0:.0f} s")
    return 0


def make_synthetic_main(argv=None, prog: str | None = None) -> int:
    from anomseg.data.synthetic import main

    return main(argv)


COMMANDS = {
    "demo": (demo_main, "run the whole pipeline on the synthetic street scenes"),
    "eval": (eval_main, "evaluate anomaly methods on a dataset split (tools/eval_caos.py)"),
    "train-seg": (train_seg_main, "train a segmentation backbone (tools/train_seg.py)"),
    "train-head": (train_head_main, "build the feature bank and train per-pixel heads (tools/train_head.py)"),
    "predict": (predict_main, "score your own images, folders or videos with a pipeline file"),
    "data": (data_main, "check a dataset download: anomseg data check NAME ROOT"),
    "zoo": (zoo_main, "the released checkpoints by name; zoo check FILE says which one a file is"),
    "visualize": (visualize_main, "overlay panels and report.html of an evaluation (tools/visualize.py)"),
    "tune": (tune_main, "tune hyperparameters on validation AUROC (tools/tune.py)"),
    "make-synthetic": (make_synthetic_main, "generate the synthetic street-scene dataset"),
}


def main(argv=None) -> int:
    """``anomseg <command> ...``; ``anomseg --help`` lists the commands, ``anomseg <command> --help`` its arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "anomseg <command> [arguments]\n\ncommands:\n" + "\n".join(f"  {k:<15}{v[1]}" for k, v in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\n`anomseg <command> --help` lists a command's arguments (and config keys).")
        return 0 if argv else 2
    if argv[0] == "--version":
        from anomseg import __version__

        print(f"anomseg {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:], prog=f"anomseg {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
