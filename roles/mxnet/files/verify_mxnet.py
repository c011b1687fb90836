"""Runs on a host, in the course's MXNet venv: the mxnet role's verification (roles/mxnet).

MXNet imports, its CUDA feature matches the installed build (mxnet or mxnet-cuXXX), it sees every
GPU nvidia-smi lists (none for the CPU build), and it computes a small product on the GPU or the
CPU. The role sends this file on stdin to the venv's `python -I -`, followed by a call of `main`
with the venv's site-packages glob; nothing runs on import.
"""
import glob
import os
import subprocess

import mxnet as mx
from mxnet.runtime import Features


def main(site_glob: str) -> None:
    site = glob.glob(site_glob)[0]
    gpu_build = bool(glob.glob(os.path.join(site, "mxnet_cu*.dist-info")))
    try:
        gpus = len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines())
    except FileNotFoundError:
        gpus = 0
    assert Features().is_enabled("CUDA") == gpu_build, "CUDA feature flag does not match the installed build"
    assert mx.context.num_gpus() == (gpus if gpu_build else 0), ("num_gpus", mx.context.num_gpus(), gpus)
    ctx = mx.gpu(0) if gpu_build else mx.cpu()
    a = mx.nd.array([[1, 2], [3, 4]], ctx=ctx)
    product = mx.nd.dot(a, a).asnumpy().tolist()
    assert product == [[7, 10], [15, 22]], product
    print("mxnet", mx.__version__, "on", ctx, "computed", product)
