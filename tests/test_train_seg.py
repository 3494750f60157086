"""Segmentation training: torchrun with 2 gloo processes equals one process; resume equals a straight run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anomseg.data import generate_synthetic

ROOT = Path(__file__).resolve().parents[1]
TOOL = str(ROOT / "tools" / "train_seg.py")
CONFIG = str(ROOT / "configs" / "seg_synthetic_tiny.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg") / "data"
    generate_synthetic(root, num_train=8, num_val=2, num_test=1, num_outliers=4, height=64, width=128,
                       workers=1, progress=False)
    return root


def overrides(data, out, epochs=1):
    # BN frozen: per-process batch statistics are the one thing 2 processes cannot share on CPU
    return [f"data.root={data}", f"out={out}", f"train.epochs={epochs}", "train.batch_size=4",
            "train.max_steps_per_epoch=2", "train.freeze_bn=true", "data.crop=[48,96]",
            "model.options={encoder_depth: 3, decoder_channels: [16, 8, 4]}"]


def run(args, nproc=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, TOOL] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", TOOL]
    proc = subprocess.run(cmd + ["--config", CONFIG] + args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(out):
    return torch.load(Path(out) / "checkpoints" / "last.pth", weights_only=True)["state_dict"]


def test_two_gloo_processes_train_the_same_weights(data, tmp_path):
    run(overrides(data, tmp_path / "one"))
    run(overrides(data, tmp_path / "two"), nproc=2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert (tmp_path / "two" / "config.yaml").is_file() and (tmp_path / "two" / "log.jsonl").is_file()


def test_resume_equals_an_uninterrupted_run(data, tmp_path):
    run(overrides(data, tmp_path / "straight", epochs=2))
    run(overrides(data, tmp_path / "resumed", epochs=2) + ["train.stop_after_epochs=1"])  # "killed" after epoch 1
    assert len((tmp_path / "resumed" / "log.jsonl").read_text().splitlines()) == 1
    run(overrides(data, tmp_path / "resumed", epochs=2))  # picks up checkpoints/last.pth
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    lines = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_val_every_validates_every_nth_and_the_last_epoch(data, tmp_path):
    import json

    out = tmp_path / "val_every"
    run(overrides(data, out, epochs=3) + ["train.val_every=2"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert ["val_miou" in e for e in log] == [False, True, True]
    best = torch.load(out / "checkpoints" / "best.pth", weights_only=True)
    assert best["selected_by"] == "val_miou" and best["epoch"] in (1, 2)  # a validated epoch, never the first
    assert best["best_score"] == max(e["val_miou"] for e in log if "val_miou" in e)


def test_a_frozen_encoder_stays_bitwise_unchanged(data, tmp_path):
    """train.finetune: decoder on a Mask2Former started from a segmenter's ResNet-18 encoder (model.init_encoder):
    the encoder's weights and BN statistics are the segmenter's, bit for bit, after training."""
    seg = tmp_path / "seg"
    run([f"data.root={data}", f"out={seg}", "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=1",
         "data.crop=[64,128]", "model.backbone=smp:FPN:resnet18", "model.options={decoder_segmentation_channels: 32, decoder_pyramid_channels: 32}"])
    m2f = tmp_path / "m2f"
    run([f"data.root={data}", f"out={m2f}", "train.epochs=1", "train.batch_size=2", "train.max_steps_per_epoch=2",
         "data.crop=[64,128]", "model.backbone=mask2former", "model.options={preset: tiny_r18}",
         f"model.init_encoder={seg / 'checkpoints' / 'best.pth'}", "train.finetune=decoder", "train.optimizer=adamw",
         "train.lr=0.01", "train.loss.name=mask2former"])
    encoder = {k[len("model.encoder."):]: v for k, v in weights(seg).items() if k.startswith("model.encoder.")}
    trained = weights(m2f)
    from anomseg.models.mask2former import ENCODER, resnet_key

    for k, v in encoder.items():
        assert torch.equal(trained["net." + ENCODER + resnet_key(k)], v), k
    assert len(encoder) == 120  # every ResNet-18 tensor, BN statistics included


def test_dinov2_decoder_trains_under_torchrun_on_a_frozen_released_encoder(data, tmp_path):
    """A dinov2:tiny started from an official-layout file (model.pretrained): 2 gloo processes train the same
    decoder as one, and the encoder is the file's, bit for bit, after training."""
    sys.path.insert(0, str(ROOT / "tests"))
    from dinov2_reference import official_state_dict

    torch.save(official_state_dict("tiny"), tmp_path / "dinov2_tiny_pretrain.pth")
    args = lambda out: [f"data.root={data}", f"out={out}", "train.epochs=1", "train.batch_size=4",  # noqa: E731
                        "train.max_steps_per_epoch=2", "train.freeze_bn=true", "data.crop=[56,112]",
                        "model.backbone=dinov2:tiny", "model.options={layers: [1, 3], decoder: linear}",
                        f"model.pretrained={tmp_path / 'dinov2_tiny_pretrain.pth'}", "train.optimizer=adamw",
                        "train.lr=0.01"]
    run(args(tmp_path / "one"))
    run(args(tmp_path / "two"), nproc=2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    from anomseg.models import build_backbone
    from anomseg.models.formats import dinov2 as fmt

    model = build_backbone("dinov2", 13, preset="tiny", layers=[1, 3])
    released = fmt.convert(model, official_state_dict("tiny"), "test")
    for k, v in released.items():
        assert torch.equal(a[k], v), k
    assert not torch.equal(a["decoder.1.weight"], model.state_dict()["decoder.1.weight"])  # the decoder trained


def run_killed_after_first_epoch(args) -> int:
    """Start a training, SIGKILL it as soon as its first epoch is logged (mid-way through the next one), return how
    many epochs were logged when it died."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = Path(next(a for a in args if a.startswith("out="))[len("out="):])
    proc = subprocess.Popen([sys.executable, TOOL, "--config", CONFIG] + args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "log.jsonl").is_file() and (out / "log.jsonl").read_text().strip():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr[-2000:]}"
    return len((out / "log.jsonl").read_text().splitlines())


def test_killed_mask2former_and_rba_training_rerun_to_uninterrupted_runs_bitwise(data, tmp_path):
    """The set loss samples points at random and the Swin has drop path: kill -9 a training after its first
    epoch, rerun it, and the weights and log equal an uninterrupted run's bit for bit (last.pth holds every
    random stream); then the same for an RbA fine-tuning."""
    m2f = [f"data.root={data}", "train.batch_size=2", "train.max_steps_per_epoch=2", "data.crop=[64,128]",
           "model.backbone=mask2former", "model.options={preset: tiny}", "train.optimizer=adamw", "train.lr=0.001",
           "train.loss.name=mask2former", "train.epochs=4"]
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                       for line in (p / "log.jsonl").read_text().splitlines()]
    run(m2f + [f"out={tmp_path / 'straight'}"])
    assert run_killed_after_first_epoch(m2f + [f"out={tmp_path / 'cut'}"]) < 4  # killed before the end
    run(m2f + [f"out={tmp_path / 'cut'}"])
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert strip(tmp_path / "straight") == strip(tmp_path / "cut") and len(strip(tmp_path / "cut")) == 4
    rba = m2f[:-2] + ["train.loss.name=rba", "train.epochs=4", f"model.init={tmp_path / 'straight' / 'checkpoints' / 'last.pth'}",
                      "train.finetune=head", f"data.paste={{pool: {data / 'outliers'}, count: [1, 2]}}"]
    run(rba + [f"out={tmp_path / 'rba_straight'}"])
    assert run_killed_after_first_epoch(rba + [f"out={tmp_path / 'rba_cut'}"]) < 4
    run(rba + [f"out={tmp_path / 'rba_cut'}"])
    a, b = weights(tmp_path / "rba_straight"), weights(tmp_path / "rba_cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert strip(tmp_path / "rba_straight") == strip(tmp_path / "rba_cut")


def test_training_pastes_fresh_outliers_every_epoch_and_the_same_ones_on_a_rerun(data):
    """RbA / UEM paste anew at every iteration: an image's pasted pixels differ from one epoch to the next, are the
    same for the same (seed, epoch, image), and are pasted before the augmentation (crop and flip move them)."""
    from anomseg.data import build_dataset
    from anomseg.data.paste import PastedDataset, Paster
    from anomseg.engine.train_seg import _TrainSet
    from anomseg.train.augment import SegAugment, sample_seed

    train = build_dataset("streethazards", data, "train")
    paster = Paster(pool_root=data / "outliers", count=(2, 3))
    items = _TrainSet(train, SegAugment((64, 128), (1.0, 1.0), flip=False), paster)
    outliers = [[items[(i, sample_seed(0, epoch, i))][2].numpy() == 1 for epoch in range(3)] for i in range(4)]
    assert all(o.any() for per_image in outliers for o in per_image)  # 2-3 objects pasted every time
    assert all(not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2]) for a in outliers)
    again = items[(0, sample_seed(0, 1, 0))][2].numpy() == 1
    assert np.array_equal(again, outliers[0][1])
    fixed = PastedDataset(train, data / "outliers", count=(2, 3))  # a bank's pastes: one draw per image
    assert np.array_equal(fixed[1]["anomaly"], fixed[1]["anomaly"])
