"""Speed and memory of the ProtoFormer variants next to torchvision's RAFT (and the official code), one process
per case.

    python scripts/benchmark.py                                  # all models, 368x496, 440x1024 and 1088x1920
    python scripts/benchmark.py --models protoformer --sizes 368x496 --runs 3
    python scripts/benchmark.py --official ~/src/ProtoFormer --official-path /tmp/timm0412 \
        --weights weights_seed0_fp16.pt --pause-pid 1234   # + the official model, same weights, outputs compared

For each (model, size) a fresh Python process builds the model (random weights, or ``--weights`` in the official
key layout for ProtoFormer and the official model), runs one forward under ``FlopCounterMode`` (also the warm-up)
and ``--runs`` timed forwards (eval, no_grad, batch 1, ``--iters`` refinement iterations for every model), and
reports the median latency and the process's peak resident memory (so peaks never mix). Images above
``--tile-above`` pixels run tiled (``core.tiling.tiled_predict``, 368x496 tiles); for a tiled case the FLOPs are
counted on one tile and multiplied by the number of tiles. ``protoformer-depth`` is the depth path (frame 1 only).
The training cases time full optimisation steps (train mode, sequence loss, backward, AdamW) at 256x256, batch 4.
The machine's fp32 matrix-product rate is measured too, so the achieved GFLOP/s can be read against it.
``--pause-pid`` stops the given processes (e.g. a background training run) during each case and always resumes them.
Writes ``--out`` (JSON) and a PNG plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = ("protoformer", "protoformer-s", "protoformer-depth", "raft_large", "raft_small")
TRAIN_MODELS = ("protoformer-s", "protoformer")
SIZES = ("368x496", "440x1024", "1088x1920")
TILE = (368, 496)
TRAIN_SIZE, TRAIN_BATCH = (256, 256), 4


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 368x496, got '{text}'") from None
    return height, width


def _load_official_weights(path: str | None):
    import torch

    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    return torch.load(path, map_location="cpu", weights_only=True)


def _build(args):
    """A callable ``(image1, image2) -> [B, C, H, W]`` for one model (eval), and its parameter count."""
    import torch

    torch.manual_seed(0)
    name = args.model
    if name == "official":
        from scripts.official_adapter import build_official

        return build_official(args.official, args.iters, _load_official_weights(args.weights), args.official_path)
    if name.startswith("raft"):
        from torchvision.models.optical_flow import raft_large, raft_small

        net = (raft_large if name == "raft_large" else raft_small)(weights=None).eval()

        def run(image1, image2):
            # torchvision's RAFT takes images in [-1, 1]
            return net(image1 / 127.5 - 1.0, image2 / 127.5 - 1.0, num_flow_updates=args.iters)[-1]

        return run, sum(p.numel() for p in net.parameters())

    from core.model import VARIANTS
    from core.model.checkpoint import load_weights
    from core.model.protoformer import ProtoFormer

    depth = name == "protoformer-depth"
    net = ProtoFormer(VARIANTS["protoformer" if depth else name], model_type="depth" if depth else "flow",
                      iters=args.iters).eval()
    if args.weights and name in ("protoformer", "protoformer-depth"):
        state = _load_official_weights(args.weights)
        if depth:  # a depth model holds only the context encoder and the depth head
            net = ProtoFormer(VARIANTS["protoformer"], model_type="joint", iters=args.iters).eval()
        load_weights(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        if depth:
            net.model_type = "depth"
            del net.feature_encoder, net.cost_memory, net.flow_decoder

    def run(image1, image2):
        if depth:
            return net(image1)["disparity"][-1]
        return net(image1, image2, iters=args.iters)["flow"][-1]

    return run, sum(p.numel() for p in net.parameters())


def _images(batch: int, height: int, width: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    image1 = torch.rand(batch, 3, height, width, generator=generator) * 255
    return image1, torch.roll(image1, shifts=(2, 3), dims=(-2, -1))


def _case(args) -> dict:
    """One inference case, inside its own process: returns its measurements."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.tiling import TileGrid, tiled_predict

    torch.set_num_threads(args.threads)
    height, width = args.size
    run, params = _build(args)
    image1, image2 = _images(1, height, width)
    tiled = height * width > args.tile_above
    tiles = len(TileGrid.plan(height, width, TILE, 0.25, align=1).origins) if tiled else 1

    def forward():
        return tiled_predict(run, image1, image2, tile_size=TILE) if tiled else run(image1, image2)

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:  # also the warm-up
            if tiled:
                run(image1[..., : TILE[0], : TILE[1]], image2[..., : TILE[0], : TILE[1]])
            else:
                forward()
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            output = forward()
            times.append(time.perf_counter() - start)
    if args.save_output:
        torch.save(output, args.save_output)
    times.sort()
    median = times[len(times) // 2]
    gflops = counter.get_total_flops() * tiles / 1e9
    return {
        "model": args.model, "size": f"{height}x{width}", "tiled": tiled, "tiles": tiles, "params": params,
        "gflops": gflops, "latency_s": median, "runs_s": times, "achieved_gflops_per_s": gflops / median,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "threads": args.threads, "iters": args.iters,
    }


def _train_case(args) -> dict:
    """Training steps of one variant (train mode, all iterations, sequence loss, backward, AdamW)."""
    import torch

    from core.losses import sequence_loss
    from core.model import VARIANTS
    from core.model.protoformer import ProtoFormer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ProtoFormer(VARIANTS[args.model], model_type="flow", iters=args.iters).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    image1, image2 = _images(TRAIN_BATCH, *TRAIN_SIZE)
    target = torch.zeros(TRAIN_BATCH, 2, *TRAIN_SIZE)
    target[:, 0], target[:, 1] = 3.0, 2.0

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = sequence_loss(net(image1, image2)["flow"], target, None)
        loss.backward()
        optimizer.step()

    step()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return {
        "model": args.model, "train": True, "size": f"{TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}", "batch": TRAIN_BATCH,
        "step_s": median, "steps_per_s": 1.0 / median, "runs_s": times,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "threads": args.threads, "iters": args.iters,
    }


def _matmul_rate(threads: int) -> float:
    """Peak fp32 GFLOP/s of a large matrix product on this machine (best of a few)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


@contextmanager
def _paused(pids: list[int]):
    """SIGSTOP the given processes for the duration of the block; always SIGCONT them afterwards."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def _run_case(args, model: str, size: str, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--case", "--model", model, "--size", size, "--iters", str(args.iters),
               "--runs", str(args.runs), "--threads", str(args.threads), "--tile-above", str(args.tile_above),
               *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    with _paused(args.pause_pid):
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or ["exit code %d" % done.returncode]
        return {"model": model, "size": size, "error": lines[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    rows_all = [r for r in results if "error" not in r and not r.get("train")]
    for model in dict.fromkeys(r["model"] for r in rows_all):
        rows = [r for r in rows_all if r["model"] == model]
        pixels = [int(r["size"].split("x")[0]) * int(r["size"].split("x")[1]) / 1e6 for r in rows]
        for ax, key in zip(axes, ("latency_s", "peak_rss_gb")):
            (line,) = ax.plot(pixels, [r[key] for r in rows], "-", label=model)
            for x, r in zip(pixels, rows):
                ax.plot(x, r[key], "o", color=line.get_color(), fillstyle="none" if r["tiled"] else "full")
    axes[0].set(xlabel="megapixels", ylabel="forward latency (s)", title="CPU latency (hollow: tiled)")
    axes[1].set(xlabel="megapixels", ylabel="peak RSS (GB)", title="peak memory (hollow: tiled)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile-above", type=int, default=600_000, help="pixels above which a case runs tiled")
    parser.add_argument("--train", nargs="*", default=list(TRAIN_MODELS), choices=TRAIN_MODELS,
                        help="variants whose training step is timed (256x256, batch 4); none: skip")
    parser.add_argument("--official", help="local checkout of the official ProtoFormer: time it too")
    parser.add_argument("--official-path", help="extra import directory for the official code (e.g. timm==0.4.12)")
    parser.add_argument("--weights", help="state_dict in the official key layout, for ProtoFormer and the official model")
    parser.add_argument("--pause-pid", type=int, nargs="*", default=[], help="processes to SIGSTOP during each case")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmark" / "benchmark.json")
    parser.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--train-case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=_parse_size, help=argparse.SUPPRESS)
    parser.add_argument("--save-output", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        print(json.dumps(_train_case(args) if args.train_case else _case(args)))
        return
    for size in args.sizes:
        _parse_size(size)
    if args.official and not args.weights:
        parser.error("--official needs --weights (the same weights for both models, so the outputs can be compared)")

    with _paused(args.pause_pid):
        rate = _matmul_rate(args.threads)
    print(f"fp32 matrix-product rate on {args.threads} threads: {rate:.1f} GFLOP/s", flush=True)
    shared = (["--weights", args.weights] if args.weights else [])
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        models = list(args.models) + (["official"] if args.official else [])
        for size in args.sizes:
            height, width = _parse_size(size)
            for model in models:
                if model == "official" and height * width > args.tile_above:
                    continue  # the official model is compared on whole images only
                extra = list(shared)
                if model in ("protoformer", "official") and args.official:
                    extra += ["--save-output", f"{scratch}/{model}_{size}.pt"]
                if model == "official":
                    extra += ["--official", args.official] + (["--official-path", args.official_path]
                                                              if args.official_path else [])
                row = _run_case(args, model, size, extra)
                results.append(row)
                print(_format_row(row), flush=True)
            if args.official and height * width <= args.tile_above:
                _compare(results, scratch, size)
        for model in args.train:
            row = _run_case(args, model, "x".join(map(str, TRAIN_SIZE)), ["--train-case"])
            results.append(row)
            print(_format_row(row), flush=True)
    for row in results:
        if "gflops" in row:
            row["share_of_matmul_rate"] = row["achieved_gflops_per_s"] / rate
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"matmul_gflops_per_s": rate, "threads": args.threads, "iters": args.iters, "runs": args.runs,
            "official": args.official, "weights": args.weights, "command": " ".join(sys.argv)}
    args.out.write_text(json.dumps({**meta, "results": results}, indent=2))
    _plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _compare(results: list[dict], scratch: str, size: str) -> None:
    """Max |ours - official| of the flow at one size, stored on the official row, with latency/memory ratios."""
    import torch

    rows = {r["model"]: r for r in results if r.get("size") == size and "error" not in r and not r.get("train")}
    paths = [Path(scratch) / f"{m}_{size}.pt" for m in ("protoformer", "official")]
    if "official" not in rows or "protoformer" not in rows or not all(p.is_file() for p in paths):
        return
    ours, official = (torch.load(p, weights_only=True) for p in paths)
    row = rows["official"]
    row["max_abs_flow_diff_vs_protoformer"] = float((ours - official).abs().max())
    row["speedup_of_protoformer"] = row["latency_s"] / rows["protoformer"]["latency_s"]
    row["memory_ratio_of_protoformer"] = rows["protoformer"]["peak_rss_gb"] / row["peak_rss_gb"]
    print(f"{'':>18}{size}: ours vs official max |dflow| {row['max_abs_flow_diff_vs_protoformer']:.2e} px, "
          f"{row['speedup_of_protoformer']:.2f}x faster, {row['memory_ratio_of_protoformer']:.2f}x the memory",
          flush=True)


def _format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:>18} {row['size']:>10}  failed: {row['error']}"
    if row.get("train"):
        return (f"{row['model']:>18} train {row['size']} batch {row['batch']}: {row['step_s']:.2f} s/step "
                f"({row['steps_per_s']:.3f} steps/s), peak {row['peak_rss_gb']:.2f} GB")
    return (f"{row['model']:>18} {row['size']:>10}{' (tiled)' if row['tiled'] else '':8} params {row['params'] / 1e6:6.2f}M"
            f"  {row['gflops']:8.1f} GFLOPs  {row['latency_s']:7.2f} s  {row['achieved_gflops_per_s']:6.1f} GFLOP/s"
            f"  peak {row['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
