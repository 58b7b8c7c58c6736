"""What the benchmark scripts share: device sync and the practical matmul peak they compare with."""
import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device="cpu", size: int = 4096, dtype=torch.float32, repeats: int = 5) -> float:
    """GFLOP/s of a size x size matmul (median of ``repeats``): the practical peak on this machine."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - started)
    return 2 * size ** 3 / statistics.median(times) / 1e9
