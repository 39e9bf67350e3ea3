"""Suite-wide settings. Tests use tiny models, for which one intra-op thread is fastest, and a single thread
cannot be starved by other processes on a shared 2-core box (OpenMP teams spin when a core is busy)."""
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
