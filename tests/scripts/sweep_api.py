"""The Python sweep API on the regression of sweep_train.py: a grid over `offset`, pruned above 50.

`python sweep_api.py ROOT_DIR` runs two trials (offset 0 and 100) and prints the result as JSON.
"""

from __future__ import annotations

import json
import sys

import optuna
import torch

from engine import sweep
from sweep_train import DEFAULTS, Regression, RegressionData


def build(params: dict) -> tuple[Regression, RegressionData]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Regression({**DEFAULTS, **params}, sleep=0.02), RegressionData()


if __name__ == "__main__":
    result = sweep(build, {"offset": [0.0, 100.0], "lr": "log:0.01:0.1"}, n_trials=2, name="api",
                   root_dir=sys.argv[1], pruner=optuna.pruners.ThresholdPruner(upper=50.0),
                   sampler=optuna.samplers.GridSampler({"offset": [0.0, 100.0], "lr": [0.05]}),
                   trainer_kwargs={"max_epochs": 20, "enable_progress_bar": False, "enable_checkpointing": False,
                                   "log_every_n_steps": 4})
    print(json.dumps({"state": result.state, "best_params": result.best_params, "best_value": result.best_value,
                      "trials": result.trials}))
