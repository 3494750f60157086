"""The shared shape of the config-driven tools: ``--config FILE [key.sub=value ...]``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from anomseg.config import load_config
from anomseg.distributed import cleanup
from anomseg.errors import AnomsegError


def config_tool(description: str, run: Callable[[dict], object], defaults: dict | None = None,
                argv=None, errors: tuple = (AnomsegError,), schema: dict | None = None) -> int:
    """Parse ``--config`` and overrides, check them against ``schema``, run ``run(cfg)``; bad input -> one
    line on stderr (``error: ...``) and exit code 2."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=2 out=runs/x")
    a = p.parse_args(argv)
    try:
        run(load_config(a.config, a.overrides, defaults, schema))
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup()
    return 0
