"""DataModule: the data side of an experiment, kept apart from the model."""

from __future__ import annotations

from typing import Any

from engine._hparams import AttributeDict, collect_init_args

__all__ = ["DataModule"]


class DataModule:
    """Builds datasets in ``setup(stage)`` and hands out loaders from ``*_dataloader()``.

    ``stage`` is "fit", "validate", "test" or "predict". A loader method left undefined
    means that stage has no data.
    """

    def __init__(self) -> None:
        self._hparams = AttributeDict()

    def save_hyperparameters(self, ignore: list[str] | None = None) -> None:
        import inspect

        frame = inspect.currentframe()
        assert frame is not None and frame.f_back is not None
        self._hparams.update(collect_init_args(frame.f_back, set(ignore or ())))

    @property
    def hparams(self) -> AttributeDict:
        return self._hparams

    def prepare_data(self) -> None:
        """Download or write data once per machine; called before ``setup``."""

    def setup(self, stage: str) -> None:
        """Build the datasets for ``stage``."""

    def teardown(self, stage: str) -> None:
        """Release what ``setup`` built."""

    def train_dataloader(self) -> Any:
        return None

    def val_dataloader(self) -> Any:
        return None

    def test_dataloader(self) -> Any:
        return None

    def predict_dataloader(self) -> Any:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
