"""The `layout="auto"` crossover tables: which table a CPU gets, and what each picks."""

import pytest
import torch

from granet_kernels.nn import SparseConv2d, SparseLinear, crossover
from granet_kernels.nn.crossover import ZEN3, ZEN5, choose_layout, crossovers_for


@pytest.mark.parametrize("vendor,family,isa,table", [
    ("AuthenticAMD", 0x1A, "avx512", ZEN5),
    ("AuthenticAMD", 0x1B, "avx512", ZEN5),
    ("AuthenticAMD", 0x1A, "avx2", ZEN3),  # the AVX-512 kernels are what the Zen 5 table measured
    ("AuthenticAMD", 0x19, "avx512", ZEN3),  # Zen 4: not measured, the conservative table
    ("AuthenticAMD", 0x19, "avx2", ZEN3),
    ("GenuineIntel", 6, "avx512", ZEN3),
    ("", 0, "generic", ZEN3),
])
def test_table_for_cpu(vendor, family, isa, table):
    assert crossovers_for(vendor, family, isa) is table


def test_this_cpu_gets_a_table():
    assert crossover.cpu_crossovers() in (ZEN3, ZEN5)


@pytest.fixture(params=[ZEN3, ZEN5], ids=["zen3", "zen5"])
def table(request, monkeypatch):
    monkeypatch.setattr(crossover, "cpu_crossovers", lambda: request.param)
    return request.param


def _just_below(limit):
    return limit - 0.01


def test_linear_limits_by_weight_size(table):
    for numel, limit in ((1 << 20, table.linear_small), (1 << 22, table.linear_medium),
                         ((1 << 22) + 1, table.linear)):
        assert choose_layout("linear", _just_below(limit), "cpu", torch.float32, numel) == "csr"
        assert choose_layout("linear", limit, "cpu", torch.float32, numel) == "masked"
    # A weight of unknown size gets the large-weight limit.
    assert choose_layout("linear", table.linear, "cpu", torch.float32) == "masked"
    assert choose_layout("linear", _just_below(table.linear), "cpu", torch.float64) == "csr"


def test_conv_limit(table):
    assert choose_layout("conv", _just_below(table.conv), "cpu", torch.float32, 1 << 24) == "csr"
    assert choose_layout("conv", table.conv, "cpu", torch.float32, 10) == "masked"


def test_limits_are_ordered_and_in_range(table):
    # Smaller weights keep their CSR arrays in cache, so their limit is never the lower one.
    assert 0 < table.linear <= table.linear_medium <= table.linear_small < 1
    assert 0 < table.conv < 1


def test_other_devices_and_dtypes_get_masked(table):
    assert choose_layout("linear", 0.01, "cpu", torch.bfloat16, 100) == "masked"
    assert choose_layout("linear", 0.01, "meta", torch.float32, 100) == "masked"


def test_modules_follow_the_table(table):
    # 2048 x 2048 is a medium weight, 4096 x 2049 a large one.
    assert SparseLinear(2048, 2048, density=_just_below(table.linear_medium)).layout == "csr"
    assert SparseLinear(2048, 2048, density=table.linear_medium + 0.01).layout == "masked"
    assert SparseLinear(4096, 2049, density=_just_below(table.linear)).layout == "csr"
    assert SparseLinear(4096, 2049, density=table.linear + 0.01).layout == "masked"
    assert SparseLinear(256, 256, density=_just_below(table.linear_small)).layout == "csr"
    assert SparseConv2d(8, 8, 3, density=_just_below(table.conv)).layout == "csr"
    assert SparseConv2d(8, 8, 3, density=table.conv + 0.05).layout == "masked"

