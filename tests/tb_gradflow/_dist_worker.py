"""One rank of the multi-process tests (run by test_distributed.py, not by pytest).

Usage: python _dist_worker.py MODE RANK WORLD INIT_FILE OUTDIR
MODE is "ddp" or "fsdp". Rank r trains on its half of a fixed batch; rank 0
writes with tb_gradflow.watch, rank 1 is given a writer of its own and must not
write gradflow data into it (watch's default rank=0). MODE "ddp-trace" divides
by zero in the forward pass from step 1 on under DDP, with an optimizer that
skips non-finite steps, and writes each rank's traced origins as JSON lines.
A rank that got through all of it writes MODE-rankR.done and ends by os._exit(0)
(see finish).
"""

import os
import sys
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

import tb_gradflow

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: shared helpers
from broken_modules import DivideBy, SkipNonfiniteSGD

STEPS = 3


UPDATE = ["update_ratio", "weight_norm"]  # measured around the step


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    )


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def train(model, opt, x, y) -> None:
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()


def trace(rank: int, world: int, outdir: str) -> None:
    """DDP with trace_nonfinite: only the logging rank arms its hooks."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), DivideBy(), nn.Linear(16, 3))
    model = nn.parallel.DistributedDataParallel(plain)
    opt = SkipNonfiniteSGD(model.parameters(), lr=0.1)
    x, y = make_batch()
    half = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    writer = SummaryWriter(f"{outdir}/ddp-trace-rank0") if rank == 0 else None
    flow = tb_gradflow.watch(model, writer, optimizer=opt, trace_nonfinite=True)
    for step in range(STEPS):
        if step == 1:
            plain[2].divisor.fill_(0.0)
        opt.zero_grad()
        F.mse_loss(model(x[half]), y[half]).backward()
        opt.step()
    if writer is not None:
        writer.close()
    with open(f"{outdir}/ddp-trace-rank{rank}.jsonl", "w") as f:
        for origin in flow.nonfinite_origins:
            f.write(origin.to_json().decode() + "\n")


def main(mode: str, rank: int, world: int, init_file: str, outdir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    if mode == "ddp-trace":
        trace(rank, world, outdir)
        finish(mode, rank, outdir)
    model = make_model()
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = make_batch()
    half = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    with SummaryWriter(f"{outdir}/{mode}-rank{rank}") as writer:
        with tb_gradflow.watch(model, writer, optimizer=opt, stats=UPDATE):
            train(model, opt, x[half], y[half])
    finish(mode, rank, outdir)


def finish(mode: str, rank: int, outdir: str) -> NoReturn:
    """Meets the other rank, marks this one done and ends the process without
    finalizing the interpreter.

    A gloo worker thread frees a finished collective's tensors on its own time,
    after the caller has moved on; a tensor Python made (tb_gradflow's
    all-reduced statistics under FSDP) needs the GIL to go. When that thread
    asks for the GIL just before the interpreter starts finalizing, CPython
    (3.11) ends the thread with pthread_exit inside the C++ destructor:
    "terminate called without an active exception", SIGABRT (-6), after all
    the rank's work. Neither a barrier (it waits for the collectives, not for
    their threads to drop them) nor destroy_process_group (the FSDP model and
    its device mesh keep the group, and its threads, alive) prevents it. So
    the rank ends by os._exit, after everything it writes is closed; the test
    requires return code 0 and the .done file from both ranks."""
    dist.barrier()
    dist.destroy_process_group()
    with open(f"{outdir}/{mode}-rank{rank}.done", "w") as f:
        f.write("done\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    mode, rank, world, init_file, outdir = sys.argv[1:]
    main(mode, int(rank), int(world), init_file, outdir)
