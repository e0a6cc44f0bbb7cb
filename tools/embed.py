#!/usr/bin/env python3
"""Turns a file into a C source defining a byte array and its size: how the dataset is built into userd."""
import sys

src, dst, name = sys.argv[1:4]
data = open(src, "rb").read()
with open(dst, "w") as out:
    out.write(f"/* generated from {src.split('/')[-1]} by tools/embed.py: do not edit */\n")
    out.write(f"const char {name}[] = {{\n")
    for i in range(0, len(data), 20):
        out.write(",".join(str(b) for b in data[i:i + 20]) + ",\n")
    out.write("0};\n")
    out.write(f"const unsigned long {name}_size = {len(data)};\n")
