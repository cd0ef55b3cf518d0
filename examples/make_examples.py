"""Write the Predict tab's examples: built-in shapes images and their masks (PNG of class ids).

    python examples/make_examples.py

Images go to examples/shapes_N.png, masks (same file name) to examples/masks/. Seeded, so the files
are the same every time; seed 1000+ keeps them apart from the built-in training data (seeds 1, 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from anywhere without installing segdemo

from segdemo.data.builtin import make_sample  # noqa: E402


def main(n: int = 4, size: int = 128) -> None:
    (HERE / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(1000)
    for i in range(1, n + 1):
        image, mask = make_sample(rng, size)
        Image.fromarray(image).save(HERE / f"shapes_{i}.png", optimize=True)
        Image.fromarray(mask).save(HERE / "masks" / f"shapes_{i}.png", optimize=True)  # class ids 0..3
        print(f"shapes_{i}.png: classes {sorted(np.unique(mask).tolist())}")


if __name__ == "__main__":
    main()
