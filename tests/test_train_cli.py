"""``fastcnn train``: smoke runs on the built-in dataset and on an ImageFolder, checkpoint, early stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
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
