"""Architecture specs of transformer decoders, one TOML file per model in `radsim/archs/`.

Each file transcribes a published `config.json` (its URL is the file's `source`). `Arch` derives
what the cost model needs: parameter counts per layer and in total, and KV-cache entry sizes.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError

ARCH_DIR = Path(__file__).resolve().parent / "archs"
FFN_KINDS = ("swiglu", "relu", "gelu")
NORM_KINDS = ("rmsnorm", "layernorm")
POSITION_KINDS = ("rope", "learned")


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer's shape, as published in its config."""

    name: str
    source: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    ffn_kind: str
    vocab_size: int
    norm_kind: str
    tied_embeddings: bool
    max_position_embeddings: int
    position_embedding: str
    linear_bias: bool
    # OPT-350m projects 512-wide embeddings up to the 1024-wide model; 0 means no projection.
    embed_proj_dim: int = 0

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"{self.name}: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def q_width(self) -> int:
        """Width of the query projection output (heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of one of the K or V projection outputs (kv_heads x head_dim)."""
        return self.num_kv_heads * self.head_dim

    @property
    def ffn_matrices(self) -> int:
        """Weight matrices in the MLP: gate, up and down for SwiGLU; up and down otherwise."""
        return 3 if self.ffn_kind == "swiglu" else 2

    @property
    def attn_params(self) -> int:
        """Parameters of one layer's attention (Q, K, V, O projections and biases)."""
        d = self.hidden_size
        weights = d * (self.q_width + 2 * self.kv_width) + self.q_width * d
        bias = (self.q_width + 2 * self.kv_width + d) if self.linear_bias else 0
        return weights + bias

    @property
    def mlp_params(self) -> int:
        """Parameters of one layer's MLP."""
        d, f = self.hidden_size, self.ffn_size
        bias = ((self.ffn_matrices - 1) * f + d) if self.linear_bias else 0
        return self.ffn_matrices * d * f + bias

    @property
    def norm_params(self) -> int:
        """Parameters of one normalisation layer (LayerNorm has a bias, RMSNorm has none)."""
        return self.hidden_size * (2 if self.norm_kind == "layernorm" else 1)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer."""
        return self.attn_params + self.mlp_params + 2 * self.norm_params

    @property
    def embedding_params(self) -> int:
        """Token (and learned position) embeddings plus any embedding projections."""
        width = self.embed_proj_dim or self.hidden_size
        params = self.vocab_size * width
        if self.position_embedding == "learned":
            params += self.max_position_embeddings * self.hidden_size
        if self.embed_proj_dim:
            params += 2 * self.embed_proj_dim * self.hidden_size
        return params

    @property
    def lm_head_params(self) -> int:
        """Output projection parameters not shared with the embedding."""
        return 0 if self.tied_embeddings else self.vocab_size * (self.embed_proj_dim or self.hidden_size)

    @property
    def total_params(self) -> int:
        """All parameters: layers, embeddings, final norm and untied head."""
        return (
            self.num_layers * self.layer_params
            + self.embedding_params
            + self.norm_params
            + self.lm_head_params
        )

    def kv_bytes_per_token_layer(self, kv_bytes: float) -> float:
        """Bytes of one token's K and V entries in one layer."""
        return 2 * self.kv_width * kv_bytes

    def with_layers(self, num_layers: int) -> Arch:
        """The same architecture with a different layer count (for layer-scaling studies)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(num_layers=num_layers, name=f"{self.name}-L{num_layers}")
        return Arch(**values)


_REQUIRED: dict[str, type] = {
    "name": str,
    "source": str,
    "hidden_size": int,
    "num_layers": int,
    "num_heads": int,
    "num_kv_heads": int,
    "ffn_size": int,
    "ffn_kind": str,
    "vocab_size": int,
    "norm_kind": str,
    "tied_embeddings": bool,
    "max_position_embeddings": int,
    "position_embedding": str,
    "linear_bias": bool,
}
_OPTIONAL: dict[str, type] = {"head_dim": int, "embed_proj_dim": int}
_CHOICES = {"ffn_kind": FFN_KINDS, "norm_kind": NORM_KINDS, "position_embedding": POSITION_KINDS}


def list_archs() -> list[str]:
    """Names of the shipped architecture specs."""
    return sorted(p.stem for p in ARCH_DIR.glob("*.toml"))


def load_arch(name_or_path: str | Path) -> Arch:
    """Load an architecture spec by name (e.g. `llama2-7b`) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = ARCH_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ConfigError(
                f"unknown architecture '{name_or_path}'; valid names: {', '.join(list_archs())}"
            )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read architecture file: {exc}") from exc
    return parse_arch(raw, path)


def parse_arch(raw: dict[str, Any], path: Path) -> Arch:
    """Validate the parsed TOML of an architecture file and build the dataclass."""
    allowed = {**_REQUIRED, **_OPTIONAL}
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{path}: missing required key '{key}'")
    for key, value in raw.items():
        kind = allowed[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{path}: '{key}' must be an integer, got {value!r}")
        if not isinstance(value, kind):
            raise ConfigError(f"{path}: '{key}' must be {kind.__name__}, got {value!r}")
        if kind is int and isinstance(value, int) and value < (0 if key == "embed_proj_dim" else 1):
            raise ConfigError(f"{path}: '{key}' must be positive, got {value}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"{path}: '{key}' is {value!r}; allowed: {', '.join(_CHOICES[key])}")
    values = dict(raw)
    if "head_dim" not in values:
        if raw["hidden_size"] % raw["num_heads"]:
            raise ConfigError(f"{path}: hidden_size is not a multiple of num_heads; give head_dim")
        values["head_dim"] = raw["hidden_size"] // raw["num_heads"]
    if raw["num_heads"] % raw["num_kv_heads"]:
        raise ConfigError(f"{path}: 'num_heads' must be a multiple of 'num_kv_heads'")
    return Arch(**values)
