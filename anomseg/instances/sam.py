"""SAM refinement of anomaly instances, through ``transformers`` (``SamModel`` / ``SamProcessor``).

Rules, each with where it comes from:

* Prompts from each component (``prompts=``): ``box`` - its tight box [x0, y0, x1, y1] in pixel edges,
  as S2M prompts SAM with the boxes of its anomaly detections (WenjieZhao1/S2M ``tools/inference.py``:
  ``predict_torch(boxes=..., multimask_output=False)``); ``point`` - one positive point at the
  component's highest-scoring pixel (x, y); ``box+point`` - both in one prompt.
* Mask choice: ``multimask=False`` (default, S2M) takes SAM's single output; ``multimask=True`` takes,
  per prompt, the one of SAM's three masks with the highest predicted IoU (``iou_scores``), the choice
  the SAM paper makes for ambiguous prompts. Masks are SAM's logits > 0 at the image size
  (``SamImageProcessor.post_process_masks``, its default threshold).
* After SAM: void pixels leave the mask.
* Overlaps (``merge_iou``): refined masks are taken by their component's confidence, highest first; one
  whose IoU with an instance already kept exceeds ``merge_iou`` is merged into it (the union: the two
  prompts found the same object); otherwise it keeps only the pixels no kept instance holds, so every
  pixel belongs to at most one instance - the most confident (S2M paints its masks into one map, the
  last painted winning; ordering by confidence makes that choice explicit). Instances left below
  ``min_size`` pixels are dropped.
* Each final instance's confidence is computed again from the score map inside its final mask, with the
  same rule as the components (``mean``: Objectomaly gives each SAM mask the mean anomaly score inside
  it, hon121215/Objectomaly ``anomaly_utils/anomaly_inference.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomseg.instances.extract import (MIN_SIZE, InstanceError, Instances, check_confidence_rule, confidence_of,
                                       sort_instances)

PROMPTS = ("box", "point", "box+point")
TINY_SIZE = 128  # the tiny random SAM's input side (tests and the demo; no released weights offline)


def tiny_sam(seed: int = 0):
    """A tiny random-weight SAM (about 58k parameters) and its processor, for tests and the demo."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig, SamPromptEncoderConfig,
                                                           SamVisionConfig)

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                             image_size=TINY_SIZE, patch_size=16, output_channels=16, global_attn_indexes=[1],
                             window_size=4, num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=TINY_SIZE, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(config).eval()
    side = TINY_SIZE // 4
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": TINY_SIZE}, pad_size={"height": TINY_SIZE, "width": TINY_SIZE},
        mask_size={"longest_edge": side}, mask_pad_size={"height": side, "width": side}))
    return model, processor


def load_sam(model: str = "tiny", seed: int = 0):
    """``tiny`` (:func:`tiny_sam`) or a local transformers SAM folder (``save_pretrained`` / a hub snapshot:
    ``config.json``, weights and ``preprocessor_config.json``); nothing is downloaded."""
    if model == "tiny":
        return tiny_sam(seed)
    from transformers import SamModel, SamProcessor

    path = Path(str(model))
    if not (path / "config.json").is_file():
        raise InstanceError(f"sam model {model!r}: give 'tiny' or a local transformers SAM folder with config.json "
                            f"(e.g. facebook/sam-vit-base saved with save_pretrained)")
    try:
        return (SamModel.from_pretrained(path, local_files_only=True).eval(),
                SamProcessor.from_pretrained(path, local_files_only=True))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InstanceError(f"{path}: not a loadable transformers SAM folder ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


class SamRefiner:
    """Refine the instances of one image with SAM prompts (see the module docstring for every rule).

    Args:
        model, processor: a transformers ``SamModel`` and ``SamProcessor`` (:func:`load_sam`).
        prompts: ``box`` | ``point`` | ``box+point``.
        multimask: take the best of SAM's three masks by its predicted IoU (else its single mask).
        merge_iou: refined masks overlapping a kept one by more than this IoU are merged into it.
        min_size, confidence: as :func:`~anomseg.instances.extract.instances_from_scores`.
        chunk: prompts per SAM call.
        device: where SAM runs (default: CUDA when available).
    """

    def __init__(self, *, model, processor, prompts: str = "box", multimask: bool = False, merge_iou: float = 0.5,
                 min_size: int = MIN_SIZE, confidence: str = "mean", chunk: int = 32, device=None):
        if prompts not in PROMPTS:
            raise InstanceError(f"prompts={prompts!r}: choose one of {', '.join(PROMPTS)}")
        if not isinstance(merge_iou, (int, float)) or isinstance(merge_iou, bool) or not 0 <= merge_iou <= 1:
            raise InstanceError(f"merge_iou={merge_iou!r}: give an IoU in [0, 1]")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.prompts, self.multimask, self.merge_iou = prompts, bool(multimask), float(merge_iou)
        self.min_size, self.confidence = int(min_size), check_confidence_rule(confidence)
        self.chunk = int(chunk)

    def prompt_arguments(self, instances: Instances, score: np.ndarray) -> dict:
        """The processor's prompt keywords for ``instances`` (boxes: pixel edges; points: each mask's peak)."""
        kwargs = {}
        if "box" in self.prompts:
            kwargs["input_boxes"] = [[[float(v) for v in b] for b in instances.boxes()]]
        if "point" in self.prompts:
            points = []
            for m in instances.masks:
                masked = np.where(m, score, -np.inf)
                y, x = np.unravel_index(int(np.argmax(masked)), m.shape)
                points.append([[float(x), float(y)]])
            kwargs["input_points"] = [points]
            kwargs["input_labels"] = [[[1] for _ in points]]
        return kwargs

    @torch.no_grad()
    def sam_masks(self, image: np.ndarray, instances: Instances, score: np.ndarray) -> np.ndarray:
        """SAM's chosen mask per instance: bool (M, H, W) at the image size (no void, no merging)."""
        h, w = instances.size
        out = np.zeros((len(instances), h, w), bool)
        for start in range(0, len(instances), self.chunk):
            part = Instances(instances.masks[start:start + self.chunk], instances.scores[start:start + self.chunk])
            inputs = self.processor(images=image, **self.prompt_arguments(part, score), return_tensors="pt")
            inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
            res = self.model(**inputs, multimask_output=self.multimask)
            masks = self.processor.image_processor.post_process_masks(
                res.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]
            masks = masks.numpy().astype(bool)  # (m, 1 or 3, H, W)
            if self.multimask:
                best = res.iou_scores[0].float().cpu().argmax(-1).numpy()  # (m,)
                masks = masks[np.arange(len(best)), best]
            else:
                masks = masks[:, 0]
            out[start:start + len(part)] = masks
        return out

    def refine(self, image, instances: Instances, score, void=None) -> Instances:
        """Refined instances of one image.

        Args:
            image: uint8 (H, W, 3) RGB, the image the score map belongs to.
            instances: the components (:func:`~anomseg.instances.extract.instances_from_scores`).
            score: float (H, W) the score map (the refined confidences are computed from it).
            void: bool (H, W) pixels no instance may keep.
        """
        image = np.array(image)  # a writable copy: the processor hands it to torch
        score = np.asarray(score)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InstanceError(f"SAM refinement needs the uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        if image.shape[:2] != score.shape or score.shape != instances.size:
            raise InstanceError(f"image {image.shape[:2]}, score map {score.shape} and instances {instances.size} "
                                f"must have one size")
        if len(instances) == 0:
            return instances
        void = np.zeros(score.shape, bool) if void is None else np.asarray(void, bool)
        sam = self.sam_masks(image, instances, score) & ~void
        order = np.argsort(-instances.scores.astype(np.float64), kind="stable")
        kept_masks: list[np.ndarray] = []
        for k in order:
            m = sam[k]
            if not m.any():
                continue
            merged = False
            for j, km in enumerate(kept_masks):
                inter = np.count_nonzero(m & km)
                if inter and inter / np.count_nonzero(m | km) > self.merge_iou:
                    kept_masks[j] = km | m
                    merged = True
                    break
            if merged:
                continue
            taken = np.any(kept_masks, axis=0) if kept_masks else np.zeros_like(m)
            m = m & ~taken
            if m.any():
                kept_masks.append(m)
        # claimed pixels of merged unions are exclusive again (a merge may reach into a later instance)
        final_m, final_s = [], []
        claimed = np.zeros(score.shape, bool)
        for m in kept_masks:
            m = m & ~claimed
            claimed |= m
            if np.count_nonzero(m) >= self.min_size:
                final_m.append(m)
                final_s.append(confidence_of(score[m], self.confidence))
        if not final_m:
            return Instances.empty(*score.shape)
        return sort_instances(Instances(np.stack(final_m), np.array(final_s, np.float32)))
