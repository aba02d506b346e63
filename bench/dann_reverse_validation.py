#!/usr/bin/env python3
"""Choose the DANN digits recipe without target labels, by reverse validation.

    bench/.venv/bin/python bench/dann_reverse_validation.py --source mnist --target usps \
        --candidate raw:100 --candidate raw:500,500 --candidate std:100 --candidate std:500,500

Issue #3 asks for the input scaling and the domain head of the MNIST<->USPS DANN jobs to be
chosen without looking at target labels. Reverse validation (Zhong et al. 2010, the rule the
DANN paper uses to pick its hyper-parameters) scores a recipe with source labels only:

1. hold out 10 % of the labelled source training set (a fixed split);
2. train DANN with the recipe: the other 90 % labelled source, the target training set
   unlabelled;
3. label the target training set with that model;
4. train the same recipe the other way round: the pseudo-labelled target as the labelled
   source, the 90 % source as the unlabelled target;
5. the reverse model's accuracy on the held-out source is the recipe's score.

The recipe with the highest score is the one to use. Each candidate is `SCALING:HIDDEN`:
SCALING is `raw` (pixels in [0, 1], as stored) or `std` (each set shifted and scaled to mean 0
and deviation 1 over all its values, graft's `standardize = true`); HIDDEN is the domain
head's hidden widths (graft's `domain_hidden`). Everything else is the examples' recipe: the
digits CNN, 64 source + 64 target images per step, SGD 0.01 momentum 0.9 with the DANN
paper's annealing, lambda_p = 2/(1+exp(-10 p)) - 1, 3,000 steps, USPS resized to 28x28 by
bilinear interpolation, one thread.

The forward model's accuracy on the target test set is printed as `target_test_accuracy`
so that the choice can be checked afterwards; the choice itself never reads it. One JSON
object per candidate, then one with the choice.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pytorch_ddp import GradReverse  # the gradient-reversal layer of the speed comparison

STEPS = 3000
BATCH = 64


def idx(path):
    raw = gzip.open(path).read()
    kind, ndim = raw[2], raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    return np.frombuffer(body, dtype=np.uint8 if kind == 0x08 else ">f4").reshape(dims)


def load(data_dir, name, split):
    if name == "mnist":
        part = "train" if split == "train" else "t10k"
        x = idx(f"{data_dir}/mnist/{part}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
        y = idx(f"{data_dir}/mnist/{part}-labels-idx1-ubyte.gz")
    else:
        x = idx(f"{data_dir}/usps/usps-{split}-images-idx3-float.gz").astype(np.float32)
        y = idx(f"{data_dir}/usps/usps-{split}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(x.copy()).unsqueeze(1)
    if x.shape[-1] != 28:
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    return x, torch.from_numpy(y.astype(np.int64))


def mlp(widths):
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def predict(feat, label, x):
    with torch.no_grad():
        return torch.cat([label(feat(x[i:i + 1000])).argmax(1) for i in range(0, len(x), 1000)])


def accuracy(feat, label, x, y):
    return (predict(feat, label, x) == y).float().mean().item()


def train(xs, ys, xt, hidden, seed):
    """DANN on labelled `xs, ys` and unlabelled `xt`; returns the extractor and label head."""
    torch.manual_seed(seed)
    feat = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    label = mlp([768, 100, 100, 10])
    domain = mlp([768] + hidden + [1])
    params = list(feat.parameters()) + list(label.parameters()) + list(domain.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    order_s, order_t = torch.randperm(len(xs)), torch.randperm(len(xt))
    at_s = at_t = 0
    for step in range(STEPS):
        p = step / STEPS
        for g in opt.param_groups:
            g["lr"] = 0.01 / (1 + 10 * p) ** 0.75
        if at_s + BATCH > len(xs):
            order_s, at_s = torch.randperm(len(xs)), 0
        if at_t + BATCH > len(xt):
            order_t, at_t = torch.randperm(len(xt)), 0
        bs, bt = order_s[at_s:at_s + BATCH], order_t[at_t:at_t + BATCH]
        at_s, at_t = at_s + BATCH, at_t + BATCH
        fs = feat(xs[bs])
        loss = F.cross_entropy(label(fs), ys[bs])
        lam = 2 / (1 + math.exp(-10 * p)) - 1
        d = domain(GradReverse.apply(torch.cat([fs, feat(xt[bt])]), lam)).squeeze(1)
        loss = loss + F.binary_cross_entropy_with_logits(
            d, torch.cat([torch.zeros(BATCH), torch.ones(BATCH)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return feat, label


def standardize(x):
    return (x - x.mean()) / x.std()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["mnist", "usps"], required=True)
    ap.add_argument("--target", choices=["mnist", "usps"], required=True)
    ap.add_argument("--candidate", action="append", required=True, help="SCALING:HIDDEN, e.g. std:500,500")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--data-dir", default=os.environ.get("GRAFT_DATA_DIR", "../shared/data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    xs, ys = load(args.data_dir, args.source, "train")
    xt, _ = load(args.data_dir, args.target, "train")
    xe, ye = load(args.data_dir, args.target, "test")
    split = torch.randperm(len(xs), generator=torch.Generator().manual_seed(1234))
    held, kept = split[:len(xs) // 10], split[len(xs) // 10:]
    results = []
    for cand in args.candidate:
        scaling, _, widths = cand.partition(":")
        if scaling not in ("raw", "std") or not widths:
            ap.error(f"candidate {cand!r}: expected raw:WIDTHS or std:WIDTHS")
        hidden = [int(w) for w in widths.split(",")]
        s, t, e = (xs, xt, xe) if scaling == "raw" else (standardize(xs), standardize(xt), standardize(xe))
        started = time.time()
        feat, label = train(s[kept], ys[kept], t, hidden, args.seed)
        pseudo = predict(feat, label, t)
        rfeat, rlabel = train(t, pseudo, s[kept], hidden, args.seed + 100)
        r = {
            "source": args.source, "target": args.target, "candidate": cand, "seed": args.seed,
            "reverse_validation_accuracy": accuracy(rfeat, rlabel, s[held], ys[held]),
            "target_test_accuracy": accuracy(feat, label, e, ye),
            "seconds": round(time.time() - started, 1),
        }
        results.append(r)
        print(json.dumps(r), flush=True)
    best = max(results, key=lambda r: r["reverse_validation_accuracy"])
    print(json.dumps({"source": args.source, "target": args.target, "chosen": best["candidate"],
                      "by": "reverse_validation_accuracy"}), flush=True)


if __name__ == "__main__":
    main()
