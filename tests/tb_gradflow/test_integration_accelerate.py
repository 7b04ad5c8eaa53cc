"""watch() in a Hugging Face Accelerate loop, wired as the README shows it: the
logged statistics against the gradient the optimizer applied."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

import tb_gradflow


@pytest.mark.slow
def test_accelerate_loop_with_accumulation_and_clipping(
    tmp_path, recording_sgd, logged_equals_applied
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(
        torch.randn(48, 4, generator=gen), 5.0 * torch.randn(48, 1, generator=gen)
    )
    accelerator = Accelerator(
        cpu=True,
        gradient_accumulation_steps=2,
        log_with="tensorboard",
        project_dir=str(tmp_path),
    )
    accelerator.init_trackers("run")
    model, opt, batches = accelerator.prepare(
        model,
        recording_sgd(model.parameters(), lr=0.05),
        torch.utils.data.DataLoader(data, batch_size=8),
    )
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    flow = tb_gradflow.watch(
        accelerator.unwrap_model(model),
        writer,
        optimizer=opt,
        scaler=accelerator.scaler,
    )
    for x, y in batches:
        with accelerator.accumulate(model):
            loss = ((model(x) - y) ** 2).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    flow.remove()
    accelerator.end_training()
    applied = opt.optimizer.applied
    assert len(applied) == 3  # 6 batches, 2 per step
    run = tb_gradflow.load_run(tmp_path / "run")
    logged_equals_applied(run, accelerator.unwrap_model(model), applied, [0, 1, 2])
    for grads in applied:
        total = torch.sqrt(sum(g.norm() ** 2 for g in grads.values()))
        assert total.item() == pytest.approx(1.0, rel=1e-5)
