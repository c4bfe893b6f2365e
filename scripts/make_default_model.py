"""Write the bundled default model, runtime/data/default.slim.

It is tiny_resnet(seed=0) at a 3x96x96 input (slimrt.models.default_model reads it back).
Run from the repository root: python scripts/make_default_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    from slimrt.format import write
    from slimrt.models import DEFAULT_INPUT_HW, tiny_resnet

    path = ROOT / "runtime" / "data" / "default.slim"
    path.parent.mkdir(parents=True, exist_ok=True)
    write(tiny_resnet(seed=0, input_hw=DEFAULT_INPUT_HW), path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
