"""segdemo web app: `python app.py` (Hugging Face Spaces runs this file); installed, `segdemo app` does the same.

Environment: GRADIO_SERVER_NAME (default 127.0.0.1, this machine only; 0.0.0.0 on a Hugging Face Space) and PORT,
SEGDEMO_MAX_CONCURRENT (runs training at once),
SEGDEMO_RUN_TTL_S (how long finished runs are kept), SEGDEMO_OXFORD_ROOT (a local Oxford-IIIT Pet copy).
On a ZeroGPU Space (SPACES_ZERO_GPU) Predict and training run in @spaces.GPU functions: segdemo/server/zerogpu.py.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from segdemo.ui import build_demo, launch  # noqa: E402

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
