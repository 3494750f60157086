"""``uem`` and ``pixood`` side by side with the releases: the official code, imported from checkouts, and anomseg's
on the same random weights, features, logits and distances; max |difference| per quantity.

    python tools/bench/compare_foundation_official.py --uem /path/to/UEM-likelihood-ratio --pixood /path/to/PixOOD

``--uem``: a checkout of github.com/NazirNayal8/UEM-likelihood-ratio (tested at 1d76b9d); ``--pixood``: of
github.com/vojirt/PixOOD (tested at c52fdb0). The interpreter needs their imports besides anomseg's:
``pytorch_lightning==2.5.0 torchmetrics==1.6.1 easydict einops fvcore`` (a separate venv; nothing of anomseg
needs them). UEM's package imports a compiled CUDA op (MultiScaleDeformableAttention) that none of the compared
functions calls: an empty stand-in module is registered under its name. PixOOD's helpers use ``np.Inf``, gone in
NumPy 2: it is set back to ``np.inf`` for the import.

Compared (float64 unless said):

* UEM projector + LinearHead (``misc.MLP``, ``misc.LinearHead``) vs ``UEMHead.inlier_outlier``, same weights;
* UEM's fused score: ``OoDSegmentationModel.test_step`` (its sliding-window maps given) vs ``uem``'s ``score``;
* UEM's loss: ``likelihood_ratio_loss`` vs the BCE of ``UEMHead.train_step`` on the same rows;
* UEM's schedule: ``schedulers/poly.get_polynomial_decay_schedule_with_warmup(1500, 4000)`` vs ``UEMHead.lr_at``;
* PixOOD condensation: ``DiffKMeansMultiClassv2`` vs ``Condensation`` on the same whitening data, at every state of
  the release's own AdamW trajectory (18 steps, the temperature schedule of 6 epochs): the loss, its gradients
  with respect to the prototypes and the tau logits, the running statistics, the validity mask (resets are not
  compared: the release draws their rows from NumPy's global generator);
* PixOOD Neyman-Pearson: ``estimate_neyman_pearson_task`` (its random alternative drawn, then given to anomseg)
  vs ``neyman_pearson``: class means and covariances, the CDF knots, and ``eval_neyman_pearson_task`` vs
  ``PixOODHead.scores_from`` on random (logit, distance) pairs, with every knot kept (``cdf_knots=0``) and with
  the default thinning (20000 knots: the interpolation error it costs, printed apart).

Last line: ``max |difference| <x>`` over the exact comparisons (the thinned CDF is reported, not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from anomseg.heads.pixood import Condensation, PixOODHead, condensation_temperature, neyman_pearson
from anomseg.heads.uem import UEMHead
from anomseg.methods.base import Observation, build_method
from anomseg.models.inference import Prediction

RESULTS: list[tuple[str, float, bool]] = []


def report(name: str, a, b, exact: bool = True) -> None:
    a, b = (torch.as_tensor(np.asarray(v.detach() if torch.is_tensor(v) else v, dtype=np.float64)) for v in (a, b))
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    RESULTS.append((name, diff, exact))
    print(f"{name:64s} max |official - anomseg| {diff:.3g}{'' if exact else '  (not counted)'}")


def compare_uem(root: Path) -> None:
    sys.path.insert(0, str(root))
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    from easydict import EasyDict as edict
    from modeling import ood_segmentation as official
    from modeling.modules import misc
    from modeling.schedulers.poly import get_polynomial_decay_schedule_with_warmup

    torch.manual_seed(0)
    d, k = 768, 19
    mlp, lin = misc.MLP(d, 512, 256, 3).double(), misc.LinearHead(256, 2).double()
    ours = UEMHead(d, k).double()
    with torch.no_grad():
        ours.projector.first.weight.copy_(mlp._layers[0].weight)
        ours.projector.first.bias.copy_(mlp._layers[0].bias)
        ours.projector.middle.weight.copy_(mlp._layers[2].weight)
        ours.projector.middle.bias.copy_(mlp._layers[2].bias)
        ours.projector.last.weight.copy_(mlp._layers[4].weight)
        ours.projector.last.bias.copy_(mlp._layers[4].bias)
        ours.head.weight.copy_(lin._head.weight)
        ours.head.bias.copy_(lin._head.bias)
    feats = torch.randn(2, d, 6, 9, dtype=torch.float64)
    with torch.no_grad():
        o_official = lin(mlp(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)).sem_seg
        o_ours = ours.inlier_outlier(feats.permute(0, 2, 3, 1).reshape(-1, d)).reshape(2, 6, 9, 2).permute(0, 3, 1, 2)
    report("uem projector + head outputs o (2, 2, 6, 9)", o_official, o_ours)

    # the fused score at the label size: test_step with its sliding-window maps given
    size = (48, 72)
    o_full = torch.randn(2, 2, *size, dtype=torch.float64)
    l_full = torch.randn(2, k, *size, dtype=torch.float64) * 3
    y = torch.randint(0, 2, (2, *size))
    captured = {}
    fake = SimpleNamespace(
        sliding_window_inference=lambda *a, **kw: edict(ood_score=o_full, sem_seg=l_full),
        segmentor=SimpleNamespace(hparams=edict(MODEL=edict(NUM_CLASSES=k))),
        hparams=edict(SOLVER=edict(EVAL_WINDOW_SIZE=(518, 1036), EVAL_STRIDE=(140, 140))),
        ood_metrics_idd=SimpleNamespace(update=lambda s, t: None),
        ood_metrics_ood=SimpleNamespace(update=lambda s, t: None),
        ood_metrics_llr=SimpleNamespace(update=lambda s, t: captured.__setitem__("llr", s)))
    official.OoDSegmentationModel.test_step(fake, (torch.zeros(2, 3, *size), y), 0)

    class GivenMaps:  # the head's maps already at the label size: the method's fusion alone is compared
        uses_logits = False

        def outputs(self, features):
            return o_full

    method = build_method("uem")
    method.head = GivenMaps()
    obs = Observation(Prediction(l_full, None, torch.zeros(2, 1, *size, dtype=torch.float64)), torch.zeros(2, 3, *size),
                      None, size)
    report("uem fused score s = o_1 - max_c l_c - o_0 (2, 48, 72)", captured["llr"], method.score(obs))

    # the loss on rows: targets 0 / 1 and ignored 255
    targets = torch.randint(0, 2, (2, *size))
    targets[:, :4] = 255
    hp = edict(MODEL=edict(IGNORE_INDEX=255, LOSS=edict(GMM_LOSS_WEIGHT=0.0)))
    loss_official = official.OoDSegmentationModel.likelihood_ratio_loss(
        SimpleNamespace(hparams=hp), edict(ood_score=o_full, sem_seg=l_full), targets)
    keep = targets != 255
    rows_o = o_full.permute(0, 2, 3, 1)[keep]
    rows_l = l_full.permute(0, 2, 3, 1)[keep]
    s = rows_o[:, 1] - rows_l.max(1).values - rows_o[:, 0]  # what UEMHead._score_chunk computes on a row
    head_s = UEMHead(2, k).double()
    with torch.no_grad():  # an identity head: o = the given rows, to run _score_chunk itself
        head_s.projector = torch.nn.Identity()
        head_s.head = torch.nn.Identity()
        s_ours = head_s._score_chunk(rows_o, rows_l)
    report("uem fused score on rows (UEMHead._score_chunk)", s, s_ours)
    loss_ours = F.binary_cross_entropy_with_logits(s_ours, targets[keep].float())  # float targets, as both do
    report("uem likelihood-ratio BCE loss", loss_official, loss_ours)

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    sched = get_polynomial_decay_schedule_with_warmup(opt, num_warmup_steps=1500, num_training_steps=4000, lr_end=1e-7)
    lrs = []
    for _ in range(4001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours.total_steps = 4000
    report("uem learning-rate schedule, steps 0..4000", lrs, [ours.lr_at(i) for i in range(4001)])


def compare_pixood(root: Path) -> None:
    np.Inf = np.inf  # NumPy 2 removed the alias the release uses
    sys.path.insert(0, str(root / "code"))
    from helpers import kmeans, neyman_pearson as np_official

    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    c_n, k, dim = 3, 5, 8
    data = torch.from_numpy(np.concatenate([rng.normal(c, 1.0, (300, dim)) for c in range(c_n)]))
    labels = torch.arange(c_n).repeat_interleave(300)
    with contextlib.redirect_stdout(io.StringIO()):
        official = kmeans.DiffKMeansMultiClassv2(c_n, k, dim, _data=data.clone(), _labels=labels.clone(), init_tau=10.0)
    official = official.double()
    med, std = data.median(0).values, data.std(0)
    report("pixood whitening median / std", torch.cat([official.norm_data_med, official.norm_data_std]), torch.cat([med, std]))
    ours = Condensation(official._mu.detach().clone(), 10.0).double()
    report("pixood initial tau (the release builds theta in float32)", official.tau, ours.tau(), exact=False)
    with torch.no_grad():
        ours.theta.copy_(official.exp_distr_temp)  # the same start, to compare the updates
    # Along the release's own AdamW trajectory (18 steps over 6 epochs of the temperature schedule), anomseg's state
    # is set to the release's before every step and both compute the step: the loss, the gradients of the prototypes
    # and tau logits, the running statistics after the update. (Two independent AdamW runs are not compared: Adam's
    # first steps move each coordinate by about lr * sign(gradient), so rounding-level gradients of far prototypes
    # flip signs and the runs part at once.)
    opt_o = torch.optim.AdamW(official.parameters(), lr=0.1, weight_decay=0.0)
    losses, grads_mu, grads_theta, assigns, sizes, valids, epochs = [], [], [], [], [], [], 6
    for epoch in range(epochs):
        temp = condensation_temperature(epoch, epochs)
        official.cluster_temp = torch.nn.Parameter(torch.tensor(temp, dtype=torch.float64), requires_grad=False)
        for b in range(3):
            with torch.no_grad():
                ours.mu.copy_(official._mu)
                ours.theta.copy_(official.exp_distr_temp)
                ours.assign.copy_(official.running_assignment)
                ours.batch.copy_(official.running_batchsize)
                ours.t = [int(t) for t in official.class_t]
            valids.append((official.mu_valid.double(), ours.valid().double()))
            idx = torch.from_numpy(rng.permutation(len(data))[:256])
            opt_o.zero_grad()
            ours.zero_grad()
            lo = official(SimpleNamespace(data=data[idx], labels=labels[idx]))
            la = ours.loss((data[idx] - med) / std, labels[idx], temp)
            lo.backward()
            la.backward()
            losses.append((float(lo.detach()), float(la.detach())))
            grads_mu.append((official._mu.grad.clone(), ours.mu.grad.clone()))
            grads_theta.append((official.exp_distr_temp.grad.clone(), ours.theta.grad.clone()))
            assigns.append((official.running_assignment.detach().clone(), ours.assign.clone()))
            sizes.append((official.running_batchsize.detach().clone(), ours.batch.clone()))
            opt_o.step()
    pairs = lambda xs: ([a for a, _ in xs], [b for _, b in xs])  # noqa: E731
    report("pixood condensation loss, 18 steps", *pairs(losses))
    report("pixood d loss / d prototypes, 18 steps", torch.stack(pairs(grads_mu)[0]), torch.stack(pairs(grads_mu)[1]))
    report("pixood d loss / d tau logits, 18 steps", torch.stack(pairs(grads_theta)[0]), torch.stack(pairs(grads_theta)[1]))
    report("pixood running soft assignments after each step", torch.stack(pairs(assigns)[0]), torch.stack(pairs(assigns)[1]))
    report("pixood running class batch sizes after each step", torch.stack(pairs(sizes)[0]), torch.stack(pairs(sizes)[1]))
    report("pixood validity masks before each step", torch.stack(pairs(valids)[0]), torch.stack(pairs(valids)[1]))

    # Neyman-Pearson: the same rows of (labels, logits for every class, distances for every class)
    n, classes = 3000, 4
    lab = torch.from_numpy(rng.integers(0, classes, n))
    logits = torch.from_numpy(rng.normal(0, 2, (n, classes)))
    logits[torch.arange(n), lab] += 6
    dists = torch.from_numpy(np.abs(rng.normal(3, 1, (n, classes))))
    dists[torch.arange(n), lab] *= 0.3
    grid = 400
    np.random.seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = np_official.estimate_neyman_pearson_task(lab, logits, dists, classes, grid_num_samples=grid)
    alt = model.ood_estimate_covs[0]  # the release's random estimate, handed to anomseg
    own_l = logits[torch.arange(n), lab].numpy()
    own_s = 1.0 / (1.0 + 0.5 * dists[torch.arange(n), lab].numpy())
    exact = neyman_pearson(own_l, own_s, lab.numpy(), list(range(classes)), float(logits.max()), grid, 0, alt_cov=alt)
    report("pixood N-P class means", np.stack(model.class_means), np.stack([exact["mean"][c] for c in range(classes)]))
    report("pixood N-P class covariances", np.stack(model.class_covs), np.stack([exact["cov"][c] for c in range(classes)]))
    for c in range(classes):
        fx, fy = model.interp_fnc[c].x[1:-1], model.interp_fnc[c].y[1:-1]
        xs, ys = exact["cdf"][c]
        if len(fx) != len(xs):
            report(f"pixood N-P CDF knot count, class {c}", [len(fx)], [len(xs)])
            continue
        report(f"pixood N-P CDF knots (x, y), class {c} ({len(xs)} knots)", np.concatenate([fx, fy]),
               np.concatenate([xs, ys]))
    test_l = torch.from_numpy(rng.normal(2, 4, (2000, classes)))
    test_d = torch.from_numpy(np.abs(rng.normal(2, 1.5, (2000, classes))))
    with contextlib.redirect_stdout(io.StringIO()):
        scores_official = np_official.eval_neyman_pearson_task(model, test_l, test_d, classes)
    for knots, exact_cmp in ((0, True), (20000, False)):
        stats = neyman_pearson(own_l, own_s, lab.numpy(), list(range(classes)), float(logits.max()), grid, knots,
                               alt_cov=alt)
        head = PixOODHead(dim, classes, prototypes=1, cdf_knots=knots, grid=grid)
        width = max(len(x) for x, _ in stats["cdf"].values())
        head.knots_x = torch.full((classes, width), float("inf"), dtype=torch.float64)
        head.knots_y = torch.zeros((classes, width), dtype=torch.float64)
        for c, (xs, ys) in stats["cdf"].items():
            head.knots_x[c, :len(xs)] = torch.from_numpy(xs)
            head.knots_y[c, :len(ys)] = torch.from_numpy(ys)
            head.knots_y[c, len(ys):] = ys[-1]
            head.class_mean[c] = torch.from_numpy(stats["mean"][c])
            head.class_cov[c] = torch.from_numpy(stats["cov"][c])
        head.alt_cov.copy_(torch.from_numpy(np.asarray(alt)))
        sims = 1.0 / (1.0 + 0.5 * test_d)
        with torch.no_grad():
            ours_scores = head.scores_from(test_l, sims, list(range(classes))).double()
        # anomseg's score maps are float32: the release's float64 values, rounded to float32, are the reference
        report(f"pixood score_c = F_c(R_c), 2000 x {classes} pairs, float32, cdf_knots={knots}", scores_official.float(),
               ours_scores, exact=exact_cmp)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--uem", required=True, help="a checkout of NazirNayal8/UEM-likelihood-ratio")
    ap.add_argument("--pixood", required=True, help="a checkout of vojirt/PixOOD")
    args = ap.parse_args(argv)
    compare_uem(Path(args.uem).resolve())
    compare_pixood(Path(args.pixood).resolve())
    worst = max(d for _, d, exact in RESULTS if exact)
    print(f"max |difference| {worst:.3g}")
    return worst


if __name__ == "__main__":
    main()
