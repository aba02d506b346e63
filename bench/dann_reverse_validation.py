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

The recipe with the highest score (the mean over `--seeds` when several are given: one seed
ranks candidates poorly, since DANN's accuracy moves by points between runs) is the one to use.
Each candidate is `SCALING:HIDDEN[:LAMBDA]`: SCALING is `raw` (pixels in [0, 1], as stored) or
`std` (each set shifted and scaled to mean 0 and deviation 1 over all its values, graft's
`standardize = true`); HIDDEN is the domain head's hidden widths (graft's `domain_hidden`);
LAMBDA is the reversal's largest weight (graft's `lambda_max`, default 1). Everything else is
the examples' recipe: the
digits CNN, 64 source + 64 target images per step, SGD 0.01 momentum 0.9 with the DANN
paper's annealing, lambda_p = 2/(1+exp(-10 p)) - 1, 3,000 steps, USPS resized to 28x28 by
bilinear interpolation, one thread (or `--device cuda`, where a GPU is at hand: the scores
are then not bit-for-bit those of the CPU, as cuDNN sums in its own order).

The forward model's accuracy on the target test set is printed as `target_test_accuracy`
so that the choice can be checked afterwards; the choice itself never reads it. One JSON
object per candidate and seed, then one with the choice. `--summarize FILE...` reads such
lines (from runs split across processes) and prints the choice per direction alone.
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
    return (predict(feat, label, x) == y.to(x.device)).float().mean().item()


def train(xs, ys, xt, hidden, lam_max, seed, steps=STEPS):
    """DANN on labelled `xs, ys` and unlabelled `xt`; returns the extractor and label head."""
    torch.manual_seed(seed)
    dev = xs.device
    feat = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    label = mlp([768, 100, 100, 10])
    domain = mlp([768] + hidden + [1])
    feat, label, domain = feat.to(dev), label.to(dev), domain.to(dev)
    params = list(feat.parameters()) + list(label.parameters()) + list(domain.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    order_s, order_t = torch.randperm(len(xs)), torch.randperm(len(xt))
    at_s = at_t = 0
    for step in range(steps):
        p = step / steps
        for g in opt.param_groups:
            g["lr"] = 0.01 / (1 + 10 * p) ** 0.75
        if at_s + BATCH > len(xs):
            order_s, at_s = torch.randperm(len(xs)), 0
        if at_t + BATCH > len(xt):
            order_t, at_t = torch.randperm(len(xt)), 0
        bs = order_s[at_s:at_s + BATCH].to(dev)
        bt = order_t[at_t:at_t + BATCH].to(dev)
        at_s, at_t = at_s + BATCH, at_t + BATCH
        fs = feat(xs[bs])
        loss = F.cross_entropy(label(fs), ys[bs])
        lam = lam_max * (2 / (1 + math.exp(-10 * p)) - 1)
        d = domain(GradReverse.apply(torch.cat([fs, feat(xt[bt])]), lam)).squeeze(1)
        loss = loss + F.binary_cross_entropy_with_logits(
            d, torch.cat([torch.zeros(BATCH, device=dev), torch.ones(BATCH, device=dev)]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return feat, label


def standardize(x):
    return (x - x.mean()) / x.std()


def parse_candidate(cand):
    parts = cand.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("raw", "std") or not parts[1]:
        raise ValueError(f"candidate {cand!r}: expected raw|std:WIDTHS[:LAMBDA]")
    hidden = [int(w) for w in parts[1].split(",")]
    lam = float(parts[2]) if len(parts) == 3 else 1.0
    return parts[0], hidden, lam


def json_lines(files):
    """Every JSON object of the given files, one per non-empty line."""
    out = []
    for f in files:
        with open(f) as fh:
            out += [json.loads(line) for line in fh if line.strip()]
    return out


def choose(results):
    """The candidate of highest mean reverse-validation accuracy, per direction."""
    by = {}
    for r in results:
        if "reverse_validation_accuracy" in r:
            by.setdefault((r["source"], r["target"]), {}).setdefault(r["candidate"], []).append(r)
    out = []
    for (src, tgt), cands in sorted(by.items()):
        means = {c: sum(x["reverse_validation_accuracy"] for x in rs) / len(rs) for c, rs in cands.items()}
        best = max(means, key=means.get)
        out.append({"source": src, "target": tgt, "chosen": best,
                    "by": "mean reverse_validation_accuracy over seeds",
                    "seeds": sorted(x["seed"] for x in cands[best]),
                    "scores": {c: round(m, 4) for c, m in sorted(means.items(), key=lambda kv: -kv[1])}})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["mnist", "usps"])
    ap.add_argument("--target", choices=["mnist", "usps"])
    ap.add_argument("--candidate", action="append", default=[], help="raw|std:WIDTHS[:LAMBDA], e.g. std:500,500:0.3")
    ap.add_argument("--seed", type=int, default=5, help="one seed (default 5)")
    ap.add_argument("--seeds", help="several seeds, comma-separated; the choice is by their mean score")
    ap.add_argument("--device", default="cpu", help="cpu (one thread) or cuda")
    ap.add_argument("--steps", type=int, default=STEPS, help="steps of each training (default: the examples' 3000)")
    ap.add_argument("--data-dir", default=os.environ.get("GRAFT_DATA_DIR", "../shared/data"))
    ap.add_argument("--summarize", nargs="+", metavar="FILE", help="print the choice from earlier runs' JSON lines")
    args = ap.parse_args()
    if args.summarize:
        for c in choose(json_lines(args.summarize)):
            print(json.dumps(c), flush=True)
        return
    if not (args.source and args.target and args.candidate):
        ap.error("--source, --target and at least one --candidate are needed")
    try:
        cands = [(c, *parse_candidate(c)) for c in args.candidate]
    except ValueError as e:
        ap.error(str(e))
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    xs, ys = load(args.data_dir, args.source, "train")
    xt, _ = load(args.data_dir, args.target, "train")
    xe, ye = load(args.data_dir, args.target, "test")
    split = torch.randperm(len(xs), generator=torch.Generator().manual_seed(1234))
    held, kept = split[:len(xs) // 10], split[len(xs) // 10:]
    results = []
    for cand, scaling, hidden, lam in cands:
        s, t, e = (xs, xt, xe) if scaling == "raw" else (standardize(xs), standardize(xt), standardize(xe))
        s, t, e = s.to(dev), t.to(dev), e.to(dev)
        ys_kept = ys[kept].to(dev)
        for seed in seeds:
            started = time.time()
            feat, label = train(s[kept.to(dev)], ys_kept, t, hidden, lam, seed, args.steps)
            pseudo = predict(feat, label, t)
            rfeat, rlabel = train(t, pseudo, s[kept.to(dev)], hidden, lam, seed + 100, args.steps)
            r = {
                "source": args.source, "target": args.target, "candidate": cand, "seed": seed,
                "device": args.device, "steps": args.steps,
                "reverse_validation_accuracy": round(accuracy(rfeat, rlabel, s[held.to(dev)], ys[held]), 4),
                "target_test_accuracy": round(accuracy(feat, label, e, ye), 4),
                "seconds": round(time.time() - started, 1),
            }
            results.append(r)
            print(json.dumps(r), flush=True)
    for c in choose(results):
        print(json.dumps(c), flush=True)


if __name__ == "__main__":
    main()
