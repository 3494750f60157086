"""Training losses of the mask-classification backbone (``mask2former``), on its queries.

Every loss is the network's own set-prediction loss (``transformers``' Mask2Former loss: Hungarian
matching, cross-entropy over K + 1 classes with the no-object weight 0.1, sigmoid cross-entropy and dice
on 12544 sampled points, weights 2 / 5 / 5, deep supervision over every decoder layer: the detectron2
recipe's defaults) on per-class binary masks built from the semantic labels, as detectron2's
``MaskFormerSemanticDatasetMapper`` builds them: one mask per class present, void (255) and pasted
outlier pixels in no mask, zero in the padding.

* ``mask2former``: that loss alone (training a segmenter);
* ``rba`` (RbA's outlier fine-tuning; NazirNayal8/RbA ``mask2former/modeling/criterion.py``
  ``outlier_loss`` with ``ckpts/swin_b_1dl_rba_ood_map_coco/config.yaml``: OUTLIER_LOSS_TARGET nls,
  SCORE_NORM tanh, OUTLIER_LOSS_FUNC squared_hinge, INLIER_UPPER_THRESHOLD 0, OUTLIER_LOWER_THRESHOLD 5,
  OUTLIER_WEIGHT 1, DEEP_SUPERVISION): the set loss plus, on the last and every auxiliary decoder layer,
  0.5 * (mean over inlier pixels of relu(s - inlier_upper)^2 + mean over outlier pixels of
  relu(outlier_lower - s)^2) with s = -sum_c tanh(S_c), S computed at mask resolution (sigmoid, einsum)
  and bilinearly upsampled with align_corners=True to the label size, as the reference does. Train it
  with ``train.finetune: head`` (the release freezes backbone, pixel decoder and decoder but the class MLP);
* ``uno`` (UNO's negative class; Delic et al., matejgrcic/Open-set-M2F): the set loss on a K + 2-class
  head where the pasted outlier pixels form one more mask of class K, the negative class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomseg.options import NonNegative, OptionError, check_options

MASK_LOSSES = ("mask2former", "rba", "uno")


def class_masks(semantic: torch.Tensor, outlier: torch.Tensor, padded_size: tuple[int, int], known: int,
                negative: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: float (M, Hp, Wp) binary masks and int64 (M,) classes of the classes present (known ids
    < ``known``; void and outlier pixels in none), plus one mask of class ``known`` for the outliers when
    ``negative``. ``semantic`` int64 (N, H, W), ``outlier`` bool (N, H, W)."""
    masks, classes = [], []
    H, W = semantic.shape[-2:]
    for sem, out in zip(semantic, outlier):
        sem = torch.where(out, torch.full_like(sem, 255), sem)
        present = [int(c) for c in torch.unique(sem) if int(c) < known]
        ms = [sem == c for c in present]
        if negative and bool(out.any()):
            ms.append(out)
            present.append(known)
        m = torch.zeros((len(ms), *padded_size), dtype=torch.float32, device=semantic.device)
        if ms:
            m[:, :H, :W] = torch.stack(ms).float()
        masks.append(m)
        classes.append(torch.tensor(present, dtype=torch.int64, device=semantic.device))
    return masks, classes


def rba_score_at_masks(class_logits: torch.Tensor, mask_logits: torch.Tensor, known: int) -> torch.Tensor:
    """s = -sum_c tanh(S_c) at mask resolution (sigmoid of the mask logits, then the einsum): float (N, h, w)."""
    p = torch.softmax(class_logits.float(), -1)[..., :known]
    return -torch.tanh(torch.einsum("nqc,nqhw->nchw", p, torch.sigmoid(mask_logits.float()))).sum(1)


def rba_outlier_loss(class_logits, mask_logits, semantic, outlier, known: int, inlier_upper: float = 0.0,
                     outlier_lower: float = 5.0) -> torch.Tensor:
    """RbA's squared hinge on one decoder layer's queries (see the module docstring); scalar."""
    score = rba_score_at_masks(class_logits, mask_logits, known)
    padded = tuple(4 * s for s in mask_logits.shape[-2:])  # the padded input; the labels fill its top-left corner
    score = F.interpolate(score[:, None], size=padded, mode="bilinear", align_corners=True)[:, 0]
    score = score[..., :semantic.shape[-2], :semantic.shape[-1]]
    inlier = (semantic != 255) & ~outlier
    loss = F.relu(score[inlier] - inlier_upper).pow(2).mean() if inlier.any() else score.sum() * 0
    if outlier.any():
        loss = 0.5 * (loss + F.relu(outlier_lower - score[outlier]).pow(2).mean())
    return loss


def rba_options(outlier_weight: NonNegative = 1.0, inlier_upper: float = 0.0, outlier_lower: float = 5.0) -> dict:
    """The options of the ``rba`` loss, declared (:mod:`anomseg.options`); the other mask losses take none."""
    return {"outlier_weight": outlier_weight, "inlier_upper": inlier_upper, "outlier_lower": outlier_lower}


def check_mask_loss_options(name: str, options: dict) -> dict:
    """``train.loss.options`` of a mask loss, checked in one line (unknown keys, types, ranges)."""
    if name != "rba":
        if options:
            raise OptionError(f"train.loss {name!r}: takes no options; got {', '.join(map(str, options))}")
        return {}
    return check_options("train.loss 'rba'", rba_options, options)


def mask_loss(name: str, model, images: torch.Tensor, semantic: torch.Tensor, outlier: torch.Tensor, known: int,
              **options) -> torch.Tensor:
    """The scalar training loss ``name`` (:data:`MASK_LOSSES`) of a mask2former ``model`` (or its DDP wrapper)
    with ``known`` classes on a batch: uint8 images, int64 ``semantic`` (N, H, W) at the image size, bool
    ``outlier``. ``options``: those of :func:`rba_options` (``rba`` only; defaults filled in)."""
    if name not in MASK_LOSSES:
        raise ValueError(f"unknown mask loss {name!r}; valid: {', '.join(MASK_LOSSES)}")
    out = model(images, semantic=semantic, outlier=outlier)
    loss = out.loss
    if name == "rba":
        o = rba_options(**options)
        layers = [(out.class_queries_logits, out.masks_queries_logits)]
        layers += [(a["class_queries_logits"], a["masks_queries_logits"]) for a in (out.auxiliary_logits or [])]
        for z, m in layers:
            loss = loss + o["outlier_weight"] * rba_outlier_loss(z, m, semantic, outlier, known, o["inlier_upper"],
                                                                 o["outlier_lower"])
    return loss
