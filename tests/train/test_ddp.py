"""Under DDP (2 CPU processes, gloo) a training step computes what one process computes on the global batch."""

from __future__ import annotations

import subprocess
import sys

import torch

import adnify
from adnify.train.recipes import load_recipe
from adnify.train.rundir import RunDir
from adnify.train.session import make_accelerator
from adnify.train.steps import AdnPair, LossConfig, adn_step, freeze_bn_stats

GLOBAL_BATCH = 8
ORDERS = ("joint", "sequential")


def _both_orders(out: str) -> None:
    torch.set_num_threads(1)
    for order in ORDERS:
        _steps(order, out)


def _steps(order: str, out: str) -> None:
    """Two optimizer steps of adnify's step on this process's share of a fixed global batch; saves gradients."""
    config = load_recipe("resnet", {"order": order})
    # What adnify.train does: find_unused_parameters for the sequential order only.
    accelerator = make_accelerator(config, RunDir(out), mixed_precision="no", cpu=True, log_with=None,
                                   find_unused=order == "sequential")
    torch.manual_seed(0)
    net = adnify.convert("resnet18", num_classes=10, channels=(8, 16, 32, 64), stem_width=8, zero_init_last=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    model, optimizer = accelerator.prepare(AdnPair(net), optimizer)
    model.train()
    freeze_bn_stats(model)  # batch statistics would differ between 4- and 8-image batches
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)
    share = GLOBAL_BATCH // accelerator.num_processes
    rank = accelerator.process_index
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    loss = LossConfig.from_config(config, net)
    grads = []
    for _ in range(2):  # a second step catches DDP's "expected to have finished reduction" errors
        adn_step(accelerator, model, x, y, loss, order=order)
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
    torch.save(grads, f"{out}/{order}-{accelerator.num_processes}-{rank}.pt")


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    """Both orders; the sequential one runs its super-net pass inside no_sync and needs find_unused_parameters.

    accelerate.debug_launcher forks; a process that has already run OpenMP work (any earlier test)
    can hang in its forked children, so the launch happens from a fresh interpreter (``__main__`` below).
    """
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for order in ORDERS:
        one = torch.load(tmp_path / f"{order}-1-0.pt")
        for rank in range(2):
            two = torch.load(tmp_path / f"{order}-2-{rank}.pt")
            for step in range(2):
                assert one[step].keys() == two[step].keys()
                for name, grad in one[step].items():
                    torch.testing.assert_close(two[step][name], grad, rtol=1e-4, atol=1e-6,
                                               msg=f"{order}, rank {rank}, step {step + 1}: {name}")


if __name__ == "__main__":
    from accelerate import debug_launcher

    debug_launcher(_both_orders, args=(sys.argv[1],), num_processes=2)
    _both_orders(sys.argv[1])  # the reference: one process, the whole batch
