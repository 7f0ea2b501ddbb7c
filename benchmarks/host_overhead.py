"""Host-side costs of a PyTorch serving loop, measured on this machine's CPU: the figures the
`eager` engine profile (radsim/spec/engines/eager.toml) takes from the project's own measurements.

Run: python benchmarks/host_overhead.py [--out measurements/epyc-genoa-vm/host_overhead.json]

- dispatch of one eager operator (the host half of a kernel launch: Python, the dispatcher and
  the kernel call, on tensors so small that the kernel itself costs nothing): `F.linear` of an 8x8
  matrix, a SiLU, an add, and an RMSNorm of five operators;
- the glue of one greedy decode step outside the model (argmax over a vocabulary of logits, the
  token to the host with `.item()`, the next step's input tensor), at batch 1;
- per sequence and step: appending the token, checking the stop conditions (EOS and length);
- one eager decoder layer of radsim's Llama (radsim/models/llama.py) at batch 1 and one token, on
  tensors so small that compute is negligible: its operators that launch a kernel (counted with a
  TorchDispatchMode, views left out) and the host time of the whole layer forward, per operator.
Medians of five repeats of 20,000 calls (2,000 layer forwards), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _per_call_s(f, calls: int = 20_000, repeats: int = 5) -> float:
    for _ in range(1000):
        f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


#: aten operators that only make views or metadata (no kernel on a GPU)
VIEW_OPS = {
    *("view", "_unsafe_view", "expand", "transpose", "t", "permute", "unsqueeze", "squeeze"),
    *("slice", "select", "detach", "alias", "as_strided", "split", "split_with_sizes", "unbind"),
    *("_reshape_alias", "lift_fresh", "reshape", "empty", "empty_like", "size", "stride"),
}


def eager_layer() -> dict[str, object]:
    """Kernels and host time of one eager decoder layer of radsim's Llama at batch 1."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from radsim.models.llama import Block, LlamaConfig, Rotary

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if name not in VIEW_OPS:
                self.ops.append(name)
            return func(*args, **(kwargs or {}))

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_size=128)
    block, rope = Block(cfg).eval(), Rotary(cfg.head_dim, 64, cfg.rope_theta)
    h, pos = torch.zeros(1, 1, cfg.hidden_size), torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        with Count() as count:
            block(h, pos, rope)
        layer = _per_call_s(lambda: block(h, pos, rope), calls=2000)
    return {
        "kernels": len(count.ops),
        "operators": count.ops,
        "forward_s": layer,
        "per_kernel_s": layer / len(count.ops),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "measurements" / "epyc-genoa-vm" / "host_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, w = torch.zeros(1, 8), torch.zeros(8, 8)
    logits = torch.zeros(1, 49152)
    ops = {
        "linear_s": _per_call_s(lambda: torch.nn.functional.linear(x, w)),
        "silu_s": _per_call_s(lambda: torch.nn.functional.silu(x)),
        "add_s": _per_call_s(lambda: torch.add(x, x)),
        "rmsnorm_5_ops_s": _per_call_s(lambda: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * x),
    }
    step = _per_call_s(lambda: torch.tensor([[int(logits.argmax(-1).item())]]), calls=5000)
    seq: list[int] = []

    def bookkeeping() -> None:
        seq.append(7)
        _ = seq[-1] == 2 or len(seq) >= 1 << 30
        if len(seq) > 4096:
            seq.clear()

    result = {
        "what": "host-side costs of a PyTorch serving loop on this CPU (benchmarks/host_overhead.py)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": 1,
        "dispatch_per_op_s": {**ops, "rmsnorm_per_op_s": ops["rmsnorm_5_ops_s"] / 5},
        "decode_step_glue_s": step,
        "sequence_bookkeeping_s": _per_call_s(bookkeeping),
        "eager_llama_layer": eager_layer(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
