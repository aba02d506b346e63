#!/usr/bin/env python3
"""Writes the data of the three own-data examples, with nothing but Python's standard library
(numpy is not needed to write numpy's format):

  data/spirals.npz            three spiral arms in the plane: x float32 [1200, 2], y int64
  data/moons-source.csv       two moons, a header and a named label column ("moon")
  data/moons-target.csv       the same moons rotated by 35 degrees (the target domain)
  data/shapes/outline/<class> 16x16 grayscale PNGs of circles, squares and crosses, drawn thin
  data/shapes/filled/<class>  the same shapes filled, shifted and noisy (the target domain)

Usage: python3 examples/own-data/make-data.py [--to DIR]   (default: data/ beside this file)
The same seed gives the same bytes, so the examples' figures can be reproduced.
"""

import argparse
import io
import math
import os
import random
import struct
import zipfile
import zlib


def npy(array_bytes, descr, shape):
    """One .npy file (format 1.0): magic, a header padded to 64 bytes, the raw values."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr,
        ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else ""),
    )
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + array_bytes


def write_npz(path, x_rows, y):
    """numpy.savez's layout: a zip of x.npy and y.npy, stored uncompressed."""
    dim = len(x_rows[0])
    xs = b"".join(struct.pack("<%df" % dim, *row) for row in x_rows)
    ys = struct.pack("<%dq" % len(y), *y)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", npy(xs, "<f4", (len(x_rows), dim)))
        z.writestr("y.npy", npy(ys, "<i8", (len(y),)))


def spirals(rng, per_class=400, arms=3):
    x, y = [], []
    for k in range(arms):
        for _ in range(per_class):
            t = rng.uniform(0.15, 1.0)
            angle = 3.5 * t + 2 * math.pi * k / arms
            r = t + rng.gauss(0, 0.04)
            x.append((r * math.cos(angle), r * math.sin(angle)))
            y.append(k)
    return x, y


def moons(rng, n, rotation_deg):
    """scikit-learn's two moons with Gaussian noise 0.1, centred, rotated."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    rows = []
    for i in range(n):
        t = rng.uniform(0, math.pi)
        if i % 2 == 0:
            px, py, name = math.cos(t), math.sin(t), "upper"
        else:
            px, py, name = 1 - math.cos(t), 0.5 - math.sin(t), "lower"
        px, py = px - 0.5 + rng.gauss(0, 0.1), py - 0.25 + rng.gauss(0, 0.1)
        rows.append((c * px - s * py, s * px + c * py, name))
    return rows


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("x1,x2,moon\n")
        for a, b, name in rows:
            f.write("%.6f,%.6f,%s\n" % (a, b, name))


def png(path, pixels, size):
    """An 8-bit grayscale PNG: the signature, IHDR, one IDAT of unfiltered rows, IEND."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(pixels[r * size:(r + 1) * size]) for r in range(size))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def shape_image(rng, kind, size, filled, noise):
    cx = size / 2 + (rng.uniform(-2, 2) if filled else rng.uniform(-0.5, 0.5))
    cy = size / 2 + (rng.uniform(-2, 2) if filled else rng.uniform(-0.5, 0.5))
    half = rng.uniform(3.5, 5.5)
    width = 1.0 if not filled else half
    out = []
    for yy in range(size):
        for xx in range(size):
            dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
            if kind == "circle":
                d = abs(math.hypot(dx, dy) - half)
                on = math.hypot(dx, dy) <= half if filled else d <= width * 0.6
            elif kind == "square":
                m = max(abs(dx), abs(dy))
                on = m <= half if filled else abs(m - half) <= width * 0.6
            else:  # cross
                arm = 1.6 if filled else 0.6
                on = (abs(dx) <= arm and abs(dy) <= half) or (abs(dy) <= arm and abs(dx) <= half)
            v = 230 if on else 20
            v += rng.gauss(0, noise)
            out.append(max(0, min(255, int(v))))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--to", default=os.path.join(here, "data"))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.to, exist_ok=True)

    x, y = spirals(rng)
    write_npz(os.path.join(args.to, "spirals.npz"), x, y)
    write_csv(os.path.join(args.to, "moons-source.csv"), moons(rng, 2000, 0.0))
    write_csv(os.path.join(args.to, "moons-target.csv"), moons(rng, 2000, 35.0))
    for style, filled, noise in [("outline", False, 8.0), ("filled", True, 45.0)]:
        for kind in ["circle", "square", "cross"]:
            folder = os.path.join(args.to, "shapes", style, kind)
            os.makedirs(folder, exist_ok=True)
            for i in range(200):
                png(os.path.join(folder, "%03d.png" % i), shape_image(rng, kind, 16, filled, noise), 16)
    print("wrote %s: spirals.npz, moons-source.csv, moons-target.csv, shapes/{outline,filled}" % args.to)


if __name__ == "__main__":
    main()
