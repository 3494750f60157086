"""Format ``csail``: CSAILVision/semantic-segmentation-pytorch files, the CAOS PSPNet
(``encoder_epoch_N.pth`` + ``decoder_epoch_N.pth``, flat keys), and its ImageNet initialisation
(``resnet101-imagenet.pth``: the deep-stem ResNet-101 plus ``fc``, dropped).

Recognised by ``layer4.*`` + ``conv3.weight`` (the encoder half) or ``ppm.*`` / ``conv_last.*`` (the decoder
half); either half finds the other beside it (same suffix), a folder its newest pair. SyncBN files carry
``_tmp_running_mean`` / ``_tmp_running_var`` / ``_running_iter`` (dropped). Refused in one line: a pair with
a half missing, a file named otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

from anomseg.models.formats.common import strip
from anomseg.models.registry import ModelError

NAME = "csail"
HEAD_KEY = "decoder.conv_last.4.weight"
SYNCBN_EXTRA = ("_tmp_running_mean", "_tmp_running_var", "_running_iter")
PRETRAINED = {"drop": ("fc.",), "prefix": "encoder.", "part": lambda k: k.startswith("encoder."),
              "file": "resnet101-imagenet.pth (CSAIL semantic-segmentation-pytorch pretrained_resnet)"}


def recognise(sd: dict) -> str | None:
    """'csail_encoder', 'csail_decoder' or None."""
    bare = [k.removeprefix("module.") for k in sd]
    if any(k.startswith(("ppm.", "conv_last.")) for k in bare):
        return "csail_decoder"
    if any(k.startswith("layer4.") for k in bare) and "conv3.weight" in bare:
        return "csail_encoder"
    return None


def pair(paths) -> tuple[Path, Path]:
    """(encoder, decoder) files from a pair, one half, or a folder (its newest epoch)."""
    if isinstance(paths, (list, tuple)):
        if len(paths) != 2:
            raise ModelError(f"a CSAIL checkpoint is an (encoder, decoder) pair; got {len(paths)} paths")
        return Path(paths[0]), Path(paths[1])
    p = Path(paths)
    if p.is_dir():
        enc = sorted(p.glob("encoder_epoch_*.pth"), key=lambda q: int(re.findall(r"\d+", q.stem)[-1]))
        if not enc:
            raise ModelError(f"{p}: no encoder_epoch_*.pth found")
        p = enc[-1]
    m = re.match(r"(encoder|decoder)(_.*\.pth)$", p.name)
    if not m:
        raise ModelError(f"{p}: CSAIL files are named encoder_epoch_N.pth / decoder_epoch_N.pth")
    enc, dec = p.with_name("encoder" + m.group(2)), p.with_name("decoder" + m.group(2))
    for q in (enc, dec):
        if not q.is_file():
            raise ModelError(f"{q}: the other half of the CSAIL encoder/decoder pair is missing")
    return enc, dec


def convert(enc_obj: dict, dec_obj: dict) -> dict:
    """The pair's state dicts as one, under our PSPNet's ``encoder.`` / ``decoder.`` names."""
    out = {}
    for prefix, obj in (("encoder.", enc_obj), ("decoder.", dec_obj)):
        for k, v in strip(obj.get("state_dict", obj), "module.").items():
            if not k.endswith(SYNCBN_EXTRA):
                out[prefix + k] = v
    return out
