"""GradFlowCallback under a real transformers Trainer (a 2-layer GPT-2 with random
weights, no download): the logged statistics against the gradient the optimizer
applied (recorded by the optimizer inside Accelerate's wrapper), at the
global_step where Trainer logs that update's loss, in the same run folder."""

from __future__ import annotations

import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import tb_gradflow
from tb_gradflow.integrations.huggingface import GradFlowCallback


def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_inner=32,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.5,  # large weights, large gradients: clipping acts
    )
    return GPT2LMHeadModel(config)


def tokens(n=16, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, length), generator=gen)
    return [{"input_ids": row, "labels": row} for row in ids]


def train(tmp_path, recording_sgd, callback, *, resume=None, **options):
    model = gpt2()
    optimizer = recording_sgd(model.parameters(), lr=0.05)
    defaults = dict(
        per_device_train_batch_size=4,
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        report_to="tensorboard",
        lr_scheduler_type="constant",
    )
    args = TrainingArguments(str(tmp_path / "out"), **{**defaults, **options})
    trainer = Trainer(
        model,
        args,
        train_dataset=tokens(),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notices
        trainer.train(resume_from_checkpoint=resume)
    return model, optimizer


def scalar_steps(log_dir, tag):
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.fixture
def tb_dir(tmp_path, monkeypatch):
    """Where TensorBoardCallback writes (else a folder named by date and host)."""
    log_dir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(log_dir))
    return log_dir


@pytest.mark.slow
def test_accumulation_and_clipping_log_the_applied_gradient(
    tmp_path, tb_dir, recording_sgd, logged_equals_applied
):
    callback = GradFlowCallback()
    model, optimizer = train(
        tmp_path,
        recording_sgd,
        callback,
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
        logging_steps=1,
        num_train_epochs=1,
    )
    run = tb_gradflow.load_run(tb_dir)
    assert len(optimizer.applied) == 2  # 16 rows, 4 a batch, 2 batches a step
    logged_equals_applied(run, model, optimizer.applied, [1, 2])
    assert scalar_steps(tb_dir, "train/loss") == [1, 2]
    assert len(list(tb_dir.glob("events.*"))) == 1  # the TensorBoardCallback's writer
    for grads in optimizer.applied:  # Trainer clipped them before the step
        total = torch.sqrt(sum(g.norm() ** 2 for g in grads.values()))
        assert total.item() == pytest.approx(1.0, rel=1e-5)
    assert "transformer.wte" in run.layers and "lm_head" not in run.layers  # tied
    assert callback.watcher is None
    assert not optimizer._optimizer_step_pre_hooks


@pytest.mark.slow
def test_tensorboard_shows_it_beside_the_trainers_scalars(
    tmp_path, tb_dir, recording_sgd, served_beside_scalars
):
    train(
        tmp_path,
        recording_sgd,
        GradFlowCallback(),
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
        logging_steps=1,
        max_steps=3,
    )
    run = tb_gradflow.load_run(tb_dir)
    served_beside_scalars(tmp_path, "tb", "train/loss", run)


@pytest.mark.slow
def test_steps_follow_logging_steps_and_logging_first_step(
    tmp_path, tb_dir, recording_sgd
):
    train(
        tmp_path,
        recording_sgd,
        GradFlowCallback(),
        max_steps=4,
        logging_steps=2,
        logging_first_step=True,
    )
    run = tb_gradflow.load_run(tb_dir)
    assert list(run.steps) == [1, 2, 4] == scalar_steps(tb_dir, "train/loss")
    assert run.every == 2


@pytest.mark.slow
def test_a_resumed_run_continues_the_numbering(tmp_path, tb_dir, recording_sgd):
    options = dict(max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2)
    train(tmp_path, recording_sgd, GradFlowCallback(), **options)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert checkpoint.is_dir()
    (tb_dir / "again").mkdir(parents=True)
    for f in tb_dir.glob("events.*"):
        f.rename(tb_dir / "again" / f.name)  # keep the first run's file apart
    train(
        tmp_path, recording_sgd, GradFlowCallback(), resume=str(checkpoint), **options
    )
    assert list(tb_gradflow.load_run(tb_dir).steps) == [3, 4]


@pytest.mark.slow
def test_without_a_tensorboard_callback_it_opens_its_own_writer(
    tmp_path, tb_dir, recording_sgd
):
    callback = GradFlowCallback(every=1)
    train(tmp_path, recording_sgd, callback, max_steps=2, report_to="none")
    assert list(tb_gradflow.load_run(tb_dir).steps) == [1, 2]
    assert callback.watcher is None and callback._own_writer is None


def test_options_the_callback_sets_are_refused():
    with pytest.raises(TypeError, match="sets 'step_fn' itself"):
        GradFlowCallback(step_fn=lambda: 0)
