"""Checkpoints and run-directory files, written atomically (temp file in the same folder, fsync,
os.replace): a run killed at any moment leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile

import torch

from granet_kernels.train.config import ConfigError

CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_checkpoint(state: dict, path: str) -> None:
    _atomic_write(path, lambda fh: torch.save({"format_version": FORMAT_VERSION, **state}, fh))


def load_checkpoint(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ConfigError(f"cannot read checkpoint {path}: {' '.join(str(error).split())[:200]}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} is not a granet-train checkpoint (format {FORMAT_VERSION})")
    return state


def find_checkpoint(resume: str, out: str) -> str:
    """The checkpoint file for --resume: `resume` may be "auto" (the run directory --out), a run
    directory or a checkpoint file."""
    target = out if resume in ("auto", "", None) else resume
    path = os.path.join(target, CHECKPOINT) if os.path.isdir(target) else target
    if not os.path.isfile(path):
        raise ConfigError(f"nothing to resume: {path} does not exist (a run writes it every --checkpoint-every "
                          "epochs); start without --resume or point --out/--resume at a run directory")
    return path


def write_json(path: str, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def write_text(path: str, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def write_csv(path: str, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    write_text(path, buf.getvalue())


def check_writable(out: str) -> None:
    """Create the run directory and write a probe file; ConfigError if that fails."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot write to the output directory {out!r} ({reason}); choose another --out") from None
