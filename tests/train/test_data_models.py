"""Data (digits split, CIFAR pickles, augmentation, sharding) and models (shapes, sizes, ERK facts)."""

import math

import pytest
import torch

from granet_kernels.nn import layer_densities, prunable_layers
from granet_kernels.train.config import ConfigError, TrainConfig
from granet_kernels.train.data import build_data, load_digits_splits, random_crop_flip
from granet_kernels.train.loop import lr_at
from granet_kernels.train.models import MLP, VGG19, ResNet50, SmallCNN, build_model

from train_testing import write_cifar


def test_digits_split_is_fixed_disjoint_and_complete():
    tr, va, te = load_digits_splits()
    assert (len(tr), len(va), len(te)) == (1167, 270, 360)
    tr2, va2, te2 = load_digits_splits()
    assert torch.equal(tr.x, tr2.x) and torch.equal(va.y, va2.y) and torch.equal(te.x, te2.x)
    assert tr.x.shape[1:] == (1, 8, 8) and set(te.y.tolist()) == set(range(10))
    # disjoint: no image of the test set appears in the training set
    train_rows = {tuple(r.flatten().tolist()) for r in tr.x}
    overlap = sum(tuple(r.flatten().tolist()) in train_rows for r in te.x)
    assert overlap < 5  # digits has a handful of duplicate images, nothing more


def test_digits_loaders_and_data_order_depend_on_seed_and_epoch_only():
    data = build_data(TrainConfig(batch_size=64))
    assert data.info.num_classes == 10 and len(data.train) == math.ceil(1167 / 64)
    order = lambda d, e: (d.train.set_epoch(e), torch.cat([y for _, y in d.train]))[1]
    a0, a1 = order(data, 0), order(data, 1)
    again = build_data(TrainConfig(batch_size=64))
    assert torch.equal(a0, order(again, 0)) and torch.equal(a1, order(again, 1))
    assert not torch.equal(a0, a1)
    assert not torch.equal(a0, order(build_data(TrainConfig(batch_size=64, seed=1)), 0))
    x, _ = next(iter(data.train))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.5


def test_two_ranks_split_each_epoch_between_them():
    cfg = TrainConfig(batch_size=64)
    ranks = [build_data(cfg, rank=r, world_size=2) for r in range(2)]
    for d in ranks:
        d.train.set_epoch(3)
    ys = [torch.cat([y for _, y in d.train]) for d in ranks]
    assert len(ranks[0].train) == len(ranks[1].train)
    assert len(ys[0]) + len(ys[1]) >= 1167
    vals = [torch.cat([y for _, y in d.val]) for d in ranks]
    assert len(vals[0]) + len(vals[1]) == 270
    with pytest.raises(ConfigError, match="divisible"):
        build_data(TrainConfig(batch_size=63), rank=0, world_size=2)


@pytest.mark.parametrize("name,bytes_keys", [("cifar10", False), ("cifar100", True)])
def test_cifar_from_the_pickle_format(tmp_path, name, bytes_keys):
    write_cifar(tmp_path, name, n_per_batch=20, n_test=30, bytes_keys=bytes_keys)
    cfg = TrainConfig(dataset=name, data_dir=str(tmp_path), model="vgg19", batch_size=16, val_size=0.1, eval_batch_size=7)
    data = build_data(cfg)
    assert data.info.num_classes == (10 if name == "cifar10" else 100)
    assert (data.info.n_train, data.info.n_val, data.info.n_test) == (90, 10, 30)
    data.train.set_epoch(0)
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sum(len(y) for _, y in data.test) == 30
    # augmentation is a function of (seed, epoch): the same batch twice, another epoch differs
    data.train.set_epoch(0)
    x2, _ = next(iter(data.train))
    assert torch.equal(x, x2)


def test_cifar_missing_files_and_bad_val_size(tmp_path):
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3 is missing"):
        build_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), model="vgg19"))
    write_cifar(tmp_path, "cifar10")
    with pytest.raises(ConfigError, match="--val-size"):
        build_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), model="vgg19", val_size=500))


def test_random_crop_flip_is_a_crop_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        found = any(torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6]) or
                    torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6].flip(-1))
                    for dy in range(5) for dx in range(5))
        assert found
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(out, random_crop_flip(x, g2, pad=2))


def test_vgg19_is_the_papers_network():
    model = VGG19(10)
    layers = prunable_layers(model)
    assert len(layers) == 17  # 16 convs + classifier
    shapes = [tuple(m.weight.shape) for _, m in layers]
    assert sum(math.prod(s) for s in shapes) == 20_024_000
    d = layer_densities(shapes, 0.5, "erk")
    assert d[:5] == [1.0] * 5 and d[-1] == 1.0
    assert abs(d[-2] - 0.4326) < 1e-3  # a 512x512x3x3 conv
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50_variants():
    cifar = ResNet50(100, stem="cifar")
    convs = [m for _, m in prunable_layers(cifar) if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 53 and isinstance(prunable_layers(cifar)[-1][1], torch.nn.Linear)
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    imagenet = ResNet50(1000, stem="imagenet")
    n = sum(p.numel() for p in imagenet.parameters())
    assert 25_400_000 < n < 25_700_000  # torchvision's resnet50 has 25,557,032
    assert imagenet(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_digits_models():
    assert MLP(64, 10, 1024)(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert SmallCNN(1, 10)(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert isinstance(build_model("cnn", "cifar10", 10, (3, 32, 32)), SmallCNN)
    with pytest.raises(ConfigError):
        build_model("bert", "digits", 10, (1, 8, 8))


def test_learning_rate_schedules():
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=2, lr_schedule="cosine")
    L = 10
    assert lr_at(0, cfg, L) == pytest.approx(0.1 / 20)
    assert lr_at(19, cfg, L) == pytest.approx(0.1)
    assert lr_at(20, cfg, L) == pytest.approx(0.1)
    assert lr_at(60, cfg, L) == pytest.approx(0.05)
    assert lr_at(99, cfg, L) < 0.001
    step = TrainConfig(epochs=10, lr=0.1, lr_schedule="step", lr_milestones=[4, 8], lr_gamma=0.1)
    assert [round(lr_at(e * L, step, L), 6) for e in (0, 3, 4, 7, 8, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert lr_at(55, TrainConfig(epochs=10, lr_schedule="constant", lr=0.3), L) == 0.3


def test_imagenet_folder_checks(tmp_path):
    from granet_kernels.train.data import check_data
    cfg = TrainConfig(dataset="imagenet", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="train/<class>"):
        check_data(cfg)
    for split in ("train", "val"):
        (tmp_path / split / "n01440764").mkdir(parents=True)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs torchvision"):
            check_data(cfg)
    else:
        check_data(cfg)


@pytest.mark.skipif(not __import__("train_testing").engine_available(), reason="no GraNet engine yet")
@pytest.mark.parametrize("name", ["vgg19", "resnet50"])
def test_the_engine_converts_every_layer_the_paper_prunes(name):
    from granet_kernels import GraNet, GraNetConfig
    from granet_kernels.nn import sparse_modules
    model = build_model(name, "cifar10", 10, (3, 32, 32))
    expected = [n for n, _ in prunable_layers(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine = GraNet(model, opt, GraNetConfig(init_density=0.5, final_density=0.05, iters_per_epoch=10,
                                             total_epochs=2, final_prune_epoch=1, update_frequency=5))
    assert [n for n, _ in sparse_modules(model)] == expected
    assert len(expected) == (17 if name == "vgg19" else 54)
    assert engine.report()["global_density"] == pytest.approx(0.5, abs=1e-3)
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in model.modules())
