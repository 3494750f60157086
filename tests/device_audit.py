"""A test helper: record every tensor that anomseg code creates without naming a device.

Under :class:`FactoryAudit`, a torch factory call (``zeros``, ``randn``, ``tensor``, ...) made directly
from a file of the ``anomseg`` package without ``device=`` is recorded with its file and line. On
a GPU such a tensor lands on the CPU and either crashes the step that mixes it with device
tensors or silently moves work to the host; on the CPU it is invisible, which is why the audit
looks at the call, not at where the tensor ends up. Constructors (``__init__``) are exempt: a
module's buffers are created there and move with the module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

PACKAGE = Path(__file__).resolve().parents[1] / "anomseg"
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.arange, torch.linspace, torch.eye, torch.tensor, torch.as_tensor}


class FactoryAudit(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)  # the direct caller (factories are C functions: no frame between)
            if frame is not None:
                path = Path(frame.f_code.co_filename).resolve()
                if PACKAGE in path.parents and frame.f_code.co_name != "__init__":
                    self.calls.append(f"{path.relative_to(PACKAGE.parent)}:{frame.f_lineno} "
                                      f"{frame.f_code.co_name}: torch.{func.__name__} without device")
        return func(*args, **kwargs)
