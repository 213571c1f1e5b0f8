"""``set KEY=VALUE``: which values check_setting accepts, and what apply_setting changes.

Real torch optimizers and schedulers throughout. A changed learning rate must last under
a scheduler: k scheduler steps after the set, the lr is (new / old) times what it would
have been without the set, which a twin optimizer + scheduler shows.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from torch.optim import lr_scheduler

from engine._settings import SettingError, apply_setting, check_setting


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(2))


def _sgd(lr: float = 0.1, **kwargs: Any) -> torch.optim.SGD:
    return torch.optim.SGD([_param()], lr=lr, **kwargs)


def _named_groups() -> torch.optim.SGD:
    """Two named param groups: "backbone" (lr 0.01) and "head" (lr 0.1)."""
    return torch.optim.SGD([{"params": [_param()], "lr": 0.01, "name": "backbone"},
                            {"params": [_param()], "lr": 0.1, "name": "head"}], lr=0.5)


def _lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def _set(key: str, value: Any, optimizers: list[Any], schedulers: list[Any] = (), tunables: dict | None = None,
         group: str | int | None = None) -> dict[str, Any]:
    """check then apply, as the control path does."""
    tunables = {} if tunables is None else tunables
    check_setting(key, value, group, optimizers, tunables)
    return apply_setting(key, value, group, optimizers, list(schedulers), tunables)


# -- which values are accepted -----------------------------------------------------------


def test_set_lr_changes_every_param_group_when_no_group_is_named():
    opt = _named_groups()
    detail = _set("lr", 0.2, [opt])
    assert _lrs(opt) == [0.2, 0.2]
    assert detail["key"] == "lr" and detail["new"] == 0.2 and detail["groups"] == 2
    assert sorted(detail["old"]) == [0.01, 0.1]


def test_set_lr_on_a_named_group_leaves_the_other_groups_alone():
    opt = _named_groups()
    detail = _set("lr", 0.3, [opt], group="head")
    assert _lrs(opt) == [0.01, 0.3]
    assert detail["old"] == 0.1 and detail["groups"] == 1


def test_set_lr_by_group_index_changes_that_group_only():
    opt = _named_groups()
    _set("lr", 0.05, [opt], group=0)
    assert _lrs(opt) == [0.05, 0.1]


def test_group_index_counts_across_all_optimizers():
    first, second = _sgd(0.1), _sgd(0.2)
    _set("lr", 0.7, [first, second], group=1)
    assert (_lrs(first), _lrs(second)) == ([0.1], [0.7])


def test_a_group_index_out_of_range_is_refused_with_the_valid_range():
    with pytest.raises(SettingError, match=r"group 2: there are 2 param groups \(0\.\.1\)"):
        check_setting("lr", 0.1, 2, [_named_groups()], {})


def test_an_unknown_group_name_is_refused_listing_the_named_groups():
    with pytest.raises(SettingError, match="no param group named 'neck'") as caught:
        check_setting("lr", 0.1, "neck", [_named_groups()], {})
    assert "backbone, head" in str(caught.value)


def test_an_unknown_key_is_refused_listing_numeric_keys_and_tunables():
    opt = _sgd(momentum=0.9, nesterov=True)
    with pytest.raises(SettingError, match="unknown key 'lrr'") as caught:
        check_setting("lrr", 0.1, None, [opt], {"dropout": 0.1, "temperature": 1.0})
    message = str(caught.value)
    for numeric in ("lr", "momentum", "weight_decay", "dampening"):
        assert numeric in message
    assert "nesterov" not in message  # a bool is not a number set can change
    assert "module tunables: dropout, temperature" in message


def test_an_unknown_key_without_tunables_says_none():
    with pytest.raises(SettingError, match="module tunables: none"):
        check_setting("lrr", 0.1, None, [_sgd()], {})


@pytest.mark.parametrize("key", ["betas", "amsgrad"])
def test_a_key_whose_current_value_is_not_a_number_is_refused(key):
    opt = torch.optim.Adam([_param()], lr=0.001)
    with pytest.raises(SettingError, match=f"{key} is .* set changes numbers only"):
        check_setting(key, 0.5, None, [opt], {})
    assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["amsgrad"] is False


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "0.1", None, [0.1]])
def test_a_value_that_is_not_a_finite_number_is_refused(value):
    with pytest.raises(SettingError, match="the value must be a finite number"):
        check_setting("lr", value, None, [_sgd()], {"scale": 1.0})


def test_a_tunable_value_that_is_not_a_finite_number_is_refused():
    with pytest.raises(SettingError, match="finite number"):
        check_setting("scale", float("nan"), None, [_sgd()], {"scale": 1.0})


@pytest.mark.parametrize("value", [0, 0.0, -0.001])
def test_a_learning_rate_that_is_not_positive_is_refused(value):
    with pytest.raises(SettingError, match="the learning rate must be positive"):
        check_setting("lr", value, None, [_sgd()], {})


def test_other_optimizer_values_may_be_set_to_zero():
    opt = _sgd(momentum=0.9)
    _set("momentum", 0, [opt])
    assert opt.param_groups[0]["momentum"] == 0


def test_setting_a_float_value_from_a_whole_number_keeps_it_a_float():
    opt = _sgd(0.1)
    _set("lr", 1, [opt])
    assert opt.param_groups[0]["lr"] == 1.0 and isinstance(opt.param_groups[0]["lr"], float)


def test_an_int_optimizer_value_becomes_a_float_when_the_new_value_is_fractional():
    opt = _sgd(0.1)  # SGD's default momentum is the int 0
    assert opt.param_groups[0]["momentum"] == 0 and isinstance(opt.param_groups[0]["momentum"], int)
    _set("momentum", 0.9, [opt])
    assert opt.param_groups[0]["momentum"] == 0.9


# -- tunables ----------------------------------------------------------------------------


def test_set_a_tunable_changes_it_and_reports_old_and_new():
    tunables = {"temperature": 1.0}
    detail = _set("temperature", 0.25, [_sgd()], tunables=tunables)
    assert tunables == {"temperature": 0.25}
    assert detail == {"key": "temperature", "old": 1.0, "new": 0.25, "target": "tunable"}


def test_an_int_tunable_set_to_a_whole_number_stays_an_int():
    tunables = {"k": 3}
    detail = _set("k", 5.0, [_sgd()], tunables=tunables)
    assert tunables["k"] == 5 and isinstance(tunables["k"], int)
    assert detail["new"] == 5


def test_a_float_tunable_set_to_an_int_becomes_a_float():
    tunables = {"scale": 0.5}
    _set("scale", 2, [_sgd()], tunables=tunables)
    assert tunables["scale"] == 2.0 and isinstance(tunables["scale"], float)


def test_an_int_tunable_set_to_a_fractional_value_is_not_silently_truncated():
    tunables = {"k": 3}
    try:
        check_setting("k", 2.7, None, [_sgd()], tunables)
    except SettingError:
        return  # refusing it is fine too
    apply_setting("k", 2.7, None, [_sgd()], [], tunables)
    assert tunables["k"] == 2.7


def test_a_tunable_wins_over_a_param_group_key_of_the_same_name():
    opt = _sgd(0.1)
    tunables = {"lr": 1.0}
    _set("lr", 0.5, [opt], tunables=tunables)
    assert tunables["lr"] == 0.5 and _lrs(opt) == [0.1]


def test_a_tunable_name_with_a_group_is_looked_up_in_the_param_groups():
    with pytest.raises(SettingError, match="unknown key 'temperature'"):
        check_setting("temperature", 0.5, 0, [_sgd()], {"temperature": 1.0})


# -- lr under a scheduler ----------------------------------------------------------------

Factory = Callable[[torch.optim.Optimizer], Any]

_LASTING: dict[str, Factory] = {
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch)),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=5),
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=30),
    "ExponentialLR": lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.9),
    "PolynomialLR": lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=10),
}

# Schedulers that keep a schedule of their own outside the param group and the top-level
# base_lrs (children's base_lrs, CyclicLR's max_lrs), which apply_setting does not rescale.
_NESTED: dict[str, Factory] = {
    "SequentialLR": lambda opt: lr_scheduler.SequentialLR(
        opt, [lr_scheduler.LambdaLR(opt, lambda e: 1.0), lr_scheduler.CosineAnnealingLR(opt, T_max=5)],
        milestones=[4]),
    "ChainedScheduler": lambda opt: lr_scheduler.ChainedScheduler(
        [lr_scheduler.LambdaLR(opt, lambda e: 0.9 ** e), lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)]),
    "CyclicLR": lambda opt: lr_scheduler.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=3),
}


def _lr_with_and_without_set(factory: Factory, ratio: float, before: int = 2, after: int = 12
                             ) -> tuple[list[float], list[float]]:
    """lr per step after setting lr to ratio × its value (at step ``before``), and the twin's without the set."""
    runs = []
    for do_set in (True, False):
        opt = _sgd(0.1)
        sched = factory(opt)
        for _ in range(before):
            opt.step()
            sched.step()
        if do_set:
            _set("lr", opt.param_groups[0]["lr"] * ratio, [opt], [sched])
        lrs = []
        for _ in range(after):
            opt.step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        runs.append(lrs)
    return runs[0], runs[1]


@pytest.mark.parametrize("name", list(_LASTING))
def test_a_set_lr_lasts_through_later_scheduler_steps(name):
    changed, twin = _lr_with_and_without_set(_LASTING[name], ratio=3.0)
    assert changed == pytest.approx([3.0 * lr for lr in twin], rel=1e-9)


@pytest.mark.parametrize("name", list(_LASTING))
def test_a_set_lr_is_in_effect_at_once_under_a_scheduler(name):
    opt = _sgd(0.1)
    sched = _LASTING[name](opt)
    opt.step()
    sched.step()
    _set("lr", 0.04, [opt], [sched])
    assert _lrs(opt) == [0.04]
    assert sched.get_last_lr() == [0.04]


@pytest.mark.parametrize("name", list(_NESTED))
def test_a_set_lr_lasts_under_composite_schedulers(name):
    changed, twin = _lr_with_and_without_set(_NESTED[name], ratio=3.0)
    assert changed == pytest.approx([3.0 * lr for lr in twin], rel=1e-9)


def test_a_set_lr_on_one_group_rescales_only_that_groups_schedule():
    opts, scheds = [], []
    for _ in range(2):
        opt = _named_groups()
        opts.append(opt)
        scheds.append(lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 ** epoch))
    opts[0].step()
    scheds[0].step()
    opts[1].step()
    scheds[1].step()
    _set("lr", opts[0].param_groups[1]["lr"] * 2, [opts[0]], [scheds[0]], group="head")
    for _ in range(4):
        for opt, sched in zip(opts, scheds):
            opt.step()
            sched.step()
    changed, twin = _lrs(opts[0]), _lrs(opts[1])
    assert changed[0] == pytest.approx(twin[0])
    assert changed[1] == pytest.approx(2 * twin[1])


def test_one_cycle_schedule_values_in_the_param_group_are_rescaled():
    opt = _sgd(0.1)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=30)
    opt.step()
    sched.step()
    group = opt.param_groups[0]
    before = {k: group[k] for k in ("initial_lr", "max_lr", "min_lr")}
    _set("lr", group["lr"] * 0.5, [opt], [sched])
    assert {k: group[k] for k in before} == pytest.approx({k: v * 0.5 for k, v in before.items()})


def test_under_reduce_lr_on_plateau_the_set_lr_stays_until_the_next_plateau():
    opt = _sgd(0.1)
    sched = lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    sched.step(1.0)
    sched.step(2.0)  # no improvement: 0.1 -> 0.05
    assert _lrs(opt) == [pytest.approx(0.05)]
    _set("lr", 0.3, [opt], [sched])
    for metric in (0.5, 0.4, 0.3):  # improving: no reduction
        sched.step(metric)
    assert _lrs(opt) == [0.3]
    sched.step(0.9)  # a plateau halves the new value, not the old one
    assert _lrs(opt) == [pytest.approx(0.15)]


def test_set_lr_from_zero_under_a_scheduler_uses_the_new_value_as_the_base():
    opt = _sgd(0.1)
    sched = lr_scheduler.LambdaLR(opt, lambda epoch: min(1.0, epoch / 4))  # warm-up from 0
    assert _lrs(opt) == [0.0]
    _set("lr", 0.2, [opt], [sched])
    assert _lrs(opt) == [0.2]
    for _ in range(4):
        opt.step()
        sched.step()
    assert _lrs(opt) == [pytest.approx(0.2)]
    assert not any(math.isnan(v) for v in sched.base_lrs)
