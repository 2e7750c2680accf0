"""End-to-end runs of granet-train: the run directory, GraNet reaching its density, exact resume after
SIGKILL, two torchrun processes holding identical masks, CIFAR from the pickle format."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from granet_kernels.train import cli
from granet_kernels.train.checkpoint import save_checkpoint

from train_testing import REPO, cli_env, engine_available, needs_engine, run_cli, write_cifar

SUMMARY_KEYS = ("val_accuracy", "test_accuracy", "final_density", "train_flops_x_dense", "inference_flops_x_dense",
                "step_time_x_dense")
QUICK = ["--no-progress", "--threads", "1", "--time-steps", "2"]


def test_dense_run_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "dense"
    code = cli.main(["--method", "dense", "--epochs", "2", "--mlp-hidden", "64", "--checkpoint-every", "1",
                     "--out", str(out), *QUICK])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed and "time per training step" in printed and str(out) in printed
    for name in ("config.yaml", "config.json", "metrics.csv", "metrics.json", "summary.json", "checkpoint.pt",
                 "accuracy.png", "loss.png", "density.png", "train.log"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert isinstance(summary[key], float), key
    assert summary["final_density"] == 1.0 and summary["train_flops_x_dense"] == 1.0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "density", "lr"} <= set(rows[0])
    assert json.loads((out / "config.json").read_text())["method"] == "dense"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@needs_engine
def test_granet_run_reaches_the_target_density(tmp_path, capsys):
    out = tmp_path / "granet"
    code = cli.main(["--epochs", "6", "--mlp-hidden", "256", "--update-frequency", "4", "--final-density", "0.1",
                     "--out", str(out), *QUICK])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["final_density"] - 0.1) < 0.005
    for key in SUMMARY_KEYS:
        assert isinstance(summary[key], float) and summary[key] > 0, key
    assert summary["inference_flops_x_dense"] < 0.2 and summary["train_flops_x_dense"] < 0.6
    assert abs(summary["inference_flops_x_dense_measured"] - summary["inference_flops_x_dense"]) < 0.02
    assert summary["events"] > 3 and set(summary["layer_densities"]) == {"net.1", "net.4", "net.7"}
    assert summary["val_accuracy"] > 0.8
    assert (out / "layer_density.png").is_file() and (out / "density.png").stat().st_size > 1000
    trace = json.loads((out / "metrics.json").read_text())["density_trace"]
    assert trace[0][1] == pytest.approx(0.5, abs=0.01) and trace[-1][1] == pytest.approx(0.1, abs=0.005)
    assert "final density" in capsys.readouterr().out


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def _final_metrics(out):
    s = json.loads((out / "summary.json").read_text())
    keys = ["val_accuracy", "test_accuracy", "final_density", "train_flops_x_dense", "inference_flops_x_dense",
            "val_loss", "test_loss", "steps", "events"]
    rows = [{k: v for k, v in r.items() if "time" not in k} for r in json.loads((out / "metrics.json").read_text())["epochs"]]
    return {k: s[k] for k in keys}, rows


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL after the first checkpoint, --resume, and the run ends exactly as an uninterrupted one."""
    method = "granet" if engine_available() else "dense"
    args = ["--method", method, "--epochs", "8", "--mlp-hidden", "256", "--update-frequency", "5",
            "--dropout", "0.1", "--checkpoint-every", "1", "--no-plots", "--no-progress", "--threads", "1",
            "--time-steps", "0"]
    ref = run_cli(args + ["--out", tmp_path / "ref"])
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "granet_kernels.train", *args, "--out", str(killed)], cwd=REPO,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()  # it did not finish
    done_before = len(json.loads((killed / "metrics.json").read_text())["epochs"])
    assert done_before < 8

    res = run_cli(args + ["--out", killed, "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed" in res.stdout
    assert _final_metrics(killed) == _final_metrics(tmp_path / "ref")


@needs_engine
def test_torchrun_two_cpu_processes_hold_identical_masks(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "granet_kernels.train", "--epochs", "3", "--mlp-hidden", "128", "--update-frequency", "3",
           "--final-density", "0.1", "--device", "cpu", "--save-rank-masks", "--no-progress", "--time-steps", "2",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("validation accuracy") == 1  # only rank 0 prints the table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and abs(summary["final_density"] - 0.1) < 0.005
    r0 = torch.load(out / "masks_rank0.pt", weights_only=False)
    r1 = torch.load(out / "masks_rank1.pt", weights_only=False)
    assert r0["step"] == r1["step"] and r0["masks"].keys() == r1["masks"].keys()
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for key in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][key], r1["state_dict"][key]), key
    events = summary["events"]
    assert events >= 3


def test_cifar_run_from_the_pickle_format(tmp_path, capsys):
    write_cifar(tmp_path / "data", "cifar10", n_per_batch=16, n_test=16)
    method = "granet" if engine_available() else "dense"
    out = tmp_path / "run"
    code = cli.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--model", "cnn", "--method", method,
                     "--epochs", "2", "--batch-size", "16", "--update-frequency", "2", "--val-size", "16",
                     "--out", str(out), "--no-plots", *QUICK])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar10" and summary["steps"] == 2 * 4


def test_resuming_a_finished_run_only_reports(tmp_path, capsys):
    out = tmp_path / "done"
    args = ["--method", "dense", "--epochs", "1", "--mlp-hidden", "32", "--out", str(out), "--no-plots", *QUICK]
    assert cli.main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["val_accuracy"] == first["val_accuracy"] and again["steps"] == first["steps"]
    assert "resumed" in capsys.readouterr().out
