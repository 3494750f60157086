"""The mask2former backbone: detectron2 key map, checkpoint formats, outputs, training and RbA fine-tuning.

The detectron2 file is written here key by key from the layout in ../shared/docs/FORMATS.md ("Checkpoint
layouts"), from a transformers model with random weights; the converted model must compute exactly what
that transformers model computes with the same tensors under its own names.
"""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from anomseg.errors import AnomsegError  # noqa: E402
from anomseg.models import build_backbone, detect_format, load_checkpoint, save_checkpoint  # noqa: E402
from anomseg.models.mask2former import mask2former_config  # noqa: E402

K = 6


def randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def detectron2_layout(hf: dict, depths, enc_layers, dec_steps) -> dict:
    """A detectron2 state dict written from the FORMATS.md layout: (detectron2 name) <- (transformers tensors)."""
    E, P, T = "model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.", "model.transformer_module."
    q5 = f"{E}swin.encoder.layers.0.blocks.0.attention.q_proj.weight" in hf  # transformers 5.x Swin names
    d2 = {}

    def both(d2_stem, hf_stem):
        for s in ("weight", "bias"):
            if f"{hf_stem}.{s}" in hf:
                d2[f"{d2_stem}.{s}"] = hf[f"{hf_stem}.{s}"]

    both("backbone.patch_embed.proj", f"{E}swin.embeddings.patch_embeddings.projection")
    both("backbone.patch_embed.norm", f"{E}swin.embeddings.norm")
    for i, depth in enumerate(depths):
        for j in range(depth):
            b, h = f"backbone.layers.{i}.blocks.{j}", f"{E}swin.encoder.layers.{i}.blocks.{j}"
            both(f"{b}.norm1", f"{h}.layernorm_before")
            qkv = ("attention.q_proj", "attention.k_proj", "attention.v_proj") if q5 else \
                ("attention.self.query", "attention.self.key", "attention.self.value")
            for s in ("weight", "bias"):  # q, k, v fused in that order
                d2[f"{b}.attn.qkv.{s}"] = torch.cat([hf[f"{h}.{n}.{s}"] for n in qkv])
            both(f"{b}.attn.proj", f"{h}.attention.o_proj" if q5 else f"{h}.attention.output.dense")
            d2[f"{b}.attn.relative_position_bias_table"] = hf[
                f"{h}.attention.relative_position_bias.relative_position_bias_table" if q5
                else f"{h}.attention.self.relative_position_bias_table"]
            both(f"{b}.norm2", f"{h}.layernorm_after")
            both(f"{b}.mlp.fc1", f"{h}.mlp.fc1" if q5 else f"{h}.intermediate.dense")
            both(f"{b}.mlp.fc2", f"{h}.mlp.fc2" if q5 else f"{h}.output.dense")
        if i < len(depths) - 1:
            both(f"backbone.layers.{i}.downsample.reduction", f"{E}swin.encoder.layers.{i}.downsample.reduction")
            both(f"backbone.layers.{i}.downsample.norm", f"{E}swin.encoder.layers.{i}.downsample.norm")
        both(f"backbone.norm{i}", f"{E}hidden_states_norms.stage{i + 1}")
    pd = "sem_seg_head.pixel_decoder"
    for i in range(3):
        for j in range(2):
            both(f"{pd}.input_proj.{i}.{j}", f"{P}input_projections.{i}.{j}")
    d2[f"{pd}.transformer.level_embed"] = hf[f"{P}level_embed"]
    for l in range(enc_layers):
        for part in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            both(f"{pd}.transformer.encoder.layers.{l}.self_attn.{part}", f"{P}encoder.layers.{l}.self_attn.{part}")
        for d2n, hfn in (("norm1", "self_attn_layer_norm"), ("linear1", "fc1"), ("linear2", "fc2"), ("norm2", "final_layer_norm")):
            both(f"{pd}.transformer.encoder.layers.{l}.{d2n}", f"{P}encoder.layers.{l}.{hfn}")
    both(f"{pd}.mask_features", f"{P}mask_projection")
    for name in ("adapter_1", "layer_1"):  # detectron2 Conv2d(norm=GN): the conv weight, then .norm
        d2[f"{pd}.{name}.weight"] = hf[f"{P}{name}.0.weight"]
        both(f"{pd}.{name}.norm", f"{P}{name}.1")
    pr = "sem_seg_head.predictor"
    d2[f"{pr}.query_embed.weight"] = hf[f"{T}queries_embedder.weight"]
    d2[f"{pr}.query_feat.weight"] = hf[f"{T}queries_features.weight"]
    d2[f"{pr}.level_embed.weight"] = hf[f"{T}level_embed.weight"]
    for i in range(dec_steps):
        L = f"{T}decoder.layers.{i}"
        for s in ("weight", "bias"):
            d2[f"{pr}.transformer_self_attention_layers.{i}.self_attn.in_proj_{s}"] = torch.cat(
                [hf[f"{L}.self_attn.{n}_proj.{s}"] for n in "qkv"])
        both(f"{pr}.transformer_self_attention_layers.{i}.self_attn.out_proj", f"{L}.self_attn.out_proj")
        both(f"{pr}.transformer_self_attention_layers.{i}.norm", f"{L}.self_attn_layer_norm")
        d2[f"{pr}.transformer_cross_attention_layers.{i}.multihead_attn.in_proj_weight"] = hf[f"{L}.cross_attn.in_proj_weight"]
        d2[f"{pr}.transformer_cross_attention_layers.{i}.multihead_attn.in_proj_bias"] = hf[f"{L}.cross_attn.in_proj_bias"]
        both(f"{pr}.transformer_cross_attention_layers.{i}.multihead_attn.out_proj", f"{L}.cross_attn.out_proj")
        both(f"{pr}.transformer_cross_attention_layers.{i}.norm", f"{L}.cross_attn_layer_norm")
        both(f"{pr}.transformer_ffn_layers.{i}.linear1", f"{L}.fc1")
        both(f"{pr}.transformer_ffn_layers.{i}.linear2", f"{L}.fc2")
        both(f"{pr}.transformer_ffn_layers.{i}.norm", f"{L}.final_layer_norm")
    both(f"{pr}.decoder_norm", f"{T}decoder.layernorm")
    for k in range(3):
        both(f"{pr}.mask_embed.layers.{k}", f"{T}decoder.mask_predictor.mask_embedder.{k}.0")
    both(f"{pr}.class_embed", "class_predictor")
    d2["criterion.empty_weight"] = hf["criterion.empty_weight"]
    return d2


@pytest.fixture(scope="module")
def released():
    """A transformers Mask2Former (tiny preset) with random weights, and its detectron2 file's dict."""
    cfg = mask2former_config(K, "tiny")
    hf = randomised(transformers.Mask2FormerForUniversalSegmentation(cfg).eval())
    sd = hf.state_dict()
    d2 = detectron2_layout(sd, cfg.backbone_config.depths, cfg.encoder_layers, cfg.decoder_layers - 1)
    for name, buf in hf.named_buffers():  # detectron2's Swin stores its relative position indices
        if name.endswith("relative_position_index"):
            i, j = name.split("encoder.layers.")[1].split(".blocks.")[0], name.split(".blocks.")[1].split(".")[0]
            d2[f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index"] = buf.clone()
    d2["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    d2["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    return hf, d2


def normalised(x):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_the_layout_written_here_covers_every_transformers_tensor(released):
    hf, d2 = released
    own = [k for k in hf.state_dict() if "swin.layernorm" not in k]
    weights = [k for k in d2 if not k.endswith("relative_position_index") and k not in ("pixel_mean", "pixel_std")]
    fused = sum(1 for k in weights if k.endswith(("qkv.weight", "qkv.bias", "in_proj_weight", "in_proj_bias"))
                and "multihead_attn" not in k)
    assert len(weights) + 2 * fused == len(own)


def test_detectron2_file_computes_what_transformers_computes(released, tmp_path):
    hf, d2 = released
    path = tmp_path / "model_final.pth"
    torch.save({"model": d2, "iteration": 90000}, path)
    assert detect_format(torch.load(path, weights_only=True)) == "mask2former_detectron2"
    model = build_backbone("mask2former", K, preset="tiny").eval()
    load_checkpoint(model, path)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        want = hf(pixel_values=normalised(x))
        got = model(x)
    assert torch.equal(got.queries.class_logits, want.class_queries_logits)
    assert torch.equal(got.queries.mask_logits, want.masks_queries_logits)


def test_the_unused_swin_layernorm_changes_nothing(released):
    hf, _ = released
    x = normalised(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        before = hf(pixel_values=x).class_queries_logits.clone()
        sd = hf.state_dict()
        key = "model.pixel_level_module.encoder.swin.layernorm.weight"
        saved = sd[key].clone()
        sd[key].add_(5.0)
        after = hf(pixel_values=x).class_queries_logits
        sd[key].copy_(saved)
    assert torch.equal(before, after)


def test_detectron2_file_strictness_names_the_key(released, tmp_path):
    _, d2 = released
    model = build_backbone("mask2former", K, preset="tiny")
    short = {k: v for k, v in d2.items() if k != "sem_seg_head.predictor.query_feat.weight"}
    torch.save({"model": short}, tmp_path / "short.pth")
    with pytest.raises(AnomsegError, match="1 missing keys .*queries_features"):
        load_checkpoint(model, tmp_path / "short.pth")
    extra = dict(d2, **{"sem_seg_head.predictor.ood_head.weight": torch.zeros(3)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(AnomsegError, match="1 unexpected keys .*ood_head"):
        load_checkpoint(model, tmp_path / "extra.pth")
    wrong = build_backbone("mask2former", K + 3, preset="tiny")
    torch.save({"model": d2}, tmp_path / "ok.pth")
    with pytest.raises(AnomsegError, match="shape mismatches .*class_predictor.*has 7 rows"):
        load_checkpoint(wrong, tmp_path / "ok.pth")


def test_a_mask2former_file_refuses_another_backbone(released, tmp_path):
    _, d2 = released
    torch.save({"model": d2}, tmp_path / "m.pth")
    with pytest.raises(AnomsegError, match="build the backbone as name 'mask2former'"):
        load_checkpoint(build_backbone("smp:Unet:resnet18", K), tmp_path / "m.pth")


def test_transformers_release_folder_and_file_load(released, tmp_path):
    hf, _ = released
    hf.save_pretrained(tmp_path / "release")  # what facebook/mask2former-swin-*-cityscapes-semantic holds
    model = build_backbone("mask2former", K, preset="tiny").eval()
    info = load_checkpoint(model, tmp_path / "release")
    assert info["format"] == "mask2former_transformers"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).queries.class_logits, hf(pixel_values=normalised(x)).class_queries_logits)
    other = build_backbone("mask2former", K, preset="tiny")
    load_checkpoint(other, tmp_path / "release" / "model.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_anomseg_checkpoint_round_trip(tmp_path):
    from anomseg.models import build_from_checkpoint

    model = randomised(build_backbone("mask2former", K, preset="tiny", num_queries=7, negative_class=True))
    save_checkpoint(tmp_path / "m.pth", model)
    again, info = build_from_checkpoint(tmp_path / "m.pth")
    assert info["format"] == "anomseg" and again.num_queries == 7 and again.negative_class
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_a_release_file_missing_a_tensor_is_refused_not_initialised(released, tmp_path):
    from safetensors.torch import load_file, save_file

    hf, _ = released
    hf.save_pretrained(tmp_path / "release")
    weights = tmp_path / "release" / "model.safetensors"
    sd = load_file(str(weights))
    dropped = next(k for k in sd if k.endswith("class_predictor.weight"))
    save_file({k: v for k, v in sd.items() if k != dropped}, str(weights))
    with pytest.raises(AnomsegError, match="missing keys .*class_predictor"):
        load_checkpoint(build_backbone("mask2former", K, preset="tiny"), tmp_path / "release")


# -- training ------------------------------------------------------------------------------------

def batch(seed=0, n=2, h=64, w=96):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)
    semantic = torch.randint(0, K, (n, h // 16, w // 16), generator=g).repeat_interleave(16, 1).repeat_interleave(16, 2)
    semantic[:, :4] = 255
    outlier = torch.zeros(n, h, w, dtype=torch.bool)
    outlier[0, 20:40, 30:60] = True
    return images, semantic, outlier


def test_class_masks_as_detectron2s_semantic_mapper_builds_them():
    from anomseg.train.mask_losses import class_masks

    sem = torch.tensor([[[0, 0, 3, 255], [3, 3, 1, 1]]])
    out = torch.tensor([[[False, True, False, False], [False, False, False, True]]])
    masks, classes = class_masks(sem, out, (4, 8), known=4, negative=True)
    assert classes[0].tolist() == [0, 1, 3, 4]  # classes present, then the negative class
    want = np.zeros((4, 4, 8))
    want[0, 0, 0] = 1                            # class 0 without its outlier pixel
    want[1, 1, 2] = 1                            # class 1 without its outlier pixel
    want[2, 0, 2] = want[2, 1, 0] = want[2, 1, 1] = 1
    want[3, 0, 1] = want[3, 1, 3] = 1            # the outliers; void and padding in no mask
    np.testing.assert_array_equal(masks[0].numpy(), want)


def test_a_training_step_lowers_the_set_loss():
    from anomseg.train.mask_losses import mask_loss

    torch.manual_seed(0)
    model = build_backbone("mask2former", K, preset="tiny").train()
    images, semantic, outlier = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss():
        torch.manual_seed(1)  # the same sampled points every time
        return mask_loss("mask2former", model, images, semantic, outlier, known=K)

    first = loss()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        assert loss().item() < 0.9 * first.item()


def upsample_corners(x, H, W):
    """Bilinear with align_corners=True: source coordinate y * (h - 1) / (H - 1)."""
    h, w = x.shape[-2:]
    def axis(n_out, n_in):
        src = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    y0, y1, fy = axis(H, h)
    x0, x1, fx = axis(W, w)
    top = x[..., y0, :][..., x0] * (1 - fx) + x[..., y0, :][..., x1] * fx
    bot = x[..., y1, :][..., x0] * (1 - fx) + x[..., y1, :][..., x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def test_rba_outlier_loss_against_the_published_hinge():
    from anomseg.train.mask_losses import rba_outlier_loss

    rng = np.random.default_rng(3)
    z, m = rng.normal(size=(2, 5, K + 1)) * 2, rng.normal(size=(2, 5, 8, 12)) * 2
    _, semantic, outlier = batch(h=32, w=48)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    s = -np.tanh(np.einsum("nqc,nqhw->nchw", p[..., :K], 1 / (1 + np.exp(-m)))).sum(1)  # at mask resolution
    s = upsample_corners(s, 32, 48)
    inl = ((semantic != 255) & ~outlier).numpy()
    o = outlier.numpy()
    want = 0.5 * (np.mean(np.maximum(s[inl] - 0.0, 0) ** 2) + np.mean(np.maximum(5.0 - s[o], 0) ** 2))
    got = rba_outlier_loss(torch.tensor(z), torch.tensor(m), semantic, outlier, K)
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from anomseg.data import generate_synthetic

    tmp = tmp_path_factory.mktemp("m2f")
    data = tmp / "data"
    generate_synthetic(data, num_train=4, num_val=2, num_test=4, num_outliers=3, height=64, width=128, workers=1,
                       progress=False)
    torch.manual_seed(0)
    base = randomised(build_backbone("mask2former", 13, preset="tiny"), seed=4)
    save_checkpoint(tmp / "m2f.pth", base)
    return tmp, data


def seg_cfg(tmp, data, name, **train):
    from anomseg.config import merge
    from anomseg.engine.train_seg import DEFAULTS

    import copy
    cfg = merge(copy.deepcopy(DEFAULTS), {
        "out": str(tmp / name), "data": {"root": str(data), "crop": [64, 128], "val_split": None,
                                         "paste": {"pool": str(data / "outliers"), "count": [1, 1]}},
        "model": {"backbone": "mask2former", "options": {"preset": "tiny"}, "init": str(tmp / "m2f.pth")},
        "train": {"epochs": 1, "batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "amp": False, **train}})
    return cfg


def test_rba_finetuning_changes_the_class_head_only(synthetic):
    from anomseg.engine.train_seg import train_segmentation

    tmp, data = synthetic
    train_segmentation(seg_cfg(tmp, data, "rba", finetune="head", loss={"name": "rba", "options": {}}), progress=False)
    before = torch.load(tmp / "m2f.pth", weights_only=True)["state_dict"]
    after = torch.load(tmp / "rba" / "checkpoints" / "last.pth", weights_only=True)["state_dict"]
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"net.class_predictor.weight", "net.class_predictor.bias"}


def test_uno_grows_the_head_and_trains_the_negative_class(synthetic):
    from anomseg.engine.train_seg import train_segmentation

    tmp, data = synthetic
    grown = build_backbone("mask2former", 13, preset="tiny", negative_class=True)
    load_checkpoint(grown, tmp / "m2f.pth")
    w0 = torch.load(tmp / "m2f.pth", weights_only=True)["state_dict"]["net.class_predictor.weight"]
    w = grown.net.class_predictor.weight.detach()
    assert w.shape[0] == 15 and torch.equal(w[:13], w0[:13]) and torch.equal(w[14], w0[13]) and not w[13].any()
    train_segmentation(seg_cfg(tmp, data, "uno", loss={"name": "uno", "options": {}}) | {
        "model": {"backbone": "mask2former", "options": {"preset": "tiny", "negative_class": True},
                  "init": str(tmp / "m2f.pth"), "pretrained": None}}, progress=False)
    after = torch.load(tmp / "uno" / "checkpoints" / "last.pth", weights_only=True)["state_dict"]
    assert after["net.class_predictor.weight"][13].abs().sum() > 0  # the negative class learned from the pasted objects


@pytest.mark.parametrize("loss,backbone,options,match", [
    ("ce", "mask2former", {"preset": "tiny"}, "is a pixel loss on logits"),
    ("rba", "smp:Unet:resnet18", {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}, "trains mask queries"),
    ("uno", "mask2former", {"preset": "tiny"}, "needs negative_class: true"),
])
def test_losses_that_do_not_fit_the_backbone_are_refused(synthetic, loss, backbone, options, match):
    from anomseg.config import ConfigError
    from anomseg.engine.train_seg import train_segmentation

    tmp, data = synthetic
    cfg = seg_cfg(tmp, data, f"bad_{loss}", loss={"name": loss, "options": {}})
    cfg["model"] = {"backbone": backbone, "options": options, "init": None, "pretrained": None}
    with pytest.raises(ConfigError, match=match):
        train_segmentation(cfg, progress=False)


# -- the methods, through the evaluation, the segmenter and the visualizer --------------------------

def test_query_methods_average_passes_with_flips_undone():
    from anomseg.methods import Observation, build_method
    from anomseg.models.inference import predict
    from anomseg.scores.masks import eam

    model = randomised(build_backbone("mask2former", K, preset="tiny"), seed=2).eval()
    x = torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8)
    pred = predict(model, x, size=(32, 48), flip=True)
    method = build_method("eam")
    method.setup(model)
    with torch.no_grad():
        plain = eam(model(x).queries, (32, 48))
        mirrored = eam(model(x.flip(2)).queries, (32, 48)).flip(-1)
    torch.testing.assert_close(method.score(Observation(pred, x, model, (32, 48))), (plain + mirrored) / 2)


def test_query_methods_refuse_a_backbone_without_queries():
    from anomseg.config import ConfigError
    from anomseg.methods import build_method

    with pytest.raises(ConfigError, match="has none: use backbone name 'mask2former'"):
        build_method("rba").setup(build_backbone("smp:Unet:resnet18", K, encoder_depth=3, decoder_channels=[16, 8, 4]))
    with pytest.raises(ConfigError, match="needs a K \\+ 2-class head"):
        build_method("uno").setup(build_backbone("mask2former", K, preset="tiny"))
    with pytest.raises(ConfigError, match="refine_classes \\[9\\]"):
        build_method("m2a", refine_classes=[2, 9]).setup(build_backbone("mask2former", K, preset="tiny"))


def test_eval_tool_segmenter_and_visualizer_run_the_mask_methods(synthetic):
    import json
    import sys
    from pathlib import Path

    import yaml

    from anomseg.segmenter import AnomalySegmenter

    tmp, data = synthetic
    uno = randomised(build_backbone("mask2former", 13, preset="tiny", negative_class=True), seed=5)
    save_checkpoint(tmp / "uno.pth", uno)
    cfg = {"out": str(tmp / "eval"), "data": {"name": "streethazards", "root": str(data), "split": "test"},
           "backbone": {"checkpoint": str(tmp / "m2f.pth")}, "inference": {"flip": True},
           "methods": [{"name": "rba"}, {"name": "eam"}, {"name": "m2a", "options": {"refine_classes": [1, 2, 9]}},
                       {"name": "msp"}, {"name": "uno", "backbone": {"checkpoint": str(tmp / "uno.pth")}}],
           "overlays": {"images": 1}}
    (tmp / "eval.yaml").write_text(yaml.safe_dump(cfg))
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    import eval_caos
    import visualize

    assert eval_caos.main(["--config", str(tmp / "eval.yaml")]) == 0
    report = json.loads((tmp / "eval" / "report.json").read_text())
    assert set(report["methods"]) == {"rba", "eam", "m2a", "msp", "uno"}
    for r in report["methods"].values():
        assert 0 <= r["auroc"] <= 1
    assert visualize.main([str(tmp / "eval"), "--first", "1", "--out", str(tmp / "viz")]) == 0
    assert len(list((tmp / "viz").glob("*.png"))) == 1
    seg = AnomalySegmenter.from_files(checkpoint=str(tmp / "m2f.pth"), method="rba", inference={"flip": True})
    image = np.zeros((64, 128, 3), np.uint8)
    scores = seg(image)
    assert scores.shape == (64, 128) and scores.dtype == np.float32


def test_without_transformers_the_backbone_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(AnomsegError, match=r"not installed: pip install 'transformers>=4.46'"):
        build_backbone("mask2former", K, preset="tiny")


def test_backbone_options_are_checked_in_one_line():
    with pytest.raises(AnomsegError, match="option preset = 'swin_xl' must be one of"):
        build_backbone("mask2former", K, preset="swin_xl")
    with pytest.raises(AnomsegError, match="option decoder_layers = 1 must be"):
        build_backbone("mask2former", K, preset="tiny", decoder_layers=1)


def test_torchrun_two_processes_train_a_mask2former(synthetic):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tmp, data = synthetic
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "tools" / "train_seg.py"), "--config", str(root / "configs" / "seg_synthetic_m2f.yaml"),
           f"data.root={data}", f"out={tmp / 'ddp'}", "train.epochs=1", "train.batch_size=2", "data.crop=[64,128]",
           "train.max_steps_per_epoch=2", "data.val_split=null"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sd = torch.load(tmp / "ddp" / "checkpoints" / "last.pth", weights_only=True)["state_dict"]
    assert sd["net.class_predictor.weight"].shape == (14, 64)


def test_mask_loss_options_are_checked_before_training(synthetic):
    from anomseg.config import ConfigError
    from anomseg.engine.train_seg import train_segmentation

    tmp, data = synthetic
    for loss, match in (({"name": "rba", "options": {"outlier_lower": "high"}}, "option outlier_lower = 'high' must be"),
                        ({"name": "rba", "options": {"outlier_low": 5}}, "did you mean 'outlier_lower'"),
                        ({"name": "mask2former", "options": {"lam": 1}}, "takes no options")):
        with pytest.raises(ConfigError, match=match):
            train_segmentation(seg_cfg(tmp, data, "bad_opts", loss=loss, finetune="head"), progress=False)
    assert not (tmp / "bad_opts" / "checkpoints").exists()


def test_official_model_zoo_pickle_of_numpy_arrays_loads(released, tmp_path):
    """detectron2's model zoo ships model_final_*.pkl: a plain pickle of {"model": {name: numpy array}}."""
    import pickle

    hf, d2 = released
    zoo = {"model": {k: v.numpy() for k, v in d2.items()}, "__author__": "Detectron2 Model Zoo",
           "matching_heuristics": True}
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        want = hf(pixel_values=normalised(x)).masks_queries_logits
    for protocol in (2, 4, 5):  # every pickle protocol writes arrays through other numpy functions
        path = tmp_path / f"model_final_{protocol}.pkl"
        path.write_bytes(pickle.dumps(zoo, protocol=protocol))
        model = build_backbone("mask2former", K, preset="tiny").eval()
        assert load_checkpoint(model, path)["format"] == "mask2former_detectron2"
        with torch.no_grad():
            assert torch.equal(model(x).queries.mask_logits, want), protocol


def test_a_pickle_naming_anything_but_arrays_is_refused_unrun(tmp_path):
    import os
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": Evil()}}))
    with pytest.raises(AnomsegError, match="names posix.system|names nt.system|not a numpy array"):
        load_checkpoint(build_backbone("mask2former", K, preset="tiny"), path)
    assert not marker.exists()


def test_tiny_r18_encoder_computes_torchvisions_resnet18():
    """The tiny_r18 preset's encoder (transformers' ResNetBackbone) started from an smp ResNet-18 encoder computes
    what that encoder (torchvision's ResNet-18) computes, stage by stage, to 0 in float64; a file of another
    encoder is refused in one line."""
    import pytest as _pytest

    from anomseg.errors import AnomsegError

    fpn = build_backbone("smp:FPN:resnet18", 5, decoder_segmentation_channels=32, decoder_pyramid_channels=32)
    enc = fpn.model.encoder.double().eval()
    g = torch.Generator().manual_seed(3)
    for m in enc.modules():  # BN statistics far from identity, so a mapped-wrong BN shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.normal_(generator=g)
            m.bias.data.normal_(generator=g)
    m2f = build_backbone("mask2former", 5, preset="tiny_r18").double().eval()
    assert m2f.load_resnet_encoder(enc.state_dict(), "fpn") == len(enc.state_dict())
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64, generator=g)
    with torch.no_grad():
        want = enc(x)[2:]  # smp returns the input, the stem, then the four stages
        got = m2f.encoder()(x).feature_maps
    assert len(got) == 4
    for a, b in zip(want, got):
        assert a.shape == b.shape and float((a - b).abs().max()) == 0.0
    other = build_backbone("smp:FPN:resnet34", 5, decoder_segmentation_channels=32, decoder_pyramid_channels=32)
    with _pytest.raises(AnomsegError, match="has no place in this Mask2Former's encoder"):
        m2f.load_resnet_encoder(other.model.encoder.state_dict(), "r34.pth")
