"""A backbone's identity: the hash of its weights, which every artefact built on it records.

Banks, heads, fitted scores and evaluation states store :func:`weights_hash` of the backbone they
were made with; meeting another backbone is an error naming both hashes.
"""

from __future__ import annotations

import hashlib

import torch


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a model's state dict: identifies the weights, not the file."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
