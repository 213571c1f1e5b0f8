"""Behaviour of the experiment loggers, checked through the files they write."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine._errors import ConfigError
from engine.loggers import CSVLogger, JSONLinesLogger, Logger, TensorBoardLogger


def _accumulator(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def _scalars(ea, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in ea.Scalars(tag)]


def _hparams_data(ea):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    return {tag: plugin_data_pb2.HParamsPluginData.FromString(raw) for tag, raw in content.items()}


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _small_model():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))


def test_public_api_is_the_four_logger_classes():
    import engine.loggers

    assert sorted(engine.loggers.__all__) == ["CSVLogger", "JSONLinesLogger", "Logger", "TensorBoardLogger"]
    assert all(issubclass(cls, Logger) for cls in (CSVLogger, JSONLinesLogger, TensorBoardLogger))


def test_import_does_not_load_tensorboard():
    code = (
        "import sys, engine.loggers; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] == 'tensorboard' or m.startswith('torch.utils.tensorboard')))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tensorboard_scalars_read_back_with_logged_steps_and_values(tmp_path):
    logger = TensorBoardLogger()
    logger.bind(tmp_path)
    logger.log_metrics({"train/loss": 1.5, "lr": 0.25}, step=0)
    logger.log_metrics({"train/loss": 0.75}, step=10)
    logger.log_metrics({"train/loss": 0.5, "lr": 0.125}, step=20)
    logger.finalize("success", {})

    ea = _accumulator(tmp_path / "tensorboard")
    assert _scalars(ea, "train/loss") == [(0, 1.5), (10, 0.75), (20, 0.5)]
    assert _scalars(ea, "lr") == [(0, 0.25), (20, 0.125)]


def test_tensorboard_default_dir_is_run_dir_tensorboard(tmp_path):
    logger = TensorBoardLogger()
    logger.bind(tmp_path)
    assert logger.log_dir == tmp_path / "tensorboard"


def test_tensorboard_bind_with_explicit_save_dir_uses_it(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path / "mine")
    logger.bind(tmp_path / "run")
    logger.log_metrics({"x": 1.0}, step=1)
    logger.finalize("success", {})

    assert logger.log_dir == tmp_path / "mine"
    assert list((tmp_path / "mine").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run").exists()


def test_tensorboard_hparams_written_with_final_metrics_in_same_dir(tmp_path):
    logger = TensorBoardLogger()
    logger.bind(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "optim": {"name": "adam", "betas": (0.9, 0.99)}, "layers": 3})
    logger.log_metrics({"val/loss": 0.5}, step=7)
    logger.finalize("success", {"val/loss": 0.25})

    run_dir = tmp_path / "tensorboard"
    assert [p for p in run_dir.iterdir() if p.is_dir()] == []
    ea = _accumulator(run_dir)
    data = _hparams_data(ea)
    metric_tags = [m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos]
    assert metric_tags == ["final/val/loss"]
    hp = data["_hparams_/session_start_info"].session_start_info.hparams
    assert hp["lr"].number_value == 0.1
    assert hp["optim/name"].string_value == "adam"
    assert hp["optim/betas"].string_value == "(0.9, 0.99)"
    assert hp["layers"].number_value == 3
    assert _scalars(ea, "final/val/loss") == [(7, 0.25)]


def test_tensorboard_hparams_session_records_run_status(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    logger = TensorBoardLogger(save_dir=tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.finalize("failed", {"loss": 1.0})

    end = _hparams_data(_accumulator(tmp_path))["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.STATUS_FAILURE


def test_tensorboard_interrupted_run_finalizes_with_unknown_status(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    logger = TensorBoardLogger(save_dir=tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.finalize("interrupted", {"loss": 1.0})

    end = _hparams_data(_accumulator(tmp_path))["_hparams_/session_end_info"].session_end_info
    assert end.status == api_pb2.STATUS_UNKNOWN


def test_tensorboard_graph_logged_when_enabled(tmp_path):
    import torch

    logger = TensorBoardLogger(save_dir=tmp_path, log_graph=True)
    logger.log_graph(_small_model(), torch.zeros(2, 3))
    logger.finalize("success", {})

    assert _accumulator(tmp_path).Tags()["graph"] is True


def test_tensorboard_graph_skipped_when_disabled(tmp_path):
    import torch

    logger = TensorBoardLogger(save_dir=tmp_path)
    logger.log_graph(_small_model(), torch.zeros(2, 3))
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success", {})

    assert _accumulator(tmp_path).Tags()["graph"] is False


def test_tensorboard_graph_trace_failure_warns_once(tmp_path, traindeck_log, capsys):
    import torch

    logger = TensorBoardLogger(save_dir=tmp_path, log_graph=True)
    logger.log_graph(_small_model(), torch.zeros(2, 5))
    logger.log_graph(_small_model(), torch.zeros(2, 5))
    logger.finalize("success", {})

    warnings = [r for r in traindeck_log.records if r.name == "traindeck" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "graph" in warnings[0].getMessage()
    assert capsys.readouterr().out == ""


def test_tensorboard_resume_purges_steps_after_restored_step(tmp_path):
    first = TensorBoardLogger(save_dir=tmp_path)
    for step in range(3):
        first.log_metrics({"loss": float(step)}, step=step)
    state = first.state_dict()
    for step in range(3, 6):
        first.log_metrics({"loss": float(step)}, step=step)
    first.finalize("interrupted", {})
    time.sleep(1.1)  # event files are ordered by the second they were created in, as after a real restart

    second = TensorBoardLogger(save_dir=tmp_path)
    second.load_state_dict(state)
    second.log_metrics({"loss": 30.0}, step=3)
    second.finalize("success", {})

    assert _scalars(_accumulator(tmp_path), "loss") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]


def test_tensorboard_records_carry_the_checksums_tensorboard_computes():
    import struct

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    from engine.loggers._event_file import frame_record

    for data in (b"", b"x", bytes(range(256)) * 5):
        record = frame_record(data)
        header, header_crc = record[:8], struct.unpack("<I", record[8:12])[0]
        assert struct.unpack("<Q", header)[0] == len(data)
        assert header_crc == masked_crc32c(header)
        assert record[12:-4] == data
        assert struct.unpack("<I", record[-4:])[0] == masked_crc32c(data)


@pytest.mark.parametrize("step", [0, 7, 300, 2**40, -1])
def test_tensorboard_scalar_events_are_the_bytes_the_event_proto_serialises_to(step):
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from engine.loggers._event_file import scalars_event

    metrics = {"loss": 0.25, "lr": 3e-4, "big": 1e39, "tiny": -1e-50, "inf": float("-inf"), "é/ü": 1.0,
               "x" * 200: 2.0, **{f"m{i:02d}": i / 7 for i in range(40)}}
    expected = Event(wall_time=1.7e9 + 0.123, step=step, summary=Summary(
        value=[Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()])).SerializeToString()
    assert scalars_event(metrics, step, 1.7e9 + 0.123) == expected

    nan = Event.FromString(scalars_event({"nan": float("nan")}, step, 0.0))
    assert math.isnan(nan.summary.value[0].simple_value)


def test_tensorboard_scalars_reach_disk_within_flush_secs_while_the_run_goes_on(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, flush_secs=0.2)
    logger.log_metrics({"loss": 1.0}, step=0)
    time.sleep(0.25)
    logger.log_metrics({"loss": 0.5}, step=1)

    assert _scalars(_accumulator(tmp_path), "loss") == [(0, 1.0), (1, 0.5)]
    logger.log_metrics({"loss": 0.25}, step=2)
    logger.flush()
    assert _scalars(_accumulator(tmp_path), "loss")[-1] == (2, 0.25)
    logger.finalize("success", {})


def test_tensorboard_rejects_non_positive_flush_secs():
    with pytest.raises(ConfigError):
        TensorBoardLogger(flush_secs=0)


def test_csv_writes_step_then_metric_columns(tmp_path):
    logger = CSVLogger()
    logger.bind(tmp_path)
    logger.log_metrics({"loss": 0.5, "acc": 0.75}, step=1)
    logger.log_metrics({"loss": 0.25, "acc": 1.0}, step=2)
    logger.finalize("success", {})

    assert _read_csv(tmp_path / "csv" / "metrics.csv") == [
        ["step", "loss", "acc"],
        ["1", "0.5", "0.75"],
        ["2", "0.25", "1.0"],
    ]


def test_csv_header_widening_keeps_old_rows_with_empty_cells(tmp_path):
    logger = CSVLogger(save_dir=tmp_path, flush_every=1)
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.log_metrics({"loss": 0.25, "val_loss": 0.75}, step=2)
    logger.log_metrics({"loss": 0.125}, step=3)
    logger.finalize("success", {})

    assert _read_csv(tmp_path / "metrics.csv") == [
        ["step", "loss", "val_loss"],
        ["1", "0.5", ""],
        ["2", "0.25", "0.75"],
        ["3", "0.125", ""],
    ]


def test_csv_buffers_rows_until_flush_every(tmp_path):
    logger = CSVLogger(save_dir=tmp_path, flush_every=3)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_metrics({"loss": 2.0}, step=2)
    assert not (tmp_path / "metrics.csv").exists()
    logger.log_metrics({"loss": 3.0}, step=3)

    assert len(_read_csv(tmp_path / "metrics.csv")) == 4


def test_csv_flush_writes_buffered_rows(tmp_path):
    logger = CSVLogger(save_dir=tmp_path)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.flush()

    assert _read_csv(tmp_path / "metrics.csv") == [["step", "loss"], ["1", "1.0"]]


def test_csv_continues_existing_file_and_drops_rows_after_restored_step(tmp_path):
    first = CSVLogger(save_dir=tmp_path, flush_every=1)
    first.log_metrics({"loss": 1.0}, step=1)
    state = first.state_dict()
    first.log_metrics({"loss": 2.0}, step=2)
    first.finalize("interrupted", {})

    second = CSVLogger(save_dir=tmp_path)
    second.load_state_dict(state)
    second.log_metrics({"loss": 20.0, "acc": 0.5}, step=2)
    second.finalize("success", {})

    assert _read_csv(tmp_path / "metrics.csv") == [
        ["step", "loss", "acc"],
        ["1", "1.0", ""],
        ["2", "20.0", "0.5"],
    ]


def test_csv_hparams_written_as_json(tmp_path):
    logger = CSVLogger(save_dir=tmp_path)
    logger.log_hyperparams({"lr": 0.1, "optim": {"name": "adam"}, "path": tmp_path, "eps": float("inf")})

    assert json.loads((tmp_path / "hparams.json").read_text()) == {
        "lr": 0.1,
        "optim": {"name": "adam"},
        "path": str(tmp_path),
        "eps": "inf",
    }


def test_csv_rejects_metric_named_step(tmp_path):
    from engine._errors import MetricError

    with pytest.raises(MetricError):
        CSVLogger(save_dir=tmp_path).log_metrics({"step": 1.0}, step=1)


def test_csv_rejects_non_positive_flush_every():
    with pytest.raises(ConfigError):
        CSVLogger(flush_every=0)


def test_unbound_logger_without_dir_raises_config_error():
    with pytest.raises(ConfigError):
        CSVLogger().log_metrics({"loss": 1.0}, step=0)
    with pytest.raises(ConfigError):
        JSONLinesLogger().log_metrics({"loss": 1.0}, step=0)
    with pytest.raises(ConfigError):
        TensorBoardLogger().log_metrics({"loss": 1.0}, step=0)


def test_jsonl_lines_parse_with_step_time_and_metrics(tmp_path):
    logger = JSONLinesLogger()
    logger.bind(tmp_path)
    logger.log_metrics({"loss": 0.5, "acc": 0.75}, step=3)
    logger.log_metrics({"loss": 0.25}, step=4)
    logger.finalize("success", {})

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["metrics"]) for r in records] == [
        (3, {"loss": 0.5, "acc": 0.75}),
        (4, {"loss": 0.25}),
    ]
    assert all(isinstance(r["time"], float) for r in records)


def test_jsonl_non_finite_values_round_trip_as_strings(tmp_path):
    path = tmp_path / "m.jsonl"
    logger = JSONLinesLogger(path)
    logger.log_metrics({"a": float("nan"), "b": float("inf"), "c": float("-inf")}, step=0)
    logger.finalize("success", {})

    line = path.read_text().strip()
    record = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert record["metrics"] == {"a": "nan", "b": "inf", "c": "-inf"}
    values = {k: float(v) for k, v in record["metrics"].items()}
    assert math.isnan(values["a"]) and values["b"] == math.inf and values["c"] == -math.inf


def test_jsonl_lines_visible_before_flush(tmp_path):
    logger = JSONLinesLogger(tmp_path / "m.jsonl")
    logger.log_metrics({"loss": 1.0}, step=0)

    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1
    logger.finalize("success", {})


def test_jsonl_resume_appends_to_existing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        logger = JSONLinesLogger()
        logger.bind(tmp_path)
        logger.log_metrics({"loss": float(step)}, step=step)
        logger.finalize("success", {})

    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
