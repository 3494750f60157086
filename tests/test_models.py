"""Backbones and the checkpoint formats users bring, built here with random weights."""

import pickle

import pytest
import torch

from anomseg.models import ModelError, build_backbone, build_from_checkpoint, load_checkpoint, save_checkpoint


def tiny_unet(k=5):
    return build_backbone("smp:Unet:resnet18", k, encoder_depth=3, decoder_channels=[16, 8, 4])


def bn(prefix, c, syncbn=False, tracked=False):
    d = {f"{prefix}.weight": torch.rand(c), f"{prefix}.bias": torch.randn(c) * 0.1,
         f"{prefix}.running_mean": torch.randn(c) * 0.1, f"{prefix}.running_var": torch.rand(c) + 0.5}
    if syncbn:  # the CSAIL SyncBN buffers (FORMATS.md)
        d.update({f"{prefix}._tmp_running_mean": torch.zeros(c), f"{prefix}._tmp_running_var": torch.ones(c),
                  f"{prefix}._running_iter": torch.tensor(1)})
    if tracked:
        d[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
    return d


def conv(prefix, cout, cin, k, bias=False):
    d = {f"{prefix}.weight": torch.randn(cout, cin, k, k) * (2.0 / (cin * k * k)) ** 0.5}
    if bias:
        d[f"{prefix}.bias"] = torch.zeros(cout)
    return d


def csail_pair(num_classes):
    """encoder/decoder state dicts of resnet101dilated + ppm_deepsup, keys and shapes from FORMATS.md."""
    enc = {**conv("conv1", 64, 3, 3), **bn("bn1", 64, True), **conv("conv2", 64, 64, 3), **bn("bn2", 64, True),
           **conv("conv3", 128, 64, 3), **bn("bn3", 128, True)}
    cin = 128
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3)), 1):
        for j in range(n):
            p = f"layer{li}.{j}"
            enc.update({**conv(f"{p}.conv1", planes, cin, 1), **bn(f"{p}.bn1", planes, True),
                        **conv(f"{p}.conv2", planes, planes, 3), **bn(f"{p}.bn2", planes, True),
                        **conv(f"{p}.conv3", planes * 4, planes, 1), **bn(f"{p}.bn3", planes * 4, True)})
            if j == 0:
                enc.update({**conv(f"{p}.downsample.0", planes * 4, cin, 1), **bn(f"{p}.downsample.1", planes * 4, True)})
            cin = planes * 4
    dec = {}
    for i in range(4):
        dec.update({**conv(f"ppm.{i}.1", 512, 2048, 1), **bn(f"ppm.{i}.2", 512, True)})
    dec.update({**conv("cbr_deepsup.0", 512, 1024, 3), **bn("cbr_deepsup.1", 512, True),
                **conv("conv_last.0", 512, 4096, 3), **bn("conv_last.1", 512, True),
                **conv("conv_last.4", num_classes, 512, 1, bias=True),
                **conv("conv_last_deepsup", num_classes, 512, 1, bias=True)})
    return enc, dec


@pytest.fixture(scope="module")
def csail_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("csail")
    enc, dec = csail_pair(13)
    torch.save(enc, d / "encoder_epoch_20.pth")
    torch.save(dec, d / "decoder_epoch_20.pth")
    return d, enc, dec


def test_backbone_outputs_and_input_formats():
    m = tiny_unet().eval()
    x = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8)
    with torch.no_grad():
        a = m(x)
        b = m(x.permute(0, 3, 1, 2).float() / 255)
    assert a.logits.shape == (2, 5, 32, 48) and a.features.shape[:2] == (2, m.feature_dim)
    torch.testing.assert_close(a.logits, b.logits)
    with pytest.raises(ModelError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 3)


@pytest.mark.slow
def test_csail_pair(csail_files):
    d, enc, dec = csail_files
    for source in (d / "encoder_epoch_20.pth", d / "decoder_epoch_20.pth", d,
                   (d / "encoder_epoch_20.pth", d / "decoder_epoch_20.pth")):
        model = build_backbone("pspnet_r101", 13)
        assert load_checkpoint(model, source)["format"] == "csail"
    torch.testing.assert_close(model.encoder.layer3[22].conv2.weight, enc["layer3.22.conv2.weight"])
    torch.testing.assert_close(model.decoder.conv_last[4].bias, dec["conv_last.4.bias"])
    assert model.encoder.layer3[1].conv2.dilation == (2, 2) and model.encoder.layer4[1].conv2.dilation == (4, 4)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.logits.shape == (1, 13, 8, 8) and out.features.shape == (1, 512, 8, 8)
    with pytest.raises(ModelError, match="trained for 13 classes, the model has 17"):
        load_checkpoint(build_backbone("pspnet_r101", 17), d)


def test_mismatch_names_missing_and_unexpected_keys(tmp_path):
    m = tiny_unet()
    sd = m.state_dict()
    sd["model.extra.weight"] = torch.zeros(1)
    del sd["model.segmentation_head.0.bias"]
    torch.save({"format": "anomseg", "backbone": m.build_args, "state_dict": sd, "config": {}}, tmp_path / "x.pth")
    with pytest.raises(ModelError, match=r"1 missing keys \(model.segmentation_head.0.bias\); 1 unexpected keys \(model.extra.weight\)"):
        load_checkpoint(tiny_unet(), tmp_path / "x.pth")


def test_own_format_round_trip_and_weights_only(tmp_path):
    m = tiny_unet().eval()
    save_checkpoint(tmp_path / "m.pth", m, {"note": "test"})
    m2, info = build_from_checkpoint(tmp_path / "m.pth")
    assert info["format"] == "anomseg" and info["config"] == {"note": "test"}
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, m2.eval()(x).logits)

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(ModelError, match="weights_only=True"):
        load_checkpoint(tiny_unet(), tmp_path / "evil.pth")
