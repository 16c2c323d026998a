"""``fastcnn train``: smoke runs on the built-in dataset and on an ImageFolder, checkpoint, early stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_refused, run_fastcnn
from PIL import Image

from fastcnn import models
from fastcnn.tools import cli, train


def _args(tmp_path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--limit",
        "48",
        "--batch-size",
        "16",
        "--image-size",
        "32",
        "--checkpoint",
        str(tmp_path / "ckpt.pt"),
        "--no-progress",
        *extra,
    ]


def _image_folder(root, classes=("cat", "dog"), per_class: int = 4):
    """A tiny ImageFolder of random 20x24 RGB PNGs under ``root``."""
    rng = np.random.default_rng(0)
    for cls in classes:
        folder = root / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_train_builtin_dataset_writes_checkpoint(tmp_path, capsys):
    assert cli.main(_args(tmp_path, "--data", "digits")) == 0
    assert "epoch   1" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"state_dict", "optimizer", "epoch", "best_metric", "classes"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and 0.0 <= ckpt["best_metric"] <= 1.0 and len(ckpt["classes"]) == 10
    assert ckpt["optimizer"]["param_groups"]
    model = models.resnet18(num_classes=10, weights=tmp_path / "ckpt.pt")  # loads straight back
    assert model.fc.out_features == 10


def test_train_image_folder_with_pretrained_weights_and_frozen_backbone(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    weights = tmp_path / "imagenet_like.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # 1000-class head
    args = _args(tmp_path, "--data", str(tmp_path / "data"), "--weights", str(weights), "--freeze-backbone")
    assert cli.main(args) == 0
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["classes"] == ["cat", "dog"] and ckpt["state_dict"]["fc.weight"].shape == (2, 512)
    assert torch.equal(ckpt["state_dict"]["conv1.weight"], torch.load(weights)["conv1.weight"])


def test_early_stopping(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: (1.0, 0.5))  # validation never improves
    config = train.TrainConfig(
        epochs=5, patience=2, limit=32, batch_size=16, checkpoint=str(tmp_path / "c.pt"), progress=False
    )
    result = train.run(config, log=lambda line: None)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert len(result.history) == 3


def test_bad_arguments(tmp_path, capsys):
    assert cli.main(_args(tmp_path, "--data", str(tmp_path / "missing"))) == 2
    assert "not a folder" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(_args(tmp_path, "--device", "cuda")) == 2
    with pytest.raises(SystemExit):
        cli.main(_args(tmp_path, "--model", "alexnet"))


@pytest.mark.parametrize("batchnorm", ["train", "frozen"])
def test_train_converted_torchvision_model_with_batchnorm_modes(tmp_path, batchnorm):
    """A torchvision classifier converted to fastcnn layers trains; with --batchnorm frozen its running
    statistics stay as they were loaded, with train they move."""
    config = train.TrainConfig(
        model="torchvision.mobilenet_v2",
        epochs=1,
        limit=48,
        batch_size=16,
        checkpoint=str(tmp_path / "ckpt.pt"),
        progress=False,
        batchnorm=batchnorm,
    )
    initial = train.build_model(config, 10)
    assert type(initial.features[0][1]).__module__ == "fastcnn.nn"
    train.run(config, log=lambda line: None)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["state_dict"]
    moved = not torch.equal(state["features.0.1.running_mean"], initial.features[0][1].running_mean)
    assert moved == (batchnorm == "train")
    with pytest.raises(ValueError, match="torchvision"):
        train.build_model(train.TrainConfig(model="torchvision.not_a_model"), 10)


def test_unreadable_image_is_one_line_naming_the_file(tmp_path):
    data = _image_folder(tmp_path / "data")
    good = (data / "cat" / "0.png").read_bytes()
    (data / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "dog" / "notes.png").write_text("not an image")
    # Through a DataLoader worker, whose exception arrives wrapped in the worker's traceback.
    result = run_fastcnn(*_args(tmp_path, "--data", str(data), "--workers", "1"))
    assert_refused(result, "cannot read image", code=1)
    line = result.stderr.strip().splitlines()[-1]
    assert "truncated.png" in line or "notes.png" in line
    assert "--skip-bad-images" in line

    result = run_fastcnn(*_args(tmp_path, "--data", str(data), "--skip-bad-images"))
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert "skipped 2 unreadable images:" in warning
    assert "truncated.png" in warning and "notes.png" in warning
    assert "(6 train / 2 val" in result.stdout  # 8 readable images, 2 split off for validation


def test_one_class_is_refused_before_training(tmp_path):
    data = _image_folder(tmp_path / "data", classes=("cat",))
    result = run_fastcnn(*_args(tmp_path, "--data", str(data)))
    assert_refused(result, "1 class ('cat')")
    assert "at least two" in result.stderr and "epoch" not in result.stdout
    assert not (tmp_path / "ckpt.pt").exists()


def test_unknown_device_and_cpu_amp_are_refused(tmp_path):
    assert_refused(
        run_fastcnn(*_args(tmp_path, "--device", "tpu")), "--device must be auto, cpu or cuda; got 'tpu'"
    )
    assert_refused(run_fastcnn(*_args(tmp_path, "--device", "cpu", "--amp")), "--amp needs a CUDA device")


def test_image_size_below_one_is_refused_naming_the_flag(tmp_path):
    assert_refused(run_fastcnn(*_args(tmp_path, "--image-size", "0")), "--image-size must be >= 1, got 0")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "0", "--epochs must be >= 1"),
        ("--batch-size", "0", "--batch-size must be >= 1"),
        ("--lr", "0", "--lr must be > 0"),
        ("--lr", "nan", "--lr must be > 0"),
    ],
)
def test_bad_numbers_are_refused_naming_the_flag(tmp_path, capsys, flag, value, message):
    assert cli.main(_args(tmp_path, flag, value)) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 10)", "(default: 0.01)", "(default: 32)", "--resume", "--skip-bad-images"):
        assert default in help_text, default


def test_freeze_backbone_without_weights_warns(tmp_path, capsys):
    assert cli.main(_args(tmp_path, "--data", "digits", "--freeze-backbone")) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "--freeze-backbone" in line]
    assert "without --weights" in warning


def test_resume_continues_from_the_checkpoint(tmp_path, capsys):
    assert cli.main(_args(tmp_path, "--data", "digits")) == 0
    first = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    capsys.readouterr()
    resumed = _args(tmp_path, "--data", "digits", "--resume", str(tmp_path / "ckpt.pt"))
    resumed[resumed.index("--epochs") + 1] = "3"
    assert cli.main(resumed) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "after epoch 1" in out
    assert "epoch   1" not in out and "epoch   2" in out and "epoch   3" in out
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["epoch"] in (1, 2, 3) and state["best_metric"] >= first["best_metric"]
    # A schedule that continues: the learning rate of epoch 2 is not the first epoch's again.
    if state["epoch"] > 1:
        assert state["scheduler"]["last_epoch"] == state["epoch"]


def test_resume_refuses_a_missing_or_mismatched_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    assert cli.main(_args(tmp_path, "--data", "digits", "--resume", str(tmp_path / "none.pt"))) == 2
    assert "--resume: no checkpoint file" in capsys.readouterr().err
    assert cli.main(_args(tmp_path, "--data", "digits")) == 0
    state = torch.load(ckpt, weights_only=True)
    more = ["--epochs", "2", "--resume", str(ckpt)]
    torch.save({**state, "model_name": "resnet34"}, tmp_path / "other_model.pt")
    capsys.readouterr()
    assert cli.main(_args(tmp_path, "--data", "digits", *more[:3], str(tmp_path / "other_model.pt"))) == 2
    assert "holds a resnet34, not --model resnet18" in capsys.readouterr().err
    torch.save({**state, "classes": ["a", "b"]}, tmp_path / "other_classes.pt")
    assert cli.main(_args(tmp_path, "--data", "digits", *more[:3], str(tmp_path / "other_classes.pt"))) == 2
    assert "was trained on classes ['a', 'b']" in capsys.readouterr().err
    assert cli.main(_args(tmp_path, "--data", "digits", "--resume", str(ckpt))) == 2  # --epochs 1: done
    assert "at epoch 1 already" in capsys.readouterr().err
