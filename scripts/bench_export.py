"""Every export format and quantization of a real-size model: parity with Keras, file size.

Uses the run that scripts/bench_unknown.py trains (extract, MobileNetV2 with the real
ImageNet weights, flowers 3 x 400 at 224 px; it trains it when it is missing), exports it
in each format in turn with `toolkit export`, and prints what each export.json records:
test accuracy in the deploy runtime next to Keras', the largest probability difference,
and the model's size. Each export replaces the last in RUN/export/.

    python scripts/bench_export.py [--run runs/flowers-unknown] [--cases litert:int8,onnx:none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _bench import machine, table, toolkit_command

CASES = [("litert", "none"), ("litert", "float16"), ("litert", "int8"),
         ("saved_model", "none"), ("onnx", "none")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/flowers-unknown")
    parser.add_argument("--cases", default=",".join(f"{f}:{q}" for f, q in CASES),
                        help="FORMAT:QUANTIZE, comma-separated  [default: every one]")
    args = parser.parse_args()
    if not (Path(args.run) / "model.keras").exists():
        subprocess.run([sys.executable, str(Path(__file__).parent / "bench_unknown.py"),
                        "--run", args.run], check=True)
    rows = []
    for fmt, quantize in (case.split(":") for case in args.cases.split(",")):
        start = time.perf_counter()
        subprocess.run(toolkit_command("export", args.run, "--format", fmt, "--quantize", quantize),
                       check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        seconds = time.perf_counter() - start
        info = json.loads((Path(args.run) / "export" / "export.json").read_text())
        p = info["parity"]
        rows.append([fmt, quantize, f"{info['size_bytes'] / 2**20:.1f}", p["runtime"],
                     f"{p['keras_accuracy']:.4f}", f"{p['exported_accuracy']:.4f}",
                     f"{p['same_label']:.4f}", f"{p['max_probability_difference']:.4f}",
                     f"{seconds:.0f}"])
    config = json.loads((Path(args.run) / "config.json").read_text())
    print(f"{args.run}: {config['strategy']} / {config['backbone']} (--weights {config['weights']}), "
          f"{info['input']['shape'][1]} px, {p['test_images']} test images; {machine()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(table(["format", "quantize", "MiB", "runtime", "Keras accuracy", "exported accuracy",
                 "same label", "largest probability difference", "export s"], rows))


if __name__ == "__main__":
    main()
