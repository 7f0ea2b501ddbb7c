"""Training run configs: one TOML file per run in `configs/`, parsed into frozen dataclasses.

```toml
name = "radial-scratch"      # the run folder is runs/<name>/
kind = "radial_scratch"      # radial_scratch | mod_scratch | dense_scratch | finedeep_scratch
                             # | radial_distill | radial_adapt | dlo_smollm2
seed = 0
[data]   seq_len, batch, vocab (0: SmolLM2's 49152 tokens; else the most frequent tokens + <unk>)
[model]  hidden_size, num_layers, num_heads, num_kv_heads, ffn_size   (scratch kinds)
[train]  steps, lr, warmup_steps, compute_penalty (nats per layer visit), router_warmup_steps,
         penalty_ramp_steps, entropy_bonus, balance_weight, depth_target, penalty_lr, penalty_kp,
         eval_tokens,
         checkpoint_every, warmup_visits, exit_loss_weight (dense_scratch: early-exit training)
[radial] max_steps, max_passes, kv_policy
[mod]    capacity, every
[distill] thresholds (list), train_tokens, eval_tokens, router_epochs, kv_policy
[adapt]  depth_targets (list, fractions of the layers), steps, lr, router_lr, warmup_steps, lora_rank,
         lora_alpha, imitation_tokens, router_epochs, routing, penalty, penalty_lr, sample_temperature,
         exit_bias_lr, eval_tokens,
         checkpoint_every, kv_policy
[finedeep] sub_layers, experts, expert_size
[dlo]    insert_after (list), skip_target, sim_threshold, sim_weight, rate_weight, base_lr, router_lr,
         router_bias, eval_tokens, eval_seq_len
```
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from radsim.errors import ConfigError
from radsim.files import read_text
from radsim.spec.kv import KV_POLICIES

KINDS = (
    "radial_scratch",
    "mod_scratch",
    "dense_scratch",
    "finedeep_scratch",
    "radial_distill",
    "radial_adapt",
    "dlo_smollm2",
)


@dataclass(frozen=True)
class DataSection:
    """Token windows fed to training."""

    seq_len: int = 256
    batch: int = 8
    vocab: int = 8192


@dataclass(frozen=True)
class ModelSection:
    """Shape of a model trained from scratch."""

    hidden_size: int = 192
    num_layers: int = 8
    num_heads: int = 6
    num_kv_heads: int = 2
    ffn_size: int = 512


@dataclass(frozen=True)
class TrainSection:
    """Optimisation."""

    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    compute_penalty: float = 0.0  # nats of loss a token may trade for one fewer layer visit
    # Routers start once the layers are useful: before, tokens visit every layer in order (else
    # exiting early wins while layers are still untrained, and the untrained layers stay so).
    router_warmup_steps: int = 0
    # layer visits per token during the router warm-up: 0 visits every layer in order; k visits
    # layer 0 then k - 1 others in order, drawn afresh every step from (seed, step), so that a
    # radial network owning more layers warms up at the same compute per token
    warmup_visits: int = 0
    penalty_ramp_steps: int = 0  # the compute penalty grows linearly to its value over these steps
    entropy_bonus: float = 0.0  # keeps the router exploring
    # weight of the router's load-balancing loss (RadialOutput.balance_loss): spreads the layer
    # picks over the layers, so that the router cannot collapse onto one route
    balance_weight: float = 0.0
    # > 0: mean layer visits per token a radial router is held at; the compute penalty (starting at
    # compute_penalty) is then the multiplier of that constraint, moved by penalty_lr x (depth -
    # depth_target) / num_layers after every step past the router warm-up (either sign)
    depth_target: float = 0.0
    penalty_lr: float = 0.2
    # proportional term of that control (0: integral only): the penalty a step's router sees is the
    # multiplier plus penalty_kp x (previous step's depth - depth_target) / num_layers, which damps the
    # oscillation of a multiplier that lags the router (radial-scratch-16's swung by +-0.6 nats at 0.2)
    penalty_kp: float = 0.0
    eval_tokens: int = 32768
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: none; a run then starts over)
    # dense_scratch: weight of the early-exit loss (LayerSkip's, rotational): the LM loss of the
    # shared head (final norm and LM head) read after layer 1 + step mod (L - 1), added to the final one
    exit_loss_weight: float = 0.0


@dataclass(frozen=True)
class RadialSection:
    """Router settings of a radial network."""

    max_steps: int = 12
    max_passes: int = 2
    kv_policy: str = "none"


@dataclass(frozen=True)
class MoDSection:
    """Mixture-of-Depths settings."""

    capacity: float = 0.25
    every: int = 2


@dataclass(frozen=True)
class DistillSection:
    """Router distillation from SmolLM2-135M."""

    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4)
    train_tokens: int = 32768
    eval_tokens: int = 16384
    router_epochs: int = 20
    kv_policy: str = "copy"


@dataclass(frozen=True)
class AdaptSection:
    """Router and layers of SmolLM2-135M trained together under routing (radsim.train.adapt)."""

    depth_targets: tuple[float, ...] = (0.75, 0.9, 0.6)  # mean depth / layers, one model each
    steps: int = 200  # optimiser steps per model, each of data.batch windows of data.seq_len
    lr: float = 5e-4  # peak learning rate of the low-rank adapters
    router_lr: float = 1e-3  # 0: the router stays as it started (the oracle imitation)
    warmup_steps: int = 10
    lora_rank: int = 16  # rank of the adapters on every projection of every layer
    lora_alpha: float = 32.0  # the adapters' update is scaled by alpha / rank
    imitation_tokens: int = 16384  # training tokens of the router's start (oracle imitation)
    router_epochs: int = 20
    penalty: float = 0.05  # starting compute penalty, nats of KL per layer visit
    penalty_lr: float = 0.2  # dual step: penalty += penalty_lr * (depth - target) / layers
    routing: str = "argmax"  # training routes: argmax (as in use) or sample (REINFORCE, penalty)
    sample_temperature: float = 0.5  # routing = "sample": routes are sampled at this temperature
    # routing = "argmax": > 0 holds the mean depth at its target by the router's exit bias, a dual
    # variable: after every step exit bias -= exit_bias_lr * (target - depth) / layers (even when
    # the router is frozen: the adapters change the router's inputs, and so the depth)
    exit_bias_lr: float = 0.0
    eval_tokens: int = 40960  # representative validation tokens (every source in proportion)
    checkpoint_every: int = 20
    kv_policy: str = "copy"


@dataclass(frozen=True)
class FinedeepSection:
    """Finedeep's split of each FFN (radsim.models.finedeep)."""

    sub_layers: int = 2
    experts: int = 4
    expert_size: int = 0  # 0: ffn_size // (sub_layers * experts), FFN parameters as the dense model


@dataclass(frozen=True)
class DLOSection:
    """DLO expansion of SmolLM2-135M and its router training (radsim.models.dlo)."""

    # pretrained layer indices after which a new layer is inserted (8 of 30: 38 layers, +27%)
    insert_after: tuple[float, ...] = (3.0, 7.0, 11.0, 15.0, 19.0, 23.0, 26.0, 29.0)
    skip_target: float = 0.25  # fraction of (token, layer) MLPs the routers should skip
    sim_threshold: float = 0.95  # router target: skip where cos(layer input, layer output) exceeds it
    sim_weight: float = 0.1  # weight of the similarity-guided router BCE
    rate_weight: float = 10.0  # weight of (mean skip rate - skip_target)^2
    base_lr: float = 0.0  # lr of the pretrained layers (0: frozen); new layers use train.lr
    router_lr: float = 0.01  # routers start at p_run = sigmoid(router_bias) and must move fast
    router_bias: float = 1.0  # initial router logit: every MLP runs (p_run 0.73 >= 0.5)
    eval_tokens: int = 16384  # validation tokens, in windows of eval_seq_len (as radial-distill)
    eval_seq_len: int = 256


@dataclass(frozen=True)
class RunConfig:
    """One training run."""

    name: str
    kind: str
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    radial: RadialSection = field(default_factory=RadialSection)
    mod: MoDSection = field(default_factory=MoDSection)
    distill: DistillSection = field(default_factory=DistillSection)
    adapt: AdaptSection = field(default_factory=AdaptSection)
    finedeep: FinedeepSection = field(default_factory=FinedeepSection)
    dlo: DLOSection = field(default_factory=DLOSection)


_SECTIONS: dict[str, type[Any]] = {
    "data": DataSection,
    "model": ModelSection,
    "train": TrainSection,
    "radial": RadialSection,
    "mod": MoDSection,
    "distill": DistillSection,
    "adapt": AdaptSection,
    "finedeep": FinedeepSection,
    "dlo": DLOSection,
}


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """A RunConfig from its `asdict` form (as saved in checkpoints); unknown section keys are dropped,
    so checkpoints of an older radsim still load."""
    sections = {
        name: cls(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in raw[name].items()
                if k in cls.__dataclass_fields__
            }
        )
        for name, cls in _SECTIONS.items()
        if name in raw
    }
    return RunConfig(name=raw["name"], kind=raw["kind"], seed=raw["seed"], **sections)


def load_run_config(path: str | Path) -> RunConfig:
    """Parse and validate a run config file: keys, types, ranges and the model's shape."""
    path = Path(path)
    text = read_text(path, "run config")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: cannot read run config: not valid TOML ({exc})") from exc
    allowed = {"name", "kind", "seed", *_SECTIONS}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("name", "kind"):
        if not isinstance(raw.get(key), str):
            raise ConfigError(f"{path}: '{key}' must be a string")
    if raw["kind"] not in KINDS:
        raise ConfigError(f"{path}: 'kind' is {raw['kind']!r}; allowed: {', '.join(KINDS)}")
    name = raw["name"]
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"{path}: 'name' is {name!r}; allowed: a folder name (no '/'), runs/<name>/")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{path}: 'seed' must be an integer >= 0, got {seed!r}")
    sections = {name: _section(path, name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    cfg = RunConfig(name=name, kind=raw["kind"], seed=seed, **sections)
    check_run_config(cfg, str(path))
    return cfg


def _at_least(n: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= n), f">= {n:g}"


def _within(low: float, high: float, open_low: bool = False) -> tuple[Callable[[Any], bool], str]:
    if open_low:
        return (lambda v: low < v <= high), f"in ({low:g}, {high:g}]"
    return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"


#: Ranges of the numbers of a run config, beyond ">= 0" (section, key) -> (check, allowed).
_RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("data", "seq_len"): _at_least(2),  # a window predicts its next tokens: two at least
    ("data", "batch"): _at_least(1),
    ("model", "hidden_size"): _at_least(1),
    ("model", "num_layers"): _at_least(1),
    ("model", "num_heads"): _at_least(1),
    ("model", "num_kv_heads"): _at_least(1),
    ("model", "ffn_size"): _at_least(1),
    ("train", "steps"): _at_least(1),
    ("train", "lr"): ((lambda v: v > 0), "> 0"),
    ("train", "eval_tokens"): _at_least(1),
    ("radial", "max_steps"): _at_least(1),
    ("radial", "max_passes"): _at_least(1),
    ("mod", "capacity"): _within(0.0, 1.0, open_low=True),
    ("mod", "every"): _at_least(1),
    ("distill", "train_tokens"): _at_least(1),
    ("adapt", "steps"): _at_least(1),
    ("adapt", "lr"): ((lambda v: v > 0), "> 0"),
    ("adapt", "sample_temperature"): ((lambda v: v > 0), "> 0"),
    ("adapt", "lora_rank"): _at_least(1),
    ("adapt", "imitation_tokens"): _at_least(1),
    ("adapt", "router_epochs"): _at_least(1),
    ("adapt", "eval_tokens"): _at_least(1),
    ("adapt", "checkpoint_every"): _at_least(1),
    ("distill", "eval_tokens"): _at_least(1),
    ("distill", "router_epochs"): _at_least(1),
    ("finedeep", "sub_layers"): _at_least(1),
    ("finedeep", "experts"): _at_least(1),
    ("dlo", "skip_target"): _within(0.0, 1.0),
    ("dlo", "sim_threshold"): _within(-1.0, 1.0),
    ("dlo", "router_lr"): ((lambda v: v > 0), "> 0"),
    ("dlo", "eval_tokens"): _at_least(1),
    ("dlo", "eval_seq_len"): _at_least(2),
}


def check_run_config(cfg: RunConfig, where: str = "<run config>") -> None:
    """Raise ConfigError naming the section and key unless every value is in range and the model's
    shape is buildable (heads divide the width into an even head size, KV heads divide the heads)."""
    for (section, key), (ok, allowed) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if not ok(value):
            raise ConfigError(f"{where}: [{section}].{key} is {value!r}; allowed: {allowed}")
    if cfg.data.vocab == 1:
        raise ConfigError(f"{where}: [data].vocab is 1; allowed: 0 (SmolLM2's vocabulary) or >= 2")
    m = cfg.model
    if m.hidden_size % m.num_heads or (m.hidden_size // m.num_heads) % 2:
        raise ConfigError(
            f"{where}: [model].num_heads {m.num_heads} must divide hidden_size {m.hidden_size} into an "
            "even head size (rotary embeddings rotate pairs)"
        )
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(
            f"{where}: [model].num_kv_heads {m.num_kv_heads} must divide num_heads {m.num_heads}"
        )
    for section in ("radial", "distill", "adapt"):
        policy = getattr(cfg, section).kv_policy
        if policy not in KV_POLICIES:
            raise ConfigError(
                f"{where}: [{section}].kv_policy is {policy!r}; allowed: {', '.join(KV_POLICIES)}"
            )
    if not cfg.distill.thresholds:
        raise ConfigError(f"{where}: [distill].thresholds is empty; allowed: a list of numbers > 0")
    if cfg.adapt.routing not in ("argmax", "sample"):
        raise ConfigError(f"{where}: [adapt].routing is {cfg.adapt.routing!r}; allowed: argmax, sample")
    targets = cfg.adapt.depth_targets
    if not targets or not all(0 < t <= 1 for t in targets):
        raise ConfigError(
            f"{where}: [adapt].depth_targets is {list(targets)}; allowed: a non-empty list of fractions in (0, 1]"
        )
    f = cfg.finedeep
    if not f.expert_size and m.ffn_size < f.sub_layers * f.experts:
        raise ConfigError(
            f"{where}: [finedeep] {f.sub_layers} sub-layers x {f.experts} experts leave no unit of "
            f"ffn_size {m.ffn_size} per expert; give expert_size"
        )
    if any(v != int(v) for v in cfg.dlo.insert_after):
        raise ConfigError(f"{where}: [dlo].insert_after must list layer indices (whole numbers)")
    _check_finite(cfg, where)


def _check_finite(cfg: RunConfig, where: str) -> None:
    for section in _SECTIONS:
        for key, value in vars(getattr(cfg, section)).items():
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{where}: [{section}].{key} is {value!r}; allowed: finite numbers")


def _section(path: Path, name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in [{name}]; allowed: {sorted(known)}")
    values = {}
    for key, value in raw.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
                raise ConfigError(f"{path}: [{name}].{key} must be a list of numbers")
            value = tuple(float(v) for v in value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif type(value) is not type(default):
            raise ConfigError(f"{path}: [{name}].{key} must be {type(default).__name__}, got {value!r}")
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ConfigError(f"{path}: [{name}].{key} must be finite, got {value}")
        if any(isinstance(v, int | float) and not isinstance(v, bool) and v < 0 for v in numbers):
            raise ConfigError(f"{path}: [{name}].{key} must be >= 0, got {value}")
        values[key] = value
    return cls(**values)
