"""GradFlowCallback under a real Lightning Trainer: the logged statistics
against the gradient the optimizer applied (recorded by the optimizer), at the
steps where Lightning logs the batch's own scalars, in the same run folder."""

from __future__ import annotations

import warnings

import lightning.pytorch as L
import pytest
import pytorch_lightning
import torch
from broken_modules import DivideBy
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import tb_gradflow
from tb_gradflow.integrations.lightning import GradFlowCallback


class Regression(L.LightningModule):
    def __init__(self, optimizer_class) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.optimizer_class = optimizer_class

    def training_step(self, batch, index):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean() * 40.0  # large: clipping acts
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        self.opt = self.optimizer_class(self.parameters(), lr=0.05)
        return self.opt


def loader(batches=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(
        torch.randn(8 * batches, 4, generator=gen),
        torch.randn(8 * batches, 1, generator=gen),
    )
    return torch.utils.data.DataLoader(data, batch_size=8)


def trainer(tmp_path, trainer_class=L.Trainer, logger=None, **options):
    return trainer_class(
        logger=logger or TensorBoardLogger(tmp_path, name="run", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def scalar_steps(log_dir, tag):
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        # Lightning's own advice (num_workers, log_every_n_steps vs batches)
        warnings.simplefilter("ignore")
        yield


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_accumulation_and_clipping_log_the_applied_gradient(
    tmp_path, precision, recording_sgd, logged_equals_applied
):
    module = Regression(recording_sgd)
    fit = trainer(
        tmp_path,
        max_epochs=1,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        log_every_n_steps=1,
        precision=precision,
        callbacks=[GradFlowCallback()],
    )
    fit.fit(module, loader(8))
    log_dir = fit.logger.log_dir
    run = tb_gradflow.load_run(log_dir)
    applied = module.opt.applied
    assert len(applied) == 4  # 8 batches, 2 per step
    logged_equals_applied(run, module, applied, range(4))
    assert list(run.steps) == scalar_steps(log_dir, "loss")
    for grads in applied:  # Lightning clipped them before the step
        total = torch.sqrt(sum(g.norm() ** 2 for g in grads.values()))
        assert total.item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.slow
def test_tensorboard_shows_it_beside_lightnings_scalars(
    tmp_path, recording_sgd, served_beside_scalars
):
    fit = trainer(
        tmp_path,
        max_epochs=1,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        log_every_n_steps=1,
        callbacks=[GradFlowCallback()],
    )
    fit.fit(Regression(recording_sgd), loader(8))
    run = tb_gradflow.load_run(fit.logger.log_dir)
    served_beside_scalars(tmp_path, "run/version_0", "loss", run)


@pytest.mark.slow
def test_default_cadence_is_lightnings_and_the_watcher_is_removed(
    tmp_path, recording_sgd, logged_equals_applied
):
    module = Regression(recording_sgd)
    callback = GradFlowCallback()
    fit = trainer(tmp_path, max_epochs=1, log_every_n_steps=3, callbacks=[callback])
    fit.fit(module, loader(8))
    run = tb_gradflow.load_run(fit.logger.log_dir)
    assert list(run.steps) == [2, 5] == scalar_steps(fit.logger.log_dir, "loss")
    assert run.every == 3
    logged_equals_applied(run, module, module.opt.applied[2::3], [2, 5])
    assert callback.watchers == []
    assert not module.opt._optimizer_step_pre_hooks  # nothing left registered


@pytest.mark.slow
def test_a_resumed_fit_continues_the_numbering(tmp_path, recording_sgd):
    module = Regression(recording_sgd)
    first = trainer(
        tmp_path, max_steps=3, log_every_n_steps=1, callbacks=[GradFlowCallback()]
    )
    first.fit(module, loader(8))
    checkpoint = tmp_path / "three.ckpt"
    first.save_checkpoint(checkpoint)
    resumed = Regression(recording_sgd)
    second = trainer(
        tmp_path, max_steps=6, log_every_n_steps=1, callbacks=[GradFlowCallback()]
    )
    second.fit(resumed, loader(8), ckpt_path=checkpoint)
    run = tb_gradflow.load_run(second.logger.log_dir)
    assert list(run.steps) == [0, 1, 2, 3, 4, 5]
    assert scalar_steps(second.logger.log_dir, "loss") == [0, 1, 2, 3, 4, 5]


class TwoOptimizers(L.LightningModule):
    """A GAN-shaped module: manual optimization, one optimizer per network."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4))
        self.critic = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))

    def training_step(self, batch, index):
        x, _ = batch
        g_opt, c_opt = self.optimizers()
        c_loss = self.critic(self.generator(x).detach()).mean() - self.critic(x).mean()
        c_opt.zero_grad()
        self.manual_backward(c_loss)
        c_opt.step()
        g_loss = -self.critic(self.generator(x)).mean()
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.log("g_loss", g_loss)

    def configure_optimizers(self):
        return (
            torch.optim.SGD(self.generator.parameters(), lr=0.01),
            torch.optim.SGD(self.critic.parameters(), lr=0.01),
        )


@pytest.mark.slow
def test_each_optimizer_of_a_gan_gets_a_watcher_of_its_layers(tmp_path):
    callback = GradFlowCallback(name="gan")
    fit = trainer(tmp_path, max_epochs=1, log_every_n_steps=2, callbacks=[callback])
    fit.fit(TwoOptimizers(), loader(4))
    runs = tb_gradflow.load(fit.logger.save_dir)
    by_name = {run.name: run for run in runs.values()}
    assert by_name["gan_0"].layers == ["generator.0", "generator.1"]
    assert by_name["gan_1"].layers == ["critic.0", "critic.1"]
    for run in by_name.values():
        assert list(run.steps) == [1, 3] == scalar_steps(fit.logger.log_dir, "g_loss")


@pytest.mark.slow
def test_the_pytorch_lightning_package_takes_it_too(tmp_path, recording_sgd):
    module = Regression(recording_sgd)
    fit = trainer(
        tmp_path,
        pytorch_lightning.Trainer,
        logger=pytorch_lightning.loggers.TensorBoardLogger(tmp_path, version=0),
        max_steps=2,
        log_every_n_steps=1,
        callbacks=[GradFlowCallback()],
    )
    assert isinstance(GradFlowCallback(), pytorch_lightning.Callback)
    fit.fit(_as_pytorch_lightning(module), loader(2))
    assert list(tb_gradflow.load_run(fit.logger.log_dir).steps) == [0, 1]


def _as_pytorch_lightning(module: Regression) -> pytorch_lightning.LightningModule:
    """The same network and optimizer in a pytorch_lightning module."""

    class Plain(pytorch_lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = module.net

        training_step = Regression.training_step
        configure_optimizers = Regression.configure_optimizers
        optimizer_class = module.optimizer_class

    return Plain()


def test_a_trainer_without_tensorboard_logger_is_told_what_to_pass(tmp_path):
    fit = trainer(
        tmp_path,
        logger=CSVLogger(tmp_path),
        max_steps=1,
        callbacks=[GradFlowCallback()],
    )
    with pytest.raises(RuntimeError, match=r"has none \(loggers: CSVLogger\); pass"):
        fit.fit(Regression(torch.optim.SGD), loader(1))


def test_options_the_callback_sets_or_watch_lacks_are_refused():
    with pytest.raises(TypeError, match="sets 'optimizer' itself"):
        GradFlowCallback(optimizer=None)
    with pytest.raises(TypeError, match="unknown option 'evry'.*every"):
        GradFlowCallback(evry=2)


class BreaksAtStep(L.LightningModule):
    """A regression whose middle module divides by zero from global step 3."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), DivideBy(), nn.Linear(16, 1))

    def training_step(self, batch, index):
        if self.global_step == 3:
            self.net[1].divisor.fill_(0.0)
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_trace_nonfinite_names_the_module_through_lightnings_closure(tmp_path):
    callback = GradFlowCallback(trace_nonfinite=True)
    fit = trainer(tmp_path, max_epochs=1, log_every_n_steps=1, callbacks=[callback])
    fit.fit(BreaksAtStep(), loader(6))
    run = tb_gradflow.load_run(fit.logger.log_dir)
    [origin] = run.origins
    assert (origin.step, origin.since_step) == (3, 3)  # replayed on its batch
    assert (origin.phase, origin.module, origin.module_type) == (
        "forward",
        "net.1",
        "DivideBy",
    )
    assert [f.kind for f in tb_gradflow.diagnose(run)].count("nonfinite_origin") == 1
