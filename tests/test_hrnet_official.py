"""``hrnet_w48`` against the official HRNetV2-W48 forward rebuilt from its description (tests/hrnet_reference.py).

The "official" file is written key by key from the published architecture, not from the module under
test, and the reference forward is plain functional code over that file's tensors.
"""

import pytest
import torch

from anomseg.models import ModelError, build_backbone, load_checkpoint
from anomseg.models.checkpoints import load_pretrained
from hrnet_reference import official_state_dict, reference_forward

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet statistics (FORMATS.md)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _file(tmp_path, sd, name="hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth", wrap=True):
    obj = {f"model.{k}": v for k, v in sd.items()}
    obj["loss.criterion.weight"] = torch.rand(19)
    path = tmp_path / name
    torch.save({"state_dict": obj} if wrap else obj, path)
    return path


def _compare(model, sd, size, dtype, abn=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 3, *size, generator=g, dtype=torch.float64).to(dtype)
    model = model.to(dtype).eval()
    ref_sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    with torch.no_grad():
        out = model(img)
        ref_logits, ref_feat = reference_forward(ref_sd, (img - MEAN.to(dtype)) / STD.to(dtype), abn=abn)
    return out, ref_logits, ref_feat


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sd = official_state_dict(19, seed=0)
    path = _file(tmp_path_factory.mktemp("hrnet"), sd)
    model = build_backbone("hrnet_w48", 19)
    info = load_checkpoint(model, path)
    assert info["format"] == "hrnet" and info["bn"] == "batchnorm"  # the file has num_batches_tracked
    return sd, model


@pytest.mark.slow
@pytest.mark.parametrize("size", [(256, 512), (360, 640), (720, 1280), (100, 150)])
def test_float32_matches_official_forward(official, size):
    sd, model = official
    out, ref_logits, ref_feat = _compare(model, sd, size, torch.float32)
    h, w = -(-size[0] // 4), -(-size[1] // 4)  # stride-2 convs give ceil(n / 2): no padding, no crop
    assert out.logits.shape == ref_logits.shape == (1, 19, h, w) and out.features.shape == (1, 720, h, w)
    assert ref_logits.abs().max() > 1.0  # a meaningful comparison, not of near-zero maps
    assert (out.logits - ref_logits).abs().max() <= 1e-3
    assert (out.features - ref_feat).abs().max() <= 1e-3 * max(1.0, ref_feat.abs().max().item())
    agree = (out.logits.argmax(1) == ref_logits.argmax(1)).double().mean().item()
    assert agree >= 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("size", [(256, 512), (360, 640)])
def test_float64_equals_official_forward(official, size):
    sd, model = official
    out, ref_logits, ref_feat = _compare(model, sd, size, torch.float64)
    assert (out.logits - ref_logits).abs().max().item() == 0.0
    assert (out.features - ref_feat).abs().max().item() == 0.0
    model.float()


@pytest.mark.slow
def test_inplace_abn_file_is_detected_and_converted(tmp_path):
    """A master-branch file (no num_batches_tracked) with 10 % negative gammas: read as InPlaceABN it
    equals the reference with the InPlaceABN formula; forced to BatchNorm it is another network."""
    sd = official_state_dict(19, seed=1, negative_gamma=0.1, tracked=False)
    path = _file(tmp_path, sd, wrap=False)
    model = build_backbone("hrnet_w48", 19)
    assert load_checkpoint(model, path)["bn"] == "inplace_abn"
    out, ref_logits, _ = _compare(model, sd, (128, 256), torch.float32, abn=True)
    assert (out.logits - ref_logits).abs().max() <= 1e-3
    wrong = build_backbone("hrnet_w48", 19)
    assert load_checkpoint(wrong, path, bn="batchnorm")["bn"] == "batchnorm"
    bad, _, _ = _compare(wrong, sd, (128, 256), torch.float32, abn=True)
    assert (bad.logits - ref_logits).abs().max() > 0.1  # negative gammas change the network
    with pytest.raises(ModelError, match="bn='abn'"):
        load_checkpoint(build_backbone("hrnet_w48", 19), path, bn="abn")


def test_class_count_mismatch_is_named(tmp_path):
    path = _file(tmp_path, official_state_dict(19, seed=2))
    with pytest.raises(ModelError, match="trained for 19 classes, the model has 13"):
        load_checkpoint(build_backbone("hrnet_w48", 13), path)


def test_imagenet_initialisation(tmp_path):
    """HRNet-Image-Classification file: backbone keys + classification head (dropped); last_layer untouched."""
    sd = official_state_dict(seed=3, head=False)
    sd.update({"incre_modules.0.0.conv1.weight": torch.zeros(32, 48, 1, 1), "downsamp_modules.0.0.weight": torch.zeros(1),
               "final_layer.0.weight": torch.zeros(2048, 1024, 1, 1), "classifier.weight": torch.zeros(1000, 2048),
               "classifier.bias": torch.zeros(1000)})
    path = tmp_path / "hrnetv2_w48_imagenet_pretrained.pth"
    torch.save(sd, path)
    model = build_backbone("hrnet_w48", 7)
    head_before = model.last_layer[3].weight.clone()
    info = load_pretrained(model, "hrnet_w48", path)
    assert info["dropped"] == 5
    torch.testing.assert_close(model.stage4[2].fuse_layers[3][0][2][0].weight, sd["stage4.2.fuse_layers.3.0.2.0.weight"])
    torch.testing.assert_close(model.last_layer[3].weight, head_before)
    del sd["stage3.1.branches.2.3.conv2.weight"]
    torch.save(sd, path)
    with pytest.raises(ModelError, match=r"1 missing keys \['stage3.1.branches.2.3.conv2.weight'\].*hrnetv2_w48_imagenet"):
        load_pretrained(build_backbone("hrnet_w48", 7), "hrnet_w48", path)
    with pytest.raises(ModelError, match="not found; download hrnetv2_w48_imagenet_pretrained.pth"):
        load_pretrained(model, "hrnet_w48", tmp_path / "missing.pth")


def test_train_seg_starts_from_imagenet_files(tmp_path):
    """tools/train_seg.py with model.pretrained: the backbone starts from the file (lr 0 keeps it there),
    for both ImageNet formats; a wrong file stops with a one-line error naming the expected download."""
    import sys
    from pathlib import Path

    from anomseg.data import generate_synthetic
    from test_models import csail_pair

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    import train_seg

    data = tmp_path / "data"
    generate_synthetic(data, num_train=2, num_val=1, num_test=1, num_outliers=0, height=64, width=64, workers=1,
                       progress=False)
    hr = official_state_dict(seed=4, head=False)
    hr["classifier.weight"] = torch.zeros(1000, 2048)
    torch.save(hr, tmp_path / "hrnetv2_w48_imagenet_pretrained.pth")
    enc, _ = csail_pair(13)
    enc.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(enc, tmp_path / "resnet101-imagenet.pth")
    for backbone, file, key, ref in (("hrnet_w48", "hrnetv2_w48_imagenet_pretrained.pth", "stage3.3.branches.2.0.conv1.weight",
                                      hr["stage3.3.branches.2.0.conv1.weight"]),
                                     ("pspnet_r101", "resnet101-imagenet.pth", "encoder.layer3.22.conv2.weight",
                                      enc["layer3.22.conv2.weight"])):
        out = tmp_path / backbone
        args = ["--config", str(root / "configs" / "seg_synthetic_tiny.yaml"), f"data.root={data}", f"out={out}",
                "data.val_split=null", "train.epochs=1", "train.batch_size=2", "train.max_steps_per_epoch=1",
                "train.lr=0.0", "train.momentum=0.0", "train.weight_decay=0.0", "data.crop=[64,64]",
                f"model.backbone={backbone}", "model.options={}", f"model.pretrained={tmp_path / file}"]
        assert train_seg.main(args) == 0
        state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)["state_dict"]
        torch.testing.assert_close(state[key], ref)
        assert (out / "checkpoints" / "best.pth").is_file()  # no validation split: selected by training loss
    assert train_seg.main(args[:-1] + [f"model.pretrained={tmp_path / 'hrnetv2_w48_imagenet_pretrained.pth'}"]) == 2
