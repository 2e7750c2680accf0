"""Configuration: defaults, presets, config files, precedence, and the one-line errors for bad input."""

import json
import os

import pytest

from granet_kernels.train import cli
from granet_kernels.train.config import PRESETS, ConfigError, TrainConfig, preset_values

from train_testing import run_cli


def resolve(*argv):
    cfg, state, _ = cli.resolve([str(a) for a in argv])
    return cfg


def test_defaults_are_the_digits_granet_run():
    cfg = resolve()
    assert (cfg.dataset, cfg.resolved_model, cfg.method) == ("digits", "mlp", "granet")
    assert cfg.final_density == 0.05 and cfg.mlp_hidden >= 1024
    assert cfg.resolved_final_prune_epoch == cfg.epochs / 2
    assert cfg.out == os.path.join("runs", "digits-mlp-granet-d0.05-s0")


def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dataset", "--data-dir", "--model", "--method", "--init-density", "--final-density", "--sparse-init",
                 "--update-frequency", "--prune-rate", "--init-prune-epoch", "--final-prune-epoch", "--epochs",
                 "--batch-size", "--lr", "--seed", "--device", "--out", "--resume", "--config", "--preset",
                 "--lr-schedule", "--warmup-epochs", "--optimizer", "--amp", "--checkpoint-every"):
        assert flag in text, flag
    assert "(default: 0.05)" in text and "(default: granet)" in text and "(default: digits)" in text


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_and_validates(name):
    cfg = resolve("--preset", name)
    cfg.validate()
    assert cfg.preset == name


def test_paper_presets_hold_the_paper_settings():
    c10 = resolve("--preset", "cifar10-resnet50-s2s")
    assert (c10.dataset, c10.resolved_model, c10.epochs, c10.batch_size, c10.lr) == ("cifar10", "resnet50", 160, 128, 0.1)
    assert (c10.lr_schedule, c10.lr_milestones, c10.weight_decay) == ("step", [80, 120], 5e-4)
    assert (c10.init_density, c10.final_density, c10.update_frequency, c10.final_prune_epoch) == (0.5, 0.05, 1000, 80)
    assert c10.nesterov and c10.momentum == 0.9 and c10.sparse_init == "ERK"
    assert resolve("--preset", "cifar10-resnet50-d2s").init_density == 1.0
    c100 = resolve("--preset", "cifar100-vgg19")
    assert (c100.dataset, c100.resolved_model, c100.final_density, c100.init_density) == ("cifar100", "vgg19", 0.02, 0.5)
    assert resolve("--preset", "cifar100-vgg19-d2s").init_density == 1.0
    im = resolve("--preset", "imagenet-resnet50-s2s")
    assert (im.epochs, im.warmup_epochs, im.lr_milestones, im.label_smoothing, im.weight_decay) == (100, 5, [30, 60, 90], 0.1, 1e-4)
    assert (im.final_prune_epoch, im.update_frequency, im.final_density, im.bn_weight_decay) == (30, 4000, 0.2, False)
    assert resolve("--preset", "imagenet-resnet50-d2s").init_density == 1.0


def test_precedence_defaults_preset_file_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: cifar10-resnet50-s2s\nlr: 0.05\nfinal-density: 0.1\nlr_milestones: [10, 20]\n")
    cfg = resolve("--config", yaml_file, "--lr", "0.02")
    assert cfg.dataset == "cifar10" and cfg.epochs == 160  # preset
    assert cfg.final_density == 0.1 and cfg.lr_milestones == [10, 20]  # file over preset
    assert cfg.lr == 0.02  # flag over file
    toml_file = tmp_path / "run.toml"
    toml_file.write_text('[train]\nmethod = "gmp"\nepochs = 12\nglobal-prune = false\nlr-milestones = "4,8"\n')
    cfg = resolve("--config", toml_file, "--lr-schedule", "step")
    assert (cfg.method, cfg.epochs, cfg.global_prune, cfg.lr_milestones) == ("gmp", 12, False, [4, 8])
    assert resolve("--no-global-prune").global_prune is False


def test_the_run_directorys_config_yaml_is_a_valid_config_file(tmp_path):
    from granet_kernels.train.loop import _write_yaml
    cfg = resolve("--epochs", 7, "--method", "gmp", "--out", tmp_path / "a")
    _write_yaml(str(tmp_path / "config.yaml"), cfg.to_dict())
    again = resolve("--config", tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_print_config(capsys):
    assert cli.main(["--print-config", "--preset", "cifar100-vgg19", "--seed", "3"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert values["model"] == "vgg19" and values["seed"] == 3


BAD = [
    (["--model", "transformer"], "unknown model 'transformer'"),
    (["--model", "vgg19"], "does not fit dataset 'digits'"),
    (["--final-density", "0"], "--final-density must be in (0, 1]"),
    (["--final-density", "1.5"], "--final-density must be in (0, 1]"),
    (["--init-density", "-0.1"], "--init-density must be in (0, 1]"),
    (["--init-density", "0.1", "--final-density", "0.2"], "must not exceed --init-density"),
    (["--init-prune-epoch", "10", "--final-prune-epoch", "5"], "must not be before --init-prune-epoch"),
    (["--final-prune-epoch", "500"], "must not be after the last epoch"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--epochs", "three"], "bad value 'three'"),
    (["--method", "magic"], "unknown method 'magic'"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--config", "/nonexistent/x.yaml"], "config file '/nonexistent/x.yaml' not found"),
    (["--lr-milestones", "5,500", "--lr-schedule", "step"], "--lr-milestones must be epochs"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--epochs", "2", "--update-frequency", "500"], "no pruning event fits"),
    (["--amp", "bf16"], "--amp bf16 works with --method dense only"),
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number"),
    (["--init-prune-epoch", "nan"], "--init-prune-epoch must be a finite number"),
    (["--val-size", "5"], "the stratified split needs at least 10"),
    (["--val-size", "0.999"], "the stratified split needs at least 10"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_configuration_is_one_line_before_training(argv, needle, capsys, tmp_path):
    code = cli.main(argv + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("granet-train: error: "), err
    assert needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_missing_data_folder_says_what_to_put_where(capsys, tmp_path):
    code = cli.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "cifar-10-batches-py" in err and "data_batch_1" in err and "--data-dir" in err
    code = cli.main(["--dataset", "cifar100", "--model", "vgg19", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cifar-100-python" in err
    code = cli.main(["--dataset", "imagenet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train/<class>" in err and err.count("\n") == 0


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = cli.main(["--method", "dense", "--out", str(blocker / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "cannot write to the output directory" in err and "--out" in err


def test_resume_without_checkpoint_and_with_changed_settings(capsys, tmp_path):
    code = cli.main(["--out", str(tmp_path / "none"), "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nothing to resume" in err
    from granet_kernels.train.checkpoint import save_checkpoint
    (tmp_path / "old").mkdir()
    cfg = TrainConfig(out=str(tmp_path / "old"), lr=0.1)
    save_checkpoint({"config": cfg.to_dict()}, str(tmp_path / "old" / "checkpoint.pt"))
    code = cli.main(["--out", str(tmp_path / "old"), "--resume", "--lr", "0.05"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--lr 0.05 (checkpoint: 0.1)" in err and err.count("\n") == 0
    # runtime options may change on resume; the saved settings are kept
    cfg2, state, _ = cli.resolve(["--resume", str(tmp_path / "old"), "--no-progress"])
    assert cfg2.lr == 0.1 and cfg2.progress is False and cfg2.out == str(tmp_path / "old")


def test_error_exit_code_and_no_traceback_from_the_console(tmp_path):
    proc = run_cli(["--init-prune-epoch", 9, "--final-prune-epoch", 3, "--out", tmp_path / "x"], timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--final-prune-epoch (3) must not be before --init-prune-epoch (9)" in lines[0]


def test_preset_values_are_copies():
    a = preset_values("cifar10-resnet50")
    a["lr_milestones"].append(1)
    assert preset_values("cifar10-resnet50")["lr_milestones"] == [80, 120]
    with pytest.raises(ConfigError):
        preset_values("unknown")
