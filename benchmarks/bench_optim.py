"""Benchmark: SMORMS3's step time against torch's Adam and a blog post's SMORMS3.

Two parameter sets, float32, gradients N(0, 1) set once (step time only, no
forward/backward): (a) 200 tensors of 256 x 256 (13.1M parameters, many small
tensors) and (b) one 4096 x 4096 tensor (16.8M parameters, one large tensor).
Variants:

- Adam default: ``torch.optim.Adam(params)``, which picks the per-tensor path on the
  CPU (foreach on CUDA),
- Adam foreach=True and Adam fused=True,
- blog post SMORMS3: the per-parameter loop of "Implementing The SMORMS3 Optimizer in
  PyTorch"), rewritten with current torch calls but with its temporaries kept,
- trainkit SMORMS3 default (per-tensor on the CPU), foreach=True and fused=True
  (``torch.compile``; "first step s" holds its one-time cost: the bucket kernel
  compiles in (a), the single-tensor kernel in (b), both cold: the benchmark uses a
  fresh inductor cache).

Method (``_harness.py``): one process, 2 threads; each rep times one block of every
variant, in a new shuffled order per rep, after one warm-up block each. A block is
at least 0.25 s of steps (at least 5 on (a), 3 on (b)), counted from one timed step
after the first. Reported: median / min / max over reps of the time per step, ratios of
medians, the paired ratio (per rep, to the Adam-default block of the same rep), and
psi = the share of a block's wall time in which some runnable task waited for a CPU
(/proc/pressure/cpu); a high psi means other processes disturbed the figures.

Run one benchmark at a time:
``.venv/bin/python benchmarks/bench_optim.py`` (``--quick`` for
a smoke run on smaller tensors, ``--no-fused`` to skip the compiled variant).
"""

from __future__ import annotations

import importlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable

# A fresh inductor cache, so "first step" of fused=True is the cold compile cost
# (a second process with the default cache would reuse the compiled kernel).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_opt"))

import _harness
import torch

from trainkit.optim import SMORMS3

LR = 1e-3


class BlogPostSMORMS3(torch.optim.Optimizer):
    """The blog post's SMORMS3, as the baseline: one loop over parameters, about ten
    full-size temporaries per tensor per step, ``eps`` outside the param groups.
    Rewritten without ``.data`` and the removed ``add_(scalar, tensor)`` form."""

    def __init__(self, params, lr: float = LR, eps: float = 1e-16) -> None:
        super().__init__(params, {"lr": lr})
        self.eps = eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["mem"] = torch.ones_like(p)
                    state["g"] = torch.zeros_like(p)
                    state["g2"] = torch.zeros_like(p)
                mem, g, g2 = state["mem"], state["g"], state["g2"]
                r = 1.0 / (mem + 1.0)
                g.mul_(1 - r).addcmul_(r, grad)
                g2.mul_(1 - r).addcmul_(r, grad**2)
                div = g2 + self.eps
                mem.mul_(1 - (g**2 / div)).add_(1.0)
                rate = torch.clamp(g**2 / div, max=lr)
                p.sub_(rate * grad / (g2.sqrt() + self.eps))


Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

VARIANTS: dict[str, Factory] = {
    "Adam default (per-tensor on CPU)": lambda ps: torch.optim.Adam(ps, lr=LR),
    "Adam foreach=True": lambda ps: torch.optim.Adam(ps, lr=LR, foreach=True),
    "Adam fused=True": lambda ps: torch.optim.Adam(ps, lr=LR, fused=True),
    "blog post SMORMS3 (per-param loop)": lambda ps: BlogPostSMORMS3(ps, lr=LR),
    "SMORMS3 default": lambda ps: SMORMS3(ps, lr=LR),
    "SMORMS3 foreach=True": lambda ps: SMORMS3(ps, lr=LR, foreach=True),
    "SMORMS3 fused=True (compiled)": lambda ps: SMORMS3(ps, lr=LR, fused=True),
}
ADAM = "Adam default (per-tensor on CPU)"
ADAM_FUSED = "Adam fused=True"
BLOG_POST = "blog post SMORMS3 (per-param loop)"
OURS = "SMORMS3 default"
OURS_FUSED = "SMORMS3 fused=True (compiled)"


def make_params(
    shapes: list[tuple[int, ...]], grads: list[torch.Tensor], seed: int
) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g  # shared and read-only: no variant writes to .grad
    return params


def check(names: list[str]) -> None:
    """Max |difference| to the blog post's SMORMS3 after 5 steps on 3 x (300, 200)."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(300, 200)] * 3
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(5)]
    finals = {}
    for name in [BLOG_POST, *names]:
        params = make_params(shapes, grads[0], seed=2)
        opt = VARIANTS[name](params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        finals[name] = torch.cat([p.detach().reshape(-1) for p in params])
    for name in names:
        diff = (finals[name] - finals[BLOG_POST]).abs().max().item()
        print(f"  {name}: max |param - blog post's| after 5 steps = {diff:.2g}")
    print()


def bench(
    label: str,
    shapes: list[tuple[int, ...]],
    names: list[str],
    reps: int,
    iters: int,
    seed: int,
    block_s: float,
) -> dict[str, str]:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=gen) for s in shapes]
    blocks: dict[str, _harness.Block] = {}
    first_step_s: dict[str, float] = {}
    steps: dict[str, int] = {}
    for name in names:
        opt = VARIANTS[name](make_params(shapes, grads, seed=1))
        t0 = time.perf_counter()
        opt.step()  # creates the state; compiles the fused kernel when needed
        first_step_s[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        opt.step()
        # at least block_s per block: a short block is at the mercy of one
        # hiccup of the machine (a fused step takes 10 ms, the blog post's 500 ms)
        steps[name] = max(iters, math.ceil(block_s / (time.perf_counter() - t0)))
        blocks[name] = _harness.timed(opt.step, steps[name])
    t0 = time.perf_counter()
    results = _harness.interleave(blocks, reps, seed=seed)
    took = time.perf_counter() - t0

    numel = sum(math.prod(s) for s in shapes)
    print(
        f"{label}: {len(shapes)} x {list(shapes[0])} ({numel / 1e6:.1f}M params), "
        f"{reps} reps of a block of >= {iters} steps (>= {block_s:g} s) per "
        f"variant, ms per step, ratios to {ADAM}; took {took:.0f}s (warm-up "
        "included)"
    )
    print()
    extra = {
        "steps per block": lambda name: str(steps[name]),
        "first step s": lambda name: f"{first_step_s[name]:.2f}",
    }
    print(_harness.table(results, ADAM, extra=extra))
    print()
    result = {
        "default/adam": versus(results, OURS, ADAM),
        "blog post/default": f"{_harness.ratio(results, BLOG_POST, OURS):.1f}x",
        "psi": f"{_harness.psi(results, OURS):.0f} %",
    }
    if OURS_FUSED in results:
        result["fused/adam_fused"] = versus(results, OURS_FUSED, ADAM_FUSED)
        result["compile_s"] = f"{first_step_s[OURS_FUSED]:.1f}s"
    return result


def versus(results: _harness.Results, name: str, ref: str) -> str:
    """``name``'s ratio of medians to ``ref``, with the per-rep (paired) ratios'
    median [min, max]: how far the noise of one run reaches."""
    pair = _harness.paired(results, name, ref)
    return (
        f"{_harness.ratio(results, name, ref):.2f} "
        f"(paired {statistics.median(pair):.2f} [{min(pair):.2f}, {max(pair):.2f}])"
    )


def main() -> None:
    parser = _harness.arguments(__doc__, reps=7)
    parser.add_argument("--no-fused", action="store_true", help="skip fused=True")
    # Adam's first step imports torch._dynamo (seconds): keep that out of the
    # "first step" column.
    importlib.import_module("torch._dynamo")
    args = _harness.parse(parser)
    reps = args.reps
    block_s = 0.0 if args.quick else 0.25
    names = [n for n in VARIANTS if not (args.no_fused and n == OURS_FUSED)]
    print()
    if args.quick:
        sets = [("(a)", [(128, 128)] * 20, 2), ("(b)", [(1024, 1024)], 2)]
    else:
        sets = [("(a)", [(256, 256)] * 200, 5), ("(b)", [(4096, 4096)], 3)]
    results = {
        label: bench(label, shapes, names, reps, iters, args.seed + i, block_s)
        for i, (label, shapes, iters) in enumerate(sets)
    }
    print("Agreement with the blog post's SMORMS3:")
    check([n for n in names if n.startswith("SMORMS3")])
    print("Summary (ratios of medians; targets: default <= 1.5, fused <= 1.5,")
    print("blog post / default >= 3 on (b)):")
    for label, r in results.items():
        print(f"  {label}: SMORMS3 default / Adam default = {r['default/adam']}")
        if "fused/adam_fused" in r:
            print(
                f"       SMORMS3 fused / Adam fused = {r['fused/adam_fused']}, "
                f"first step incl. compile {r['compile_s']}"
            )
        blog_post = r["blog post/default"]
        print(f"       blog post / SMORMS3 default = {blog_post}, psi {r['psi']}")


if __name__ == "__main__":
    main()
