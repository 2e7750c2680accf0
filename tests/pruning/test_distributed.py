"""Under DistributedDataParallel (2 CPU processes, gloo) every rank holds the same masks after every event."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from granet_kernels import GraNet, GraNetConfig


def _worker(rank, world, store_dir, method, layout):
    dist.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # same initial weights on every rank (DDP broadcasts them anyway)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cfg = GraNetConfig(method=method, init_density=0.5, final_density=0.1, final_prune_epoch=4, total_epochs=8,
                       iters_per_epoch=4, update_frequency=4, layout=layout, seed=7)
    g = GraNet(model, opt, cfg)
    wrapped = DDP(model)
    history = []
    for step in range(1, 33):
        gen = torch.Generator().manual_seed(1000 * rank + step)  # different data on each rank
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(wrapped(x), y).backward()
        opt.step()
        if g.step():
            wrapped = DDP(model)  # parameter sizes may have changed
        if g.schedule.is_event(step):
            history.append([m.mask.clone() for m in g.layers.values()])
    torch.save({"history": history, "events": g.events, "weights": [m.dense_weight().detach() for m in g.layers.values()]},
               os.path.join(store_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("method, layout", [("granet", "auto"), ("rigl", "csr")])
def test_masks_identical_across_ranks(tmp_path, method, layout):
    mp.spawn(_worker, args=(2, str(tmp_path), method, layout), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["events"] == r1["events"] == 8
    assert len(r0["history"]) == 8
    for a, b in zip(r0["history"], r1["history"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(r0["weights"], r1["weights"]))
    # The masks did move (regrowth happened), so the equality above is not trivial.
    assert any(not torch.equal(x, y) for x, y in zip(r0["history"][0], r0["history"][-1]))
