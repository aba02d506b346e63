#!/usr/bin/env python3
"""The workloads of `graft bench train` in PyTorch DDP over gloo on CPU, for comparison.

    bench/.venv/bin/python bench/pytorch_ddp.py --workload mlp --workers 2 [--steps 100] [--json]

W processes on loopback, one thread each (as graft's workers share the cores), random data,
the same networks, batch sizes and optimizer as graft's recipes:
  mlp:  784-512-512-10, ReLU, cross-entropy, SGD momentum 0.9, batch 128 per worker;
  dann: the digits CNN (conv5-32, pool, conv5-48, pool, 768-100-100-10) with the domain head
        768 -> 100 -> 1 behind gradient reversal, 64 source + 64 target images per worker.
Prints samples/s over the group and the median step time (the first fifth is a warm-up).
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.lam * g, None


class Dann(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.label = nn.Sequential(
            nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
        self.domain = nn.Sequential(nn.Linear(768, 100), nn.ReLU(), nn.Linear(100, 1))

    def forward(self, xs, xt, lam):
        fs, ft = self.features(xs), self.features(xt)
        logits = self.label(fs)
        d = self.domain(GradReverse.apply(torch.cat([fs, ft]), lam))
        return logits, d


def run(rank, args, port, out):
    torch.set_num_threads(args.threads)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.workers)
    torch.manual_seed(1)
    if args.workload == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                              nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        batch = 128
    else:
        model = Dann()
        batch = 64
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    xs = torch.rand(batch * 8, 1, 28, 28, generator=g)
    ys = torch.randint(0, 10, (batch * 8,), generator=g)
    xt = torch.rand(batch * 8, 1, 28, 28, generator=g)
    times = []
    dist.barrier()
    for step in range(args.steps):
        i = (step % 8) * batch
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if args.workload == "mlp":
            loss = F.cross_entropy(ddp(xs[i:i + batch]), ys[i:i + batch], reduction="sum")
        else:
            p = step / args.steps
            lam = 2.0 / (1.0 + torch.exp(torch.tensor(-10.0 * p)).item()) - 1.0
            logits, d = ddp(xs[i:i + batch], xt[i:i + batch], lam)
            dom = torch.cat([torch.zeros(batch, 1), torch.ones(batch, 1)])
            loss = (F.cross_entropy(logits, ys[i:i + batch], reduction="sum")
                    + F.binary_cross_entropy_with_logits(d, dom, reduction="sum"))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    dist.barrier()
    if rank == 0:
        warm = max(3, args.steps // 5)
        t = times[warm:]
        out.put({
            "framework": "pytorch-ddp-gloo",
            "torch": torch.__version__,
            "workload": args.workload,
            "workers": args.workers,
            "threads_per_worker": args.threads,
            "samples_per_s": len(t) * batch * args.workers / sum(t),
            "step_ms": statistics.median(t) * 1e3,
        })
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["mlp", "dann"], default="mlp")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per process")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.spawn(run, args=(args, port, out), nprocs=args.workers, join=True)
    r = out.get()
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['workload']} on {r['workers']} DDP process(es), {r['threads_per_worker']} thread(s) each: "
              f"{r['samples_per_s']:.0f} samples/s, median step {r['step_ms']:.2f} ms")


if __name__ == "__main__":
    main()
