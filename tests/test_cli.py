"""The ``anomseg`` command: subcommands, --help with config keys, configs by name, and a non-editable install
used from outside the clone."""

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from anomseg.cli import COMMANDS, main, resolve_config
from anomseg.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"demo": "demo.py", "eval": "eval_caos.py", "train-seg": "train_seg.py", "train-head": "train_head.py",
         "visualize": "visualize.py", "tune": "tune.py", "predict": "predict.py", "zoo": "zoo.py",
         "data": "data_check.py"}


def test_every_tool_is_a_subcommand(capsys):
    assert set(TOOLS) | {"make-synthetic"} == set(COMMANDS)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    for name, script in TOOLS.items():  # the scripts in tools/ are thin wrappers of the subcommands
        text = (ROOT / "tools" / script).read_text()
        assert f"from anomseg.cli import {COMMANDS[name][0].__name__}" in text and len(text.splitlines()) < 30
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_help_lists_config_keys_with_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "out = 'runs/eval'" in out and "overlays.threshold = 'best_f1'" in out and "protocol = 'per_image'" in out
    with pytest.raises(SystemExit):
        main(["train-head", "--help"])
    assert "train.steps = 2000" in capsys.readouterr().out


def test_configs_by_name(tmp_path):
    assert resolve_config("demo") == ROOT / "configs" / "demo.yaml"
    assert resolve_config("eval_synthetic_tiny.yaml").name == "eval_synthetic_tiny.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("out: x\n")
    assert resolve_config(str(own)) == own
    with pytest.raises(ConfigError, match="nope: config not found .* packaged: .*demo"):
        resolve_config("nope")


def test_a_non_editable_install_works_from_another_folder(tmp_path):
    """Build the wheel, check what it holds, install it into a fresh venv (dependencies reused from this
    environment through a .pth, nothing downloaded) and run ``anomseg`` from outside the clone."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(wheels.glob("anomseg-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "anomseg = anomseg.cli:main" in z.read(entry).decode()
    assert "anomseg/cli.py" in names and "anomseg/html_report.py" in names
    assert any(n.endswith("data/share/anomseg/configs/demo.yaml") for n in names)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # torch & co from this environment
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    anomseg = str(env_dir / "bin" / "anomseg")
    where = subprocess.run([str(py), "-c", "import anomseg; print(anomseg.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(site) in where  # the installed copy, not the clone
    out = subprocess.run([anomseg, "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "make-synthetic" in out.stdout
    run = lambda *a: subprocess.run([anomseg, *a], cwd=work, env=env, capture_output=True, text=True, timeout=600)  # noqa: E731
    made = run("make-synthetic", "data", "--train", "2", "--val", "1", "--test", "2", "--outliers", "2", "--height", "32",
               "--width", "64", "--workers", "1")
    assert made.returncode == 0, made.stderr[-2000:]
    ev = run("eval", "--config", "eval_synthetic_tiny", "out=out", "data.root=data", "workers=0", "overlays.images=1",
             "backbone={name: 'smp:FPN:resnet18', options: {encoder_depth: 3, decoder_segmentation_channels: 32, "
             "decoder_pyramid_channels: 32}}", "methods=[{name: msp}, {name: energy}]")
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((work / "out" / "report.json").read_text())
    assert set(report["methods"]) == {"msp", "energy"} and (work / "out" / "report.html").is_file()


def test_every_packaged_config_passes_its_tools_checks():
    """The shipped configs satisfy the declared option types and ranges of the tool they are for."""
    import anomseg.engine.evaluate as ev
    import anomseg.engine.train_heads as th
    import anomseg.engine.train_seg as ts
    from anomseg.config import load_config
    from anomseg.engine.demo import SCHEMA as DEMO_SCHEMA, stage_configs
    from anomseg.methods import spec_method_name
    from anomseg.methods.base import check_method_options
    from anomseg.options import check_options

    def check_eval(c):
        ev.check_settings(c)
        ev.check_inference(c["inference"])
        for m in c["methods"]:
            check_method_options(spec_method_name(m), m.get("options", {}))

    seen = 0
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.stem.startswith("seg_"):
            c = load_config(path, [], ts.DEFAULTS, ts.SCHEMA)
            check_options("train", ts.train_section, c["train"])
            check_options("data", ts.data_section, c["data"])
        elif path.stem.startswith("heads_"):
            th.check_settings(load_config(path, [], th.DEFAULTS, th.SCHEMA))
        elif path.stem.startswith("eval_"):
            check_eval(load_config(path, [], ev.DEFAULTS, ev.SCHEMA))
        elif path.stem.startswith("demo"):
            stages = stage_configs(load_config(path, [], schema=DEMO_SCHEMA), Path("/nonexistent"), 0)
            check_options("train", ts.train_section, stages["seg"]["train"])
            th.check_settings(stages["heads"])
            check_eval(stages["eval"])
        else:
            continue
        seen += 1
    assert seen >= 10
