"""Rate schedules, the DropoutScheduler from a plain loop, the callback's hooks, and the callback
in a real Lightning Trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dropkit
from dropkit import schedules

# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def test_constant_linear_cosine_step_values():
    assert [schedules.constant(0.2)(t) for t in (0, 7, 10_000)] == [0.2, 0.2, 0.2]
    lin = schedules.linear(0.5, 0.1, total_steps=4)
    assert [lin(t) for t in range(6)] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.1])
    cos = schedules.cosine(0.0, 0.4, total_steps=10)
    values = [cos(t) for t in range(12)]
    assert (
        values[0] == 0.0
        and values[5] == pytest.approx(0.2)
        and values[10:] == pytest.approx([0.4, 0.4])
    )
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    st = schedules.step([0.0, 0.2, 0.5], milestones=[3, 6])
    assert [st(t) for t in range(8)] == [0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.5, 0.5]


def test_curriculum_rises_from_zero_to_p_bar_as_morerio():
    p_bar, gamma = 0.5, 0.01
    sched = schedules.curriculum(p_bar, gamma)
    for t in (0, 1, 50, 300, 5000):
        assert sched(t) == pytest.approx(p_bar * (1 - math.exp(-gamma * t)))
    values = [sched(t) for t in range(0, 2000, 10)]
    assert values[0] == 0.0 and all(b > a for a, b in zip(values, values[1:], strict=False))
    assert sched(10**6) == pytest.approx(p_bar)
    assert schedules.curriculum(0.3, total_steps=100).gamma == pytest.approx(0.1)


def test_schedules_reject_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        schedules.linear(0.0, 0.5, total_steps=0)
    with pytest.raises(ValueError, match="end"):
        schedules.cosine(0.0, 1.5, total_steps=3)
    with pytest.raises(ValueError, match="one more value"):
        schedules.step([0.1, 0.2], milestones=[1, 2])
    with pytest.raises(ValueError, match="increasing"):
        schedules.step([0.1, 0.2, 0.3], milestones=[5, 5])
    with pytest.raises(ValueError, match="gamma"):
        schedules.curriculum(0.5, gamma=0.0)
    with pytest.raises(ValueError, match="gamma or total_steps"):
        schedules.curriculum(0.5)
    with pytest.raises(ValueError, match="t must be"):
        schedules.constant(0.1)(-1)
    with pytest.raises(TypeError, match="t must be"):
        schedules.constant(0.1)(1.5)


# --------------------------------------------------------------------------------------------
# DropoutScheduler from a plain training loop
# --------------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.drop = dropkit.Dropout(0.5)
        self.block = dropkit.DropConnectLinear(8, 8, p=0.5)
        self.path = dropkit.DropPath(0.1)
        self.torch_drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.fc1(x)))
        h = h + self.path(self.block(h))
        return self.head(self.torch_drop(h))


def test_scheduler_sets_p_each_step_of_a_plain_training_loop():
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    schedule = schedules.linear(0.0, 0.4, total_steps=4)
    sched = dropkit.DropoutScheduler(net, schedule)
    assert set(sched.modules) == {"drop", "block", "path", "torch_drop"}
    seen = []
    for _ in range(6):
        seen.append([net.drop.p, net.block.p, net.path.p, net.torch_drop.p])
        loss = net(torch.randn(5, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for t, rates in enumerate(seen):
        assert rates == pytest.approx([schedule(t)] * 4)
    assert sched.t == 6


def test_scheduler_filters_by_name_type_and_predicate():
    net = _Net()
    by_type = dropkit.DropoutScheduler(net, schedules.constant(0.2), types=dropkit.DropPath)
    assert list(by_type.modules) == ["path"] and net.path.p == 0.2 and net.drop.p == 0.5
    by_name = dropkit.DropoutScheduler(net, schedules.constant(0.3), names=[r"^drop$", "torch"])
    assert set(by_name.modules) == {"drop", "torch_drop"}
    by_pred = dropkit.DropoutScheduler(
        net, schedules.constant(0.05), where=lambda name, m: isinstance(m, nn.Linear)
    )
    assert list(by_pred.modules) == ["block"] and net.block.p == 0.05


def test_scheduler_relative_keeps_per_layer_rates_shape():
    blocks = nn.Sequential(*[dropkit.DropPath(r) for r in dropkit.drop_path_rates(0.3, 4)])
    sched = dropkit.DropoutScheduler(
        blocks, schedules.linear(0.0, 1.0, total_steps=2), relative=True
    )
    assert [m.p for m in blocks] == [0.0] * 4
    sched.step()
    assert [m.p for m in blocks] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    sched.step()
    assert [m.p for m in blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_scheduler_state_dict_resumes_at_the_same_step():
    net = _Net()
    schedule = schedules.curriculum(0.5, gamma=0.5)
    sched = dropkit.DropoutScheduler(net, schedule)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    fresh_net = _Net()
    resumed = dropkit.DropoutScheduler(fresh_net, schedule)
    assert fresh_net.drop.p == 0.0
    resumed.load_state_dict(state)
    assert resumed.t == 3 and fresh_net.drop.p == pytest.approx(schedule(3))
    resumed.step()
    assert fresh_net.block.p == pytest.approx(schedule(4))


def test_scheduler_skips_modules_marked_unschedulable():
    class Learned(dropkit.Dropout):
        schedulable = False

    net = nn.Sequential(dropkit.Dropout(0.5), Learned(0.5))
    sched = dropkit.DropoutScheduler(net, schedules.constant(0.1))
    assert list(sched.modules) == ["0"] and net[1].p == 0.5


def test_scheduler_rejects_a_model_without_dropout():
    with pytest.raises(ValueError, match="no dropout module"):
        dropkit.DropoutScheduler(nn.Linear(2, 2), schedules.constant(0.1))


def test_scheduler_rejects_a_schedule_leaving_zero_one():
    with pytest.raises(ValueError, match=r"schedule\(0\)"):
        dropkit.DropoutScheduler(_Net(), lambda t: 1.5)


def test_scheduler_relative_rejects_a_negative_multiplier():
    with pytest.raises(ValueError, match="multiplier"):
        dropkit.DropoutScheduler(_Net(), lambda t: -1.0, relative=True)


def test_scheduler_rejects_bad_arguments():
    with pytest.raises(TypeError, match="schedule"):
        dropkit.DropoutScheduler(_Net(), 0.3)
    with pytest.raises(TypeError, match="model"):
        dropkit.DropoutScheduler("net", schedules.constant(0.1))
    with pytest.raises(ValueError, match="state"):
        dropkit.DropoutScheduler(_Net(), schedules.constant(0.1)).load_state_dict({})


# --------------------------------------------------------------------------------------------
# Lightning callback: the hooks with a minimal loop, the class in a real Trainer
# --------------------------------------------------------------------------------------------


class _FakeTrainer:
    """The few pieces of a Lightning Trainer's loop the callback relies on: the hook calls."""

    def __init__(self, callbacks: list) -> None:
        self.callbacks = callbacks

    def fit(self, module: nn.Module, epochs: int, batches: int) -> None:
        opt = torch.optim.SGD(module.parameters(), lr=0.01)
        for cb in self.callbacks:
            cb.on_fit_start(self, module)
        for _ in range(epochs):
            for batch_idx in range(batches):
                loss = module(torch.randn(3, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                for cb in self.callbacks:
                    cb.on_train_batch_end(self, module, loss, None, batch_idx)
            for cb in self.callbacks:
                cb.on_train_epoch_end(self, module)


class _LoggingNet(_Net):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[str, float]] = []

    def log(self, name: str, value: float) -> None:
        self.logged.append((name, value))


@pytest.mark.parametrize(("interval", "expected_t"), [("step", 6), ("epoch", 2)])
def test_hooks_advance_per_step_or_epoch(interval, expected_t):
    schedule = schedules.linear(0.0, 0.5, total_steps=10)
    hooks = schedules.DropoutScheduleHooks(schedule, interval=interval, log=True)
    net = _LoggingNet()
    _FakeTrainer([hooks]).fit(net, epochs=2, batches=3)
    assert hooks.scheduler.t == expected_t
    assert net.drop.p == pytest.approx(schedule(expected_t))
    assert len(net.logged) == expected_t and net.logged[-1][0] == "dropout_p"


def test_hooks_checkpoint_restore_before_fit_start():
    schedule = schedules.linear(0.0, 0.5, total_steps=10)
    hooks = schedules.DropoutScheduleHooks(schedule, names="drop")
    _FakeTrainer([hooks]).fit(_Net(), epochs=1, batches=4)
    state = hooks.state_dict()
    restored = schedules.DropoutScheduleHooks(schedule, names="drop")
    restored.load_state_dict(state)  # Lightning may restore before on_fit_start
    net = _Net()
    restored.on_fit_start(None, net)
    assert restored.scheduler.t == 4 and net.drop.p == pytest.approx(schedule(4))


def test_hooks_reject_bad_interval():
    with pytest.raises(ValueError, match="interval"):
        schedules.DropoutScheduleHooks(schedules.constant(0.1), interval="batch")


class _OneDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.drop = dropkit.Dropout(0.5)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.fc(x))))


def _lightning_module(seen: list[float]):
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _OneDropout()

        def training_step(self, batch, batch_idx):
            seen.append(self.net.drop.p)  # the rate this step trains with
            (x,) = batch
            return self.net(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Module()


def _fit(callback, seen: list[float], folder, epochs: int, ckpt_path=None):
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )
    data = torch.utils.data.TensorDataset(
        torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    )
    module = _lightning_module(seen)
    # 12 rows in batches of 4: three steps an epoch.
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return trainer, module


# A real Trainer: importing Lightning (torchmetrics, transformers) costs about 6 s of CPU, so slow.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("interval", "trained_at", "final_t"),
    [("step", [0, 1, 2, 3, 4, 5], 6), ("epoch", [0, 0, 0, 1, 1, 1], 2)],
)
def test_callback_schedules_the_rate_in_a_real_lightning_trainer(
    tmp_path, interval, trained_at, final_t
):
    import lightning.pytorch as pl

    schedule = schedules.linear(0.0, 0.5, total_steps=10)
    callback = schedules.DropoutSchedulerCallback(schedule, interval=interval, log=True)
    assert isinstance(callback, pl.Callback)
    assert isinstance(callback, schedules.DropoutScheduleHooks)
    seen: list[float] = []
    trainer, module = _fit(callback, seen, tmp_path, epochs=2)
    # Each training step ran with the rate of the scheduler's count at that step.
    assert seen == pytest.approx([schedule(t) for t in trained_at])
    assert callback.scheduler.t == final_t
    assert module.net.drop.p == pytest.approx(schedule(final_t))
    assert float(trainer.callback_metrics["dropout_p"]) == pytest.approx(schedule(final_t))


@pytest.mark.slow
def test_callback_state_goes_through_a_lightning_checkpoint_and_resumes(tmp_path):
    schedule = schedules.linear(0.0, 0.5, total_steps=10)
    callback = schedules.DropoutSchedulerCallback(schedule, interval="step")
    trainer, _ = _fit(callback, [], tmp_path, epochs=2)
    path = tmp_path / "two-epochs.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"][callback.state_key]
    assert saved == {"t": 6, "base_p": {"net.drop": 0.5}}
    # A fresh callback and trainer resume from the checkpoint: the schedule continues at step 6.
    resumed = schedules.DropoutSchedulerCallback(schedule, interval="step")
    seen: list[float] = []
    _, module = _fit(resumed, seen, tmp_path, epochs=3, ckpt_path=path)
    assert seen == pytest.approx([schedule(t) for t in (6, 7, 8)])
    assert resumed.scheduler.t == 9 and module.net.drop.p == pytest.approx(schedule(9))


def test_callback_is_absent_without_lightning(monkeypatch):
    monkeypatch.setattr(schedules, "_callback_class", None)
    monkeypatch.setattr(schedules, "_lightning_callback_base", lambda: None)
    assert not hasattr(schedules, "DropoutSchedulerCallback")
    with pytest.raises(AttributeError, match="lightning"):
        schedules.DropoutSchedulerCallback  # noqa: B018
