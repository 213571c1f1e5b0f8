"""What one optimizer step does: gradient accumulation, clipping, non-finite losses, precision."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from conftest import Counter, TinyClassifier, make_loader, params_of
from engine import ConfigError, NonFiniteLossError, seed_everything
from engine._checkpoint_io import load_checkpoint
from engine.callbacks import Callback, ModelCheckpoint


def _manual_accumulated_step(model, loader, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    grads = []
    for batch in loader:
        model.zero_grad()
        model.loss(batch).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for p, *per_batch in zip(model.parameters(), *grads):
        p.grad = torch.stack(per_batch).mean(dim=0)
    opt.step()


def test_accumulating_three_batches_steps_with_their_mean_gradient(make_trainer):
    seed_everything(0)
    model = TinyClassifier(lr=0.1)
    reference = copy.deepcopy(model)
    start = params_of(model)
    loader = make_loader(24, batch_size=8)
    make_trainer(max_steps=1, accumulate_grad_batches=3).fit(model, loader)
    _manual_accumulated_step(reference, loader, lr=0.1)
    assert not torch.allclose(params_of(model)[0], start[0])
    for trained, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(trained, expected, atol=1e-6)


def test_global_step_counts_optimizer_steps_not_batches(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=3, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(48, batch_size=8))
    assert counter.train_batches == 12
    assert counter.optimizer_steps == 4
    assert trainer.global_step == 4


def test_a_partial_accumulation_group_at_epoch_end_still_steps(make_trainer):
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=3)
    trainer.fit(TinyClassifier(), make_loader(56, batch_size=8))
    assert trainer.global_step == 3


def test_max_steps_counts_accumulated_steps(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_steps=2, accumulate_grad_batches=2, callbacks=[counter])
    trainer.fit(TinyClassifier(), make_loader(80, batch_size=8))
    assert trainer.global_step == 2
    assert counter.train_batches == 4


class _GradSpy(Callback):
    """Copies the gradients before clipping (on_before_optimizer_step) and after it (on_before_zero_grad)."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.raw = [p.grad.clone() for p in module.parameters()]

    def on_before_zero_grad(self, trainer, module, optimizer):
        self.clipped = [p.grad.clone() for p in module.parameters()]


class _LargeGradients(TinyClassifier):
    def training_step(self, batch, batch_idx):
        return 100.0 * self.loss(batch)


def _with_grads(grads):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_gradient_clip_norm_matches_clip_grad_norm(make_trainer):
    spy = _GradSpy()
    make_trainer(max_steps=1, gradient_clip_val=0.5, callbacks=[spy]).fit(_LargeGradients(), make_loader(8))
    expected = _with_grads(spy.raw)
    torch.nn.utils.clip_grad_norm_(expected, 0.5)
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in spy.raw])) > 0.5
    for got, want in zip(spy.clipped, expected):
        assert torch.allclose(got, want.grad)
    assert torch.isclose(torch.linalg.vector_norm(torch.cat([g.flatten() for g in spy.clipped])),
                         torch.tensor(0.5), atol=1e-5)


def test_gradient_clip_value_matches_clip_grad_value(make_trainer):
    spy = _GradSpy()
    trainer = make_trainer(max_steps=1, gradient_clip_val=0.05, gradient_clip_algorithm="value", callbacks=[spy])
    trainer.fit(_LargeGradients(), make_loader(8))
    expected = _with_grads(spy.raw)
    torch.nn.utils.clip_grad_value_(expected, 0.05)
    assert max(float(g.abs().max()) for g in spy.raw) > 0.05
    for got, want in zip(spy.clipped, expected):
        assert torch.equal(got, want.grad)


def test_without_clipping_gradients_are_untouched(make_trainer):
    spy = _GradSpy()
    make_trainer(max_steps=1, callbacks=[spy]).fit(_LargeGradients(), make_loader(8))
    for got, raw in zip(spy.clipped, spy.raw):
        assert torch.equal(got, raw)


class _NanAtBatch(TinyClassifier):
    def __init__(self, nan_batch: int) -> None:
        super().__init__()
        self.nan_batch = nan_batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == self.nan_batch else loss


def test_nonfinite_loss_raise_names_the_step(make_trainer):
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(NonFiniteLossError, match="global step 2") as info:
        trainer.fit(_NanAtBatch(2), make_loader(40, batch_size=8))
    assert info.value.step == 2
    assert "gradient_clip_val" in str(info.value)


def test_nonfinite_loss_raise_never_writes_a_checkpoint_after_the_bad_step(make_trainer, tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1)
    with pytest.raises(NonFiniteLossError):
        make_trainer(max_epochs=1, callbacks=[ckpt]).fit(_NanAtBatch(2), make_loader(40, batch_size=8))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=2.ckpt"]
    state = load_checkpoint(tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


def test_nonfinite_loss_raise_is_the_default(make_trainer):
    assert make_trainer().config.on_nonfinite_loss == "raise"


def test_nonfinite_loss_warn_logs_and_keeps_training(make_trainer, traindeck_log):
    trainer = make_trainer(max_epochs=1, on_nonfinite_loss="warn")
    trainer.fit(_NanAtBatch(2), make_loader(40, batch_size=8))
    assert trainer.global_step == 5
    warnings = [r for r in traindeck_log.records if r.levelno == logging.WARNING]
    assert any("nan" in r.getMessage() and "global step 2" in r.getMessage() for r in warnings)


def test_nonfinite_loss_skip_leaves_parameters_unchanged_for_that_batch(make_trainer):
    snapshots = {}

    class Snapshots(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            snapshots[batch_idx] = [params_of(module)]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots[batch_idx].append(params_of(module))

    trainer = make_trainer(max_epochs=1, on_nonfinite_loss="skip", callbacks=[Snapshots()])
    model = _NanAtBatch(2)
    trainer.fit(model, make_loader(40, batch_size=8))
    before, after = snapshots[2]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    before, after = snapshots[3]
    assert not torch.equal(before[0], after[0])
    assert trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _DtypeProbe(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.activation_dtypes: list[torch.dtype] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.activation_dtypes.append(logits.dtype)
        return F.cross_entropy(logits, y)


def test_bf16_mixed_runs_the_forward_pass_in_bfloat16_on_cpu(make_trainer):
    model = _DtypeProbe()
    trainer = make_trainer(max_epochs=1, precision="bf16-mixed", accelerator="cpu")
    trainer.fit(model, make_loader(32, batch_size=8))
    assert model.activation_dtypes == [torch.bfloat16] * 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert trainer.global_step == 4


def test_32_true_runs_the_forward_pass_in_float32(make_trainer):
    model = _DtypeProbe()
    make_trainer(max_steps=1, precision=32).fit(model, make_loader(8))
    assert model.activation_dtypes == [torch.float32]


def test_bf16_mixed_training_still_learns(make_trainer):
    model = TinyClassifier(lr=0.5)
    trainer = make_trainer(max_epochs=15, precision="bf16", accelerator="cpu")
    loader = make_loader(64, batch_size=16)
    first = make_trainer().validate(model, loader)[0]["val_loss"]
    trainer.fit(model, loader)
    assert make_trainer().validate(model, loader)[0]["val_loss"] < 0.6 * first


def test_16_mixed_on_cpu_is_a_config_error(make_trainer):
    trainer = make_trainer(max_steps=1, precision="16-mixed", accelerator="cpu")
    with pytest.raises(ConfigError, match="bf16-mixed"):
        trainer.fit(TinyClassifier(), make_loader(8))


@pytest.mark.parametrize("value", ["64-true", "fp8", 8])
def test_unknown_precision_is_a_config_error(make_trainer, value):
    with pytest.raises(ConfigError, match="precision"):
        make_trainer(precision=value)


@pytest.mark.parametrize(("alias", "name"), [(32, "32-true"), ("32", "32-true"), ("bf16", "bf16-mixed"),
                                             (16, "16-mixed")])
def test_precision_aliases_normalise_to_lightning_names(make_trainer, alias, name):
    assert make_trainer(precision=alias).config.precision == name
