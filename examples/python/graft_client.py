#!/usr/bin/env python3
"""A graft client in Python, and graft's models in PyTorch.

Stubs are generated at run time from graft's proto/ with grpcio-tools, so nothing generated
is kept in the repository and the client always matches the coordinator it was checked out
with.

  run     submit a job file (sent as it is, SubmitJobRequest.spec_toml), watch it with a
          progress line, export the final checkpoint in PyTorch's layout
          (ExportModelRequest.format = EXPORT_FORMAT_TORCH), build the nn.Sequential that the
          export's metadata describes, load the weights with load_state_dict(strict=True)
          and evaluate it on the job's evaluation sets, next to graft's own evaluation.
  train   train the job's network in PyTorch on the job's source data and save its
          state_dict with safetensors.torch, to start a graft job from (init_from,
          init_layout = "torch"); prints the accuracy PyTorch measures.

The last line on stdout is one JSON object (the figures); progress goes to stderr.
Packages: torch, numpy, safetensors, grpcio, grpcio-tools (scripts/python-tools.sh pins
them). Datasets are read from --data-dir (GRAFT_DATA_DIR, default ../shared/data) as graft
reads them: gzipped IDX, MNIST pixels / 255, USPS as stored.
"""

import argparse
import gzip
import json
import os
import struct
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]


def load_stubs(proto_root):
    """Generates graft_pb2 and graft_pb2_grpc from proto/ into a temporary folder."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="graft-stubs-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(proto_root, "graft", "v1", "graft.proto"),
    ]
    if protoc.main(args) != 0:
        sys.exit(f"grpc_tools.protoc could not compile {proto_root}")
    sys.path.insert(0, out)
    from graft.v1 import graft_pb2, graft_pb2_grpc  # noqa: E402

    return graft_pb2, graft_pb2_grpc


# ---------------------------------------------------------------- data, as graft reads it

# Dataset name -> (folder, {split: (images, labels)}, u8 scale).
CATALOG = {
    "mnist": (
        "mnist",
        {
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        },
    ),
    "usps": (
        "usps",
        {
            "train": ("usps-train-images-idx3-float.gz", "usps-train-labels-idx1-ubyte.gz"),
            "test": ("usps-test-images-idx3-float.gz", "usps-test-labels-idx1-ubyte.gz"),
        },
    ),
}


def read_idx(path):
    """A gzipped IDX array: u8 as float32 / 255, f32 as stored (big-endian)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind not in (0x08, 0x0D):
        sys.exit(f"{path}: not an IDX file graft reads")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if kind == 0x08:
        return np.frombuffer(body, dtype=np.uint8).reshape(dims)
    return np.frombuffer(body, dtype=">f4").astype(np.float32).reshape(dims)


def load_dataset(d, data_dir):
    """One [[datasets]] entry of a job file: images [N, 1, h, w] float32 and labels."""
    name, split = d["name"], d["split"]
    if name not in CATALOG or split not in CATALOG[name][1]:
        sys.exit(f"this example reads mnist and usps (train, test), not {name}/{split}")
    for key in ("labels_per_class", "image_size", "standardize"):
        if d.get(key):
            sys.exit(f"this example does not apply {key}; graft does")
    folder, files = CATALOG[name]
    images, labels = (read_idx(Path(data_dir) / folder / f) for f in files[split])
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255.0)
    n = d.get("limit", len(labels))
    x = images[:n].reshape(n, 1, images.shape[1], images.shape[2])
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels[:n].astype(np.int64))


# ---------------------------------------------------------------- the network in PyTorch

MODULES = {
    "Flatten": lambda m: nn.Flatten(),
    "ReLU": lambda m: nn.ReLU(),
    "Linear": lambda m: nn.Linear(m["in_features"], m["out_features"]),
    "Conv2d": lambda m: nn.Conv2d(m["in_channels"], m["out_channels"], m["kernel_size"]),
    "MaxPool2d": lambda m: nn.MaxPool2d(m["kernel_size"]),
}


def sequential(modules):
    """The nn.Sequential of an export's graft.architecture metadata."""
    return nn.Sequential(*(MODULES[m["module"]](m) for m in modules))


def sequential_for(spec, sample_shape, classes):
    """The nn.Sequential graft builds for a supervised job's model (MLP or digits CNN)."""
    model = spec["model"]
    c, h, w = sample_shape
    if model["kind"] == "mlp":
        width, layers = c * h * w, [nn.Flatten()]
        for hidden in model.get("hidden", []):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, classes))
    if model["kind"] == "digits_cnn":
        h2, w2 = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        return nn.Sequential(
            nn.Conv2d(c, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(48 * h2 * w2, 100), nn.ReLU(),
            nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, classes),
        )
    sys.exit(f"unknown model kind {model['kind']!r}")


@torch.no_grad()
def accuracy(net, x, y):
    net.eval()
    right = 0
    for i in range(0, len(y), 1000):
        right += int((net(x[i : i + 1000]).argmax(dim=1) == y[i : i + 1000]).sum())
    return right / len(y)


def evaluate(net, spec, data_dir):
    """`<label>_accuracy` per evaluation set, as graft names them."""
    out = {}
    for d in spec.get("datasets", []):
        if d.get("role") == "eval":
            x, y = load_dataset(d, data_dir)
            out[f"{d.get('label', 'target')}_accuracy"] = accuracy(net, x, y)
    return out


# ---------------------------------------------------------------- the client

def TERMINAL(pb):
    return {pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def run(args):
    import grpc

    pb, pb_grpc = load_stubs(str(REPO / "proto" / "proto"))
    text = Path(args.job).read_text()
    spec = tomllib.loads(text)
    channel = grpc.insecure_channel(args.coordinator.removeprefix("http://"))
    jobs = pb_grpc.JobServiceStub(channel)
    meta = [("authorization", f"Bearer {args.token}")] if args.token else []

    job = jobs.SubmitJob(pb.SubmitJobRequest(spec_toml=text), metadata=meta).job
    print(f"submitted {job.id} ({spec.get('name', '?')}, {job.total_steps} steps)", file=sys.stderr)

    start, finished = time.monotonic(), None
    batch = spec.get("training", {}).get("global_batch_size", 0)
    for ev in jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=meta):
        kind = ev.WhichOneof("event")
        if kind == "snapshot" and ev.snapshot.state in TERMINAL(pb):
            finished = ev.snapshot  # it ended before the watch began
            break
        if kind == "progress":
            p = ev.progress
            elapsed = time.monotonic() - start
            # The coordinator's own rate: progress events can arrive in bursts, so counting
            # their arrivals here would not measure the job.
            steps_per_s = p.samples_per_s / batch if batch else 0.0
            eta = (p.total_steps - p.step) / steps_per_s if steps_per_s > 0 else float("nan")
            print(
                f"\r{job.id} step {p.step}/{p.total_steps}  loss {p.loss:.4f}  "
                f"acc {p.train_accuracy:.3f}  lr {p.lr:.4g}  {p.samples_per_s:.0f} samples/s  "
                f"elapsed {elapsed:.1f}s  eta {eta:.1f}s ",
                end="", file=sys.stderr, flush=True,
            )
        elif kind == "evaluation":
            m = dict(ev.evaluation.metrics)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(m.items()) if k.endswith("accuracy"))
            print(f"\n{job.id} evaluation at step {ev.evaluation.step}: {shown}", file=sys.stderr)
        elif kind == "finished":
            finished = ev.finished
            break
    print(file=sys.stderr)
    if finished is None:
        sys.exit(f"{job.id}: the watch ended before the job did")
    state = pb.JobState.Name(finished.state).removeprefix("JOB_STATE_")
    if state != "COMPLETED":
        sys.exit(f"{job.id} ended {state}: {finished.reason}")

    data, total, step = bytearray(), None, None
    request = pb.ExportModelRequest(job_id=job.id, format=pb.EXPORT_FORMAT_TORCH)
    for chunk in jobs.ExportModel(request, metadata=meta):
        if chunk.offset != len(data):
            sys.exit(f"export stream jumped to byte {chunk.offset} at {len(data)}")
        data += chunk.data
        total, step = chunk.total_bytes, chunk.step
    if total != len(data):
        sys.exit(f"export ended after {len(data)} of {total} bytes")
    Path(args.out).write_bytes(bytes(data))
    print(f"wrote {args.out} ({len(data)} bytes, step {step})", file=sys.stderr)

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(args.out, framework="pt") as f:
        metadata = f.metadata()
    net = sequential(json.loads(metadata["graft.architecture"]))
    net.load_state_dict(load_file(args.out), strict=True)
    torch_metrics = evaluate(net, spec, args.data_dir)
    graft_metrics = {k: v for k, v in finished.metrics.items() if k in torch_metrics}
    for k, v in sorted(torch_metrics.items()):
        print(f"{k}: PyTorch {v:.6f}, graft {graft_metrics.get(k, float('nan')):.6f}", file=sys.stderr)
    print(json.dumps({
        "job": job.id,
        "state": state,
        "step": step,
        "export": args.out,
        "graft_version": metadata.get("graft.version"),
        "architecture": json.loads(metadata["graft.architecture"]),
        "graft": graft_metrics,
        "torch": torch_metrics,
    }))


def train(args):
    """Trains the job's network in PyTorch (plain SGD) and saves its state_dict."""
    from safetensors.torch import save_file

    spec = tomllib.loads(Path(args.job).read_text())
    torch.manual_seed(args.seed)
    source = next(d for d in spec["datasets"] if d.get("role") == "source")
    x, y = load_dataset(source, args.data_dir)
    # The digit sets have 10 classes, as graft's catalog says, whatever the subset holds.
    net = sequential_for(spec, tuple(x.shape[1:]), 10)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    g = torch.Generator().manual_seed(args.seed)
    net.train()
    for _ in range(args.steps):
        i = torch.randint(0, len(y), (args.batch,), generator=g)
        loss = nn.functional.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    # A plain state_dict, as PyTorch users save one: no graft metadata, so the graft job
    # says init_layout = "torch".
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.out)
    print(json.dumps({"out": args.out, "loss": loss.item(), "torch": evaluate(net, spec, args.data_dir)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("GRAFT_DATA_DIR", str(REPO.parent / "shared" / "data")))
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="submit, watch, export, evaluate in PyTorch")
    r.add_argument("job", help="the job file (TOML)")
    r.add_argument("--coordinator", default=os.environ.get("GRAFT_COORDINATOR", "127.0.0.1:7070"),
                   help="host:port (an http:// prefix is dropped)")
    r.add_argument("--token", default=os.environ.get("GRAFT_TOKEN"))
    r.add_argument("--out", default="model.safetensors", help="where the export goes")
    t = sub.add_parser("train", help="train the job's network in PyTorch, save its state_dict")
    t.add_argument("job", help="the job file whose model and source data to use")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run(args) if args.cmd == "run" else train(args)


if __name__ == "__main__":
    main()
