"""Architecture specs of transformer decoders, one TOML file per model in `radsim/spec/archs/`.

Each file transcribes a published `config.json` (its URL is the file's `source`), or derives a
variant from one (DLO's expanded layer stack, a Finedeep split of the MLP), with the derivation in
its comments. `Arch` derives what the cost model needs: parameter counts per layer and in total,
and KV-cache entry sizes.

The MLP is dense by default. Finedeep (arXiv 2502.12928) splits it into `ffn_sublayers` (M)
sub-layers of `ffn_experts_per_sublayer` (K) small experts each, every expert an MLP of
`ffn_expert_size` hidden units of the layer's `ffn_kind`, all of them active; `ffn_size` is then
the sum of the experts' widths, M x K x `ffn_expert_size`. Each sub-layer has a sigmoid router
(d x K weights, scores normalised to sum 1) and, from the second sub-layer on, its own
normalisation (the first uses the layer's MLP norm); every sub-layer adds its output to the
residual stream (`radsim/models/finedeep.py`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import read_text

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
    # Finedeep's MLP structure (module docstring); 1, 1, 0 is the dense MLP (expert = ffn_size).
    ffn_sublayers: int = 1
    ffn_experts_per_sublayer: int = 1
    ffn_expert_size: int = 0  # 0: ffn_size / (sublayers x experts)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"{self.name}: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.ffn_sublayers < 1 or self.ffn_experts_per_sublayer < 1 or self.ffn_expert_size < 0:
            raise ConfigError(
                f"{self.name}: ffn_sublayers and ffn_experts_per_sublayer must be >= 1 and "
                f"ffn_expert_size >= 0"
            )
        experts = self.ffn_sublayers * self.ffn_experts_per_sublayer
        if self.ffn_expert_size == 0:
            if self.ffn_size % experts:
                raise ConfigError(
                    f"{self.name}: ffn_size ({self.ffn_size}) must be a multiple of ffn_sublayers x "
                    f"ffn_experts_per_sublayer ({experts}), or give ffn_expert_size"
                )
            object.__setattr__(self, "ffn_expert_size", self.ffn_size // experts)
        elif self.ffn_expert_size * experts != self.ffn_size:
            raise ConfigError(
                f"{self.name}: ffn_size ({self.ffn_size}) must equal ffn_sublayers x "
                f"ffn_experts_per_sublayer x ffn_expert_size ({experts} x {self.ffn_expert_size})"
            )

    @property
    def finedeep(self) -> bool:
        """Whether the MLP is split into experts (more than one sub-layer or expert)."""
        return self.ffn_sublayers * self.ffn_experts_per_sublayer > 1

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
    def expert_params(self) -> int:
        """Parameters of one expert (the whole MLP when dense)."""
        d, e = self.hidden_size, self.ffn_expert_size
        bias = ((self.ffn_matrices - 1) * e + d) if self.linear_bias else 0
        return self.ffn_matrices * d * e + bias

    @property
    def mlp_params(self) -> int:
        """Parameters of one layer's MLP: its experts, and for Finedeep the routers and sub-layer norms."""
        m, k = self.ffn_sublayers, self.ffn_experts_per_sublayer
        if not self.finedeep:
            return self.expert_params
        router = self.hidden_size * k  # Linear(d, K), no bias
        return m * (k * self.expert_params + router) + (m - 1) * self.norm_params

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
_OPTIONAL: dict[str, type] = {
    "head_dim": int,
    "embed_proj_dim": int,
    "ffn_sublayers": int,
    "ffn_experts_per_sublayer": int,
    "ffn_expert_size": int,
}
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
        raw = tomllib.loads(read_text(path, "architecture file"))
    except tomllib.TOMLDecodeError as exc:
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
    try:
        return Arch(**values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
