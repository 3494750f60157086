"""tools/train_head.py end to end on a tiny backbone and the synthetic data."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from anomseg.data import generate_synthetic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import train_head  # noqa: E402

HEADS = ["opengan_fea", "opengan0_fea", "cls_fea", "dias_fea", "gaussian", "gmm", "knn"]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    data = tmp / "data"
    generate_synthetic(data, num_train=6, num_val=3, num_test=1, num_outliers=4, height=64, width=128,
                       workers=1, progress=False)
    cfg = {
        "out": str(tmp / "run"),
        "data": {"name": "streethazards", "root": str(data), "paste": {"pool": str(data / "outliers"), "count": [1, 2]}},
        "backbone": {"name": "smp:FPN:resnet18",
                     "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32, "decoder_pyramid_channels": 32}},
        "bank": {"closed_per_image": 200, "chunk_images": 4},
        "heads": [{"name": "opengan_fea", "options": {"lambda_g": 0.2}}, {"name": "opengan0_fea"}, {"name": "cls_fea"},
                  {"name": "dias_fea", "options": {"width": 16}}, {"name": "gaussian"}, {"name": "gmm", "options": {"n_components": 2}}, {"name": "knn", "options": {"k": 3}}],
        "train": {"steps": 6, "eval_every": 3, "n_closed": 300, "n_open": 150, "n_fake": 150, "max_samples": 500},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, Path(cfg["out"])


def test_train_head_end_to_end_and_reuse(config):
    path, out = config
    assert train_head.main(["--config", str(path)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(HEADS)
    for name in HEADS:
        assert 0.0 <= summary[name]["best_auroc"] <= 1.0
        assert (out / "heads" / name / "best.pth").is_file() and (out / "heads" / name / "log.jsonl").is_file()
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["lr_d"] == pytest.approx(1e-4 / 1.5)  # defaults filled in
    log = [json.loads(line) for line in (out / "heads" / "opengan_fea" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [3, 6] and all("val_auroc" in e for e in log)
    # a second run reuses the banks and the finished training
    bank_part = out / "bank" / "train" / "part-00000.h5"
    mtime = bank_part.stat().st_mtime_ns
    assert train_head.main(["--config", str(path)]) == 0
    assert bank_part.stat().st_mtime_ns == mtime
    assert len((out / "heads" / "opengan_fea" / "log.jsonl").read_text().splitlines()) == 2


def test_missing_open_pixels_is_a_clear_error(config, tmp_path, capsys):
    path, _ = config
    code = train_head.main(["--config", str(path), f"out={tmp_path}", "data.paste=null",
                            "heads=[{name: cls_fea}]"])
    assert code == 2
    assert "no open pixels but the head needs" in capsys.readouterr().err


def test_heads_under_torchrun_are_trained_once(config, tmp_path):
    """2 gloo processes: the banks are sharded, the heads trained once (rank 0): same summary and logs
    as one process, and no rank races on the head files."""
    import os
    import subprocess

    path, _ = config
    root = Path(__file__).resolve().parents[1]
    args = ["--config", str(path), "heads=[{name: opengan_fea, options: {lambda_g: 0.2}}, {name: gaussian}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        cmd = [sys.executable, str(root / "tools" / "train_head.py")] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(root / "tools" / "train_head.py")]
        proc = subprocess.run(cmd + args + [f"out={out}"], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[nproc] = out
    one, two = (json.loads((outs[n] / "summary.json").read_text()) for n in (1, 2))
    assert one == two
    for n in (1, 2):
        log = [json.loads(line) for line in (outs[n] / "heads" / "opengan_fea" / "log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in log] == [3, 6]
