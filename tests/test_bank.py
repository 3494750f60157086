"""Feature-bank extraction on a tiny backbone and the synthetic data."""

import numpy as np
import pytest
import torch

import anomseg.bank.extract as extract_mod
from anomseg.bank import OPEN, BankError, FeatureBank, extract_bank
from anomseg.bank.store import part_name
from anomseg.data import build_dataset, generate_synthetic
from anomseg.data.base import resize_nearest
from anomseg.data.paste import PastedDataset
from anomseg.distributed import DistInfo
from anomseg.models import build_backbone


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank") / "data"
    generate_synthetic(root, num_train=5, num_val=3, num_test=1, num_outliers=4, height=64, width=128,
                       workers=1, progress=False)
    model = tiny_model()
    train = PastedDataset(build_dataset("streethazards", root, "train"), root / "outliers", count=(1, 2))
    return root, model, train


def bank_arrays(bank):
    return {(k, f): bank.read(k, 0, bank.counts[k], ("features", "labels", "image", "yx"))[f]
            for k in ("closed", "open") for f in ("features", "labels", "image", "yx")}


def test_rows_are_the_model_features_at_their_pixels(setup, tmp_path):
    root, model, train = setup
    bank = extract_bank(model, train, tmp_path / "b", backbone="fpn", closed_per_image=50, chunk_images=2, progress=False)
    assert bank.feature_dim == model.feature_dim and bank.meta["stride"] == model.stride
    arrays = bank_arrays(bank)
    assert (arrays[("open", "labels")] == OPEN).all() and len(arrays[("open", "labels")]) > 0
    assert arrays[("closed", "labels")].min() >= 0 and arrays[("closed", "labels")].max() < 13
    assert np.bincount(arrays[("closed", "image")]).max() <= 50  # closed pixels capped per image
    s = train[1]
    with torch.no_grad():
        feat = model(torch.from_numpy(np.array(s["image"]))[None]).features[0].numpy()
    h, w = feat.shape[1:]
    anom = resize_nearest(s["anomaly"], (h, w))
    sem = resize_nearest(s["semantic"], (h, w))
    for kind in ("closed", "open"):
        sel = arrays[(kind, "image")] == 1
        ys, xs = arrays[(kind, "yx")][sel].T
        np.testing.assert_allclose(arrays[(kind, "features")][sel].astype(np.float32), feat[:, ys, xs].T, rtol=2e-3, atol=2e-3)
        assert (anom[ys, xs] == (1 if kind == "open" else 0)).all()  # void never stored
    sel = arrays[("open", "image")] == 1
    assert sel.sum() == (anom == 1).sum()  # every open pixel kept by default
    closed = arrays[("closed", "image")] == 1
    np.testing.assert_array_equal(arrays[("closed", "labels")][closed], sem[tuple(arrays[("closed", "yx")][closed].T)])


def test_killed_extraction_resumes_to_the_identical_bank(setup, tmp_path, monkeypatch):
    root, model, train = setup
    kw = dict(backbone="fpn", closed_per_image=40, chunk_images=2, progress=False)
    reference = bank_arrays(extract_bank(model, train, tmp_path / "straight", **kw))
    real_write = extract_mod.write_part
    calls = {"n": 0}

    def dying(path, rows, attrs):
        calls["n"] += 1
        if calls["n"] == 2:
            path.with_name(path.name + ".tmp").write_bytes(b"half-written")  # killed while writing
            raise KeyboardInterrupt("killed")
        real_write(path, rows, attrs)

    monkeypatch.setattr(extract_mod, "write_part", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_bank(model, train, tmp_path / "resumed", **kw)
    with pytest.raises(BankError, match="incomplete bank"):
        FeatureBank(tmp_path / "resumed")
    monkeypatch.setattr(extract_mod, "write_part", real_write)
    resumed = bank_arrays(extract_bank(model, train, tmp_path / "resumed", **kw))
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key])


def tiny_model():
    torch.manual_seed(0)
    return build_backbone("smp:FPN:resnet18", 13, encoder_depth=3, decoder_segmentation_channels=32,
                          decoder_pyramid_channels=32).eval()


def _extract_worker(rank, world, init_file, data_root, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train = PastedDataset(build_dataset("streethazards", data_root, "train"), data_root / "outliers", count=(1, 2))
        extract_bank(tiny_model(), train, out, backbone="fpn", closed_per_image=40, chunk_images=2, progress=False,
                     dist=DistInfo(rank, world, rank, torch.device("cpu")))
    finally:
        dist.destroy_process_group()


def test_ranks_write_their_parts_and_one_view_reads_all(setup, tmp_path):
    import torch.multiprocessing as mp

    root, _, train = setup
    single = bank_arrays(extract_bank(tiny_model(), train, tmp_path / "one", backbone="fpn", closed_per_image=40,
                                      chunk_images=2, progress=False))
    mp.spawn(_extract_worker, args=(2, str(tmp_path / "init"), root, tmp_path / "two"), nprocs=2, join=True)
    shared = bank_arrays(FeatureBank(tmp_path / "two"))
    for key in single:
        np.testing.assert_array_equal(shared[key], single[key])


def test_reuse_and_mismatch(setup, tmp_path):
    root, model, train = setup
    kw = dict(backbone="fpn", closed_per_image=40, chunk_images=2, progress=False)
    extract_bank(model, train, tmp_path / "b", **kw)
    mtime = (tmp_path / "b" / part_name(0)).stat().st_mtime_ns
    extract_bank(model, train, tmp_path / "b", **kw)  # complete and matching: reused as is
    assert (tmp_path / "b" / part_name(0)).stat().st_mtime_ns == mtime
    with pytest.raises(BankError, match="built with other settings \\(closed_per_image"):
        extract_bank(model, train, tmp_path / "b", **{**kw, "closed_per_image": 10})
    other = build_backbone("smp:FPN:resnet18", 13, encoder_depth=3, decoder_segmentation_channels=32,
                           decoder_pyramid_channels=32)
    with pytest.raises(BankError, match="weights"):
        extract_bank(other, train, tmp_path / "b", **kw)
    with pytest.raises(BankError, match="built with backbone 'fpn', not 'hrnet_w48'"):
        FeatureBank(tmp_path / "b").check_compatible(backbone="hrnet_w48")


def test_closed_pixels_from_one_random_image_on_the_fly(setup, tmp_path):
    from anomseg.bank import MixedBatchSampler

    root, model, train = setup
    bank = extract_bank(model, train, tmp_path / "b", backbone="fpn", closed_per_image=40, chunk_images=2, progress=False)
    sampler = MixedBatchSampler(bank, n_closed=100, n_open=30, closed_source="image", model=model, dataset=train, seed=0)
    b = sampler.next()
    assert b["closed"].shape == (100, model.feature_dim) and b["open"].shape == (30, model.feature_dim)
    assert b["closed_labels"].min() >= 0 and b["closed_labels"].max() < 13
    with pytest.raises(ValueError, match="needs the backbone"):
        MixedBatchSampler(bank, closed_source="image")
