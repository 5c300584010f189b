"""Read back what a tracker wrote, from its files alone, so the tracking tests check what lands on disk.

    tensorboard_scalars(root)   {tag: [(step, value), ...]} from every event file under root
    wandb_history(root)         [{key: value, "_step": step}, ...] from every offline .wandb file under root
    mlflow_metrics(root)        {key: [(step, value), ...]} from an MLflow file store (root/mlruns)

A .wandb file is W&B's record log (the LevelDB log format: a 7-byte header, then 32 KiB blocks of
records, each a 4-byte checksum, a 2-byte length, a 1-byte type — full, first, middle or last — and
its bytes); each record is a wandb_internal_pb2.Record. wandb 0.31 ships no Python reader for it.
"""

from __future__ import annotations

import json
from pathlib import Path


def tensorboard_scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(Path(root).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return out


def _wandb_records(path: Path):
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk


def wandb_history(root: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(Path(root).rglob("*.wandb")):
        for raw in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def mlflow_metrics(root: Path) -> dict[str, list[tuple[int, float]]]:
    """Each metric is a text file runs/<experiment>/<run>/metrics/<key> of 'timestamp value step' lines."""
    out: dict[str, list[tuple[int, float]]] = {}
    for metrics_dir in Path(root).glob("mlruns/*/*/metrics"):
        for file in metrics_dir.rglob("*"):
            if file.is_file():
                key = str(file.relative_to(metrics_dir))
                for line in file.read_text().splitlines():
                    _, value, step = line.split()
                    out.setdefault(key, []).append((int(step), float(value)))
    return out
