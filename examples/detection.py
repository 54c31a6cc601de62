"""An adaptive backbone inside torchvision's Faster R-CNN + FPN, trained with skip-aware self-distillation.

Each step runs the detector with the super-net backbone (detection losses) and the base-net
backbone on the same batch, whose feature maps distil the super-net's (Algorithm 1's feature term,
on the backbone): ``loss = alpha * detection(super) + (1 - alpha) * sum_l KL(h_super^l || h_base^l)``.
Then box mAP (torchmetrics) and backbone GMACs are printed for both depths, switched on the same
detector at run time. The data is generated: noisy images with coloured rectangles, the colour is
the class (no download).

    adnify convert resnet50 --features-only --out-indices 1,2,3,4 -o r50-backbone
    python examples/detection.py --backbone r50-backbone --steps 100
    python examples/detection.py                      # a small ResNet-18 backbone, converted on the fly
"""

from __future__ import annotations

import argparse
import time

import torch

import adnify
from adnify.detection import backbone_kd, fpn_backbone, set_depth
from adnify.report import pattern_costs

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.2, 1.0]])


def make_set(n: int, size: int, seed: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``n`` images of ``size`` px, each with 1-3 rectangles; label = colour index + 1 (0 is background)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        image = torch.rand(3, size, size, generator=g) * 0.3
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            w, h = (torch.randint(size // 6, size // 2, (2,), generator=g)).tolist()
            x0, y0 = torch.randint(0, size - w, (1,), generator=g).item(), torch.randint(0, size - h, (1,), generator=g).item()
            c = int(torch.randint(0, len(COLOURS), (1,), generator=g))
            image[:, y0:y0 + h, x0:x0 + w] = COLOURS[c][:, None, None] * (0.7 + 0.3 * torch.rand(1, generator=g))
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(c + 1)
        items.append((image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}))
    return items


def evaluate(model: torch.nn.Module, data: list, pattern: str) -> float:
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox")
    model.eval()
    set_depth(model, pattern)
    with torch.no_grad():
        for i in range(0, len(data), 8):
            batch = data[i:i + 8]
            metric.update(model([x for x, _ in batch]), [t for _, t in batch])
    return float(metric.compute()["map"]) * 100


def main() -> None:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", help="a features_only adaptive model directory (default: a small ResNet-18)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="image size (px)")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.backbone:
        net = adnify.load(args.backbone)
    else:
        net = adnify.convert("resnet18", features_only=True, out_indices=(2, 3, 4),
                             channels=(32, 64, 128, 256), zero_init_last=False)
    levels = len(net.feature_info.channels())
    sizes = tuple((16 * 2 ** i,) for i in range(levels + 1))  # one per level, plus the FPN's pool level
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    model = FasterRCNN(fpn_backbone(net, out_channels=64), num_classes=len(COLOURS) + 1, min_size=args.size,
                       max_size=args.size, rpn_anchor_generator=anchors)
    train_set, test_set = make_set(args.steps * args.batch_size // 4, args.size, 0), make_set(64, args.size, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps + 1, pct_start=0.1)
    began = time.perf_counter()
    for step in range(args.steps):
        picks = torch.randint(0, len(train_set), (args.batch_size,), generator=torch.Generator().manual_seed(step))
        images, targets = zip(*(train_set[i] for i in picks.tolist()))
        model.train()
        set_depth(model, "super")
        detection = sum(model(list(images), list(targets)).values())
        batch, _ = model.transform(list(images), list(targets))  # what the backbone saw (deterministic resize)
        kd = backbone_kd(model, batch.tensors, model.backbone.last_features, pattern="base")
        loss = args.alpha * detection + (1 - args.alpha) * kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps}  detection {detection.item():.3f}  backbone KD {kd.item():.4f}  "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    costs = {c.pattern: c for c in pattern_costs(net, ["super", "base"], input_size=(3, args.size, args.size))}
    for name, pattern in (("super", "F" * net.num_stages), ("base", "T" * net.num_stages)):
        print(f"{name}-net backbone {pattern}: box mAP {evaluate(model, test_set, pattern):.1f}  "
              f"backbone {costs[pattern].gmacs:.3f} GMACs at {args.size}x{args.size}")


if __name__ == "__main__":
    main()
