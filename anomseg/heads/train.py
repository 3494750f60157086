"""Training and fitting heads on a feature bank, with model selection on validation pixels."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomseg.bank.sampler import MixedBatchSampler
from anomseg.bank.store import BankError, FeatureBank
from anomseg.distributed import to_device
from anomseg.files import make_dirs, check_fingerprint, save_torch_atomic, write_text_atomic
from anomseg.heads import HEADS
from anomseg.heads.io import HeadError, make_head, save_head
from anomseg.heads.dias import DIASHead
from anomseg.heads.opengan import OpenGANHead, as_column
from anomseg.heads.uem import UEMHead
from anomseg.heads.statistical import GaussianHead, KNNHead
from anomseg.metrics.curves import exact_metrics

@torch.no_grad()
def score_bank(head, bank: FeatureBank, kind: str, chunk: int = 65536) -> np.ndarray:
    """Scores of every ``kind`` row of a bank (float64 (n,), on the host for the exact metrics),
    scored on the head's device."""
    was = head.training
    head.eval()
    fields = ("features", "logits") if head.uses_logits else ("features",)
    if head.uses_logits:
        bank.require("logits", f"head {getattr(head, 'name', type(head).__name__)!r}")
    out = [head.score_rows(to_device(c["features"], head.device).float(),
                           to_device(c["logits"], head.device).float() if head.uses_logits else None
                           ).double().cpu().numpy()
           for c in bank.iter_chunks(kind, chunk, fields=fields)]
    head.train(was)
    return np.concatenate(out) if out else np.zeros(0)


def validation_auroc(head, bank: FeatureBank) -> float:
    """Pooled open-vs-closed AUROC over every pixel of a (validation) bank, exact."""
    if bank.counts["open"] == 0 or bank.counts["closed"] == 0:
        raise BankError(f"{bank.root}: model selection needs open and closed pixels in the validation bank "
                        f"(open {bank.counts['open']}, closed {bank.counts['closed']})")
    scores = {kind: score_bank(head, bank, kind) for kind in ("open", "closed")}
    bad = {kind: int((~np.isfinite(s)).sum()) for kind, s in scores.items()}
    if any(bad.values()):
        raise HeadError(f"head {getattr(head, 'name', type(head).__name__)!r} scores {bad['open'] + bad['closed']} of the "
                        f"{bank.counts['open'] + bank.counts['closed']} validation pixels as NaN or infinite (training "
                        f"diverged, or the bank holds bad rows); lower the learning rate or rebuild the bank")
    return exact_metrics(scores["open"], scores["closed"])["auroc"]


def opengan_step(head: OpenGANHead, batch: dict, opt_d, opt_g, n_fake: int) -> tuple[float, float]:
    """One OpenGAN update: D on real (closed -> 1, open -> 0) and generated (-> 0) pixels, then G.

    D's loss is the BCE over the real pixels with open pixels weighted by lambda_o (lambda_o = 1 is
    the released mean over the concatenated batch) plus lambda_G times the BCE of the generated
    pixels; G maximises D on its samples (non-saturating: target "closed"). Returns (loss_D, loss_G).
    """
    closed = batch["closed"]
    opened = batch["open"] if head.lambda_o > 0 else batch["open"][:0]
    dev = closed.device
    n_real = len(closed) + len(opened)
    real = as_column(torch.cat([closed, opened]))
    target = torch.cat([torch.ones(len(closed), device=dev), torch.zeros(len(opened), device=dev)])
    weight = torch.cat([torch.ones(len(closed), device=dev), torch.full((len(opened),), head.lambda_o, device=dev)])
    loss_d = (F.binary_cross_entropy_with_logits(head.discriminator(real).flatten(), target, reduction="none")
              * weight).sum() / n_real
    loss_g = torch.zeros((), device=dev)
    if opt_g is not None:
        fake = head.fake_rows(n_fake)
        loss_d = loss_d + head.lambda_g * F.binary_cross_entropy_with_logits(
            head.discriminator(fake.detach()).flatten(), torch.zeros(n_fake, device=dev))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    if opt_g is not None:
        loss_g = F.binary_cross_entropy_with_logits(head.discriminator(fake).flatten(), torch.ones(n_fake, device=dev))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return loss_d.item(), loss_g.item()


def make_optimizers(head: OpenGANHead, lr_d: float = 1e-4 / 1.5, lr_g: float = 1e-4, betas=(0.5, 0.999)):
    """Adam for D and G as published (betas (0.5, 0.999), lr_G 1e-4, lr_D 1e-4 / 1.5)."""
    opt_d = torch.optim.Adam(head.discriminator.parameters(), lr=lr_d, betas=betas)
    opt_g = torch.optim.Adam(head.generator.parameters(), lr=lr_g, betas=betas) if head.generator is not None else None
    return opt_d, opt_g


def train_opengan(head: OpenGANHead, sampler: MixedBatchSampler, val_bank: FeatureBank, *, out: str | Path,
                  steps: int = 2000, eval_every: int = 100, n_fake: int = 2500, lr_d: float = 1e-4 / 1.5,
                  lr_g: float = 1e-4, betas=(0.5, 0.999), seed: int = 0, progress: bool = True,
                  info: dict | None = None, fingerprint: dict | None = None) -> dict:
    """Train an OpenGAN-family head (recipe in ``anomseg.heads.opengan``); see :func:`train_sampled`."""
    torch.manual_seed(seed)
    opt_d, opt_g = make_optimizers(head, lr_d, lr_g, betas)

    def step(batch):
        loss_d, loss_g = opengan_step(head, batch, opt_d, opt_g, n_fake)
        return {"loss_d": loss_d, "loss_g": loss_g}

    return train_sampled(head, sampler, val_bank, {"opt_d": opt_d, "opt_g": opt_g}, step, out=out, steps=steps,
                         eval_every=eval_every, progress=progress, info=info, fingerprint=fingerprint)


def train_dias(head: DIASHead, sampler: MixedBatchSampler, val_bank: FeatureBank, *, out: str | Path,
               steps: int = 2000, eval_every: int = 100, n_fake: int = 2500, seed: int = 0, progress: bool = True,
               info: dict | None = None, fingerprint: dict | None = None) -> dict:
    """Train a DIAS-fea head (recipe in ``anomseg.heads.dias``); see :func:`train_sampled`."""
    torch.manual_seed(seed)
    optimizers = head.make_optimizers()
    return train_sampled(head, sampler, val_bank, optimizers, lambda b: head.train_step(b, optimizers, n_fake),
                         out=out, steps=steps, eval_every=eval_every, progress=progress, info=info,
                         fingerprint=fingerprint)


def train_sampled(head, sampler: MixedBatchSampler, val_bank: FeatureBank, optimizers: dict, step, *,
                  out: str | Path, steps: int, eval_every: int, progress: bool = True, info: dict | None = None,
                  fingerprint: dict | None = None) -> dict:
    """The training loop of the heads trained on mixed batches: ``step(batch) -> {loss name: float}``
    for ``steps`` steps, validation AUROC every ``eval_every``; select on it.

    Writes ``out/best.pth`` (best validation AUROC), ``out/last.pth`` (resumable: head, ``optimizers``
    (name -> optimizer or None), sampler and RNG state) and ``out/log.jsonl``; resumes from ``last.pth``
    when present and made with the same ``fingerprint`` (what the run depends on: head, options, banks,
    training settings), else stops with :class:`~anomseg.files.StaleError`. Returns
    ``{"best_auroc", "best_step", "steps"}``. The caller seeds torch before building optimizers."""
    out = Path(out)
    make_dirs(out)
    val_bank.check_compatible(head.feat_dim)
    sampler.bank.check_compatible(head.feat_dim)
    start, best, best_step, history = 0, -1.0, -1, []
    fingerprint = fingerprint or {}
    last = out / "last.pth"
    if last.is_file():
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise HeadError(f"{last}: cannot be read ({type(exc).__name__}); delete it to train this head from scratch") from None
        check_fingerprint(last, state.get("fingerprint", {}), fingerprint,
                          f"delete {out} (or use a new out) to train this head from scratch")
        history = json.loads(state.get("history", "[]"))
        head.load_state_dict(state["state_dict"])
        for name, opt in optimizers.items():
            if opt is not None:
                opt.load_state_dict(state[name])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and head.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], head.device)
        start, best, best_step = state["step"], state["best_auroc"], state["best_step"]
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"train {head.name}", disable=not progress)
    head.train()
    for i in bar:
        losses = step(sampler.next())
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
        if (i + 1) % eval_every == 0 or i + 1 == steps:
            auroc = validation_auroc(head, val_bank)
            head.train()
            entry = {"step": i + 1, **losses, "val_auroc": auroc, "time": time.time()}
            if auroc > best:
                best, best_step = auroc, i + 1
                save_head(out / "best.pth", head, {**(info or {}), "val_auroc": auroc, "step": i + 1})
            save_head(out / "head_last.pth", head, {**(info or {}), "val_auroc": auroc, "step": i + 1})
            history.append(entry)
            state = {"state_dict": head.state_dict(),
                     **{name: opt.state_dict() if opt is not None else None for name, opt in optimizers.items()},
                     "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(head.device) if head.device.type == "cuda" else None,
                     "step": i + 1, "best_auroc": best, "best_step": best_step,
                     "fingerprint": fingerprint, "history": json.dumps(history)}
            save_torch_atomic(last, state)
            # the log is rewritten from the checkpointed history: a kill never leaves a line twice
            write_text_atomic(out / "log.jsonl", "".join(json.dumps(e) + "\n" for e in history))
    return {"best_auroc": best, "best_step": best_step, "steps": steps}


def fit_statistical(head, bank: FeatureBank, *, max_samples: int = 100000, seed: int = 0) -> None:
    """Fit a statistical head on a bank's closed rows, on the head's device: Gaussian and kNN stream
    over every closed row (kNN's torch backend keeps a bounded sample), GMM fits a bounded sample of
    ``max_samples`` rows, which is also the sample for PCA and for training kNN's inverted lists."""
    bank.check_compatible(head.feat_dim)
    rng = np.random.default_rng(seed)
    n = min(max_samples, bank.counts["closed"])
    sample = to_device(bank.sample("closed", n, rng, block=16)["features"], head.device).float()

    def chunks():
        for c in bank.iter_chunks("closed"):
            yield to_device(c["features"], head.device).float(), torch.from_numpy(c["labels"].astype(np.int64))

    if isinstance(head, GaussianHead):
        head.fit(chunks, pca_sample=sample)
    elif isinstance(head, KNNHead):
        head.fit(chunks, sample=sample, rows=bank.counts["closed"])
    else:
        head.fit(sample)


def train_head(name: str, options: dict, train_bank: FeatureBank, val_bank: FeatureBank, *, out: str | Path,
               train: dict, seed: int = 0, progress: bool = True, info: dict | None = None,
               sampler_kwargs: dict | None = None, device: str | torch.device = "cpu",
               classifier: torch.nn.Module | None = None) -> dict:
    """Build (seeded with ``seed``), train (or fit) and select a head on ``device``; returns a summary with
    the validation AUROC. ``classifier``: the segmenter's classifier module, which ``dias_fea`` starts from
    (its option ``init: segmenter``, the default)."""
    out = Path(out)
    if name not in HEADS:
        raise HeadError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")
    feat_dim = train_bank.feature_dim
    train_bank.check_finite()  # every row, drawn or not (a part planted or damaged after extraction)
    if name in ("gaussian", "dias_fea", "uem", "pixood"):
        options = {"num_classes": int(train_bank.meta.get("num_classes") or 0), **options}
    torch.manual_seed(seed)  # the head's initialisation depends on the seed only
    head = make_head(name, feat_dim, **options).to(device)
    bank_id = lambda b: {k: v for k, v in b.meta.items() if k != "complete"}  # noqa: E731
    fingerprint = {"version": 1, "head": name, "options": options, "seed": seed, "train_bank": bank_id(train_bank),
                   "val_bank": bank_id(val_bank), "train": {k: v for k, v in train.items() if k != "steps"},
                   "sampler": {k: v for k, v in (sampler_kwargs or {}).items() if isinstance(v, (str, int, float))}}
    if isinstance(head, UEMHead):  # mixed batches of closed (target 0) and open (target 1) rows with their logits
        head.total_steps = train.get("steps", 2000)
        sampler = MixedBatchSampler(train_bank, n_closed=train.get("n_closed", 5000), n_open=train.get("n_open", 2500),
                                    seed=seed, device=device, logits=True, **(sampler_kwargs or {}))
        torch.manual_seed(seed)
        optimizers = head.make_optimizers()
        result = train_sampled(head, sampler, val_bank, optimizers, lambda b: head.train_step(b, optimizers),
                               out=out, steps=train.get("steps", 2000), eval_every=train.get("eval_every", 100),
                               progress=progress, info=info, fingerprint=fingerprint)
        return {"head": name, **result}
    if hasattr(head, "fit_bank"):  # fitted on the bank's closed rows in one call (pixood)
        fitted = head.fit_bank(train_bank, seed=seed, progress=progress)
        auroc = validation_auroc(head, val_bank)
        save_head(out / "best.pth", head, {**(info or {}), "val_auroc": auroc})
        write_text_atomic(out / "log.jsonl", json.dumps({"fitted": name, "val_auroc": auroc, **fitted}) + "\n")
        return {"head": name, "best_auroc": auroc}
    if isinstance(head, (OpenGANHead, DIASHead)):  # trained on mixed batches
        if isinstance(head, DIASHead) and head.init == "segmenter":
            if classifier is None:
                raise HeadError("dias_fea starts from the segmenter's classifier: pass the backbone's classifier() "
                                "(tools/train_head.py does), or set the head option init: random")
            head.init_from_segmenter(classifier)
        uses_open = isinstance(head, OpenGANHead) and head.lambda_o > 0
        sampler = MixedBatchSampler(train_bank, n_closed=train.get("n_closed", 5000),
                                    n_open=train.get("n_open", 2500) if uses_open else 0,
                                    seed=seed, device=device, **(sampler_kwargs or {}))
        common = dict(out=out, steps=train.get("steps", 2000), eval_every=train.get("eval_every", 100),
                      n_fake=train.get("n_fake", 2500), seed=seed, progress=progress, info=info, fingerprint=fingerprint)
        if isinstance(head, OpenGANHead):
            result = train_opengan(head, sampler, val_bank, lr_d=train.get("lr_d", 1e-4 / 1.5),
                                   lr_g=train.get("lr_g", 1e-4), **common)
        else:
            result = train_dias(head, sampler, val_bank, **common)
        return {"head": name, **result}
    fit_statistical(head, train_bank, max_samples=train.get("max_samples", 100000), seed=seed)
    auroc = validation_auroc(head, val_bank)
    save_head(out / "best.pth", head, {**(info or {}), "val_auroc": auroc})
    write_text_atomic(out / "log.jsonl", json.dumps({"fitted": name, "val_auroc": auroc}) + "\n")
    return {"head": name, "best_auroc": auroc}
