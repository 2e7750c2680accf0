"""Models: an MLP and a small CNN for digits; VGG-19 and ResNet-50 for CIFAR (the variants of the
GraNet reference code); ResNet-50 for ImageNet (torchvision's when installed, else the same network
built here). Plain nn.Linear / nn.Conv2d layers: the engine converts the ones it prunes."""

from __future__ import annotations

from torch import nn

from granet_kernels.train.config import ConfigError


class MLP(nn.Module):
    """in -> hidden -> hidden -> classes, ReLU (the input image is flattened). The ReLUs are not in place:
    the engine captures the dense weight gradient at event steps through a hook on each layer's output."""

    def __init__(self, in_features: int = 64, num_classes: int = 10, hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """For 8x8 digits: conv32-conv64-pool-conv128-avgpool-linear, BatchNorm + ReLU."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*block(in_channels, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


class VGG19(nn.Module):
    """VGG-19 for 32x32 inputs as in the reference's CIFAR code: 16 3x3 convs (no bias) with BatchNorm,
    four max-pools, a 2x2 average pool and one linear classifier (20,024,000 weights for 10 classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers, c = [], in_channels
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet-50 (bottlenecks 3-4-6-3). stem="cifar": one 3x3 stride-1 conv, no max-pool (the reference's
    CIFAR variant); stem="imagenet": 7x7 stride-2 conv + 3x3 max-pool."""

    def __init__(self, num_classes: int = 10, stem: str = "cifar", in_channels: int = 3):
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, in_planes = [], 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def build_model(name: str, dataset: str, num_classes: int, input_shape: tuple, *, hidden: int = 1024,
                dropout: float = 0.0) -> nn.Module:
    c = input_shape[0]
    if name == "mlp":
        n = 1
        for s in input_shape:
            n *= s
        return MLP(n, num_classes, hidden, dropout)
    if name == "cnn":
        return SmallCNN(c, num_classes, dropout)
    if name == "vgg19":
        return VGG19(num_classes, c)
    if name == "resnet50":
        if dataset == "imagenet":
            try:
                import torchvision
                return torchvision.models.resnet50(weights=None, num_classes=num_classes)
            except ImportError:
                return ResNet50(num_classes, stem="imagenet", in_channels=c)
        return ResNet50(num_classes, stem="cifar", in_channels=c)
    raise ConfigError(f"unknown model {name!r}; choose one of: mlp, cnn, vgg19, resnet50")
