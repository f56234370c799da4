"""Statistics overhead: digits CNN SNN (p = 3), 540 test images, T = 8 and 64, statistics on vs off.

One thread, process CPU time, best of 5 runs interleaved (less sensitive to a shared machine):
    OMP_NUM_THREADS=1 python bench/statistics_overhead.py
"""
import time, sys
import torch
import na_kernels
from na_kernels.app.models import digits_cnn
from na_kernels.nn import replace_activations, to_snn
from na_kernels.app.datasets import digits_split
torch.manual_seed(0)
torch.set_num_threads(1)  # CPU time of one thread: less sensitive to a shared machine
_, test = digits_split()
x = ((test.images.float() - 4.88) / 6.02)[:540]
x = torch.cat([x, x[:1]])[:540]
m, _ = replace_activations(digits_cnn(), p=3, lam=2.0)
snn = to_snn(m.eval(), T=8)
def bench(T, n=5):
    best = {True: 1e9, False: 1e9}
    with torch.no_grad():
        snn(x, T=T)
        for _ in range(n):
            for rec in (True, False):  # interleaved
                snn.record_statistics(rec)
                t = time.process_time(); snn(x, T=T); best[rec] = min(best[rec], time.process_time() - t)
    return best[True] * 1e3, best[False] * 1e3
for T in (8, 64):
    on, off = bench(T)
    print(f"T={T}: statistics on {on:.0f} ms, off {off:.0f} ms, overhead {100 * (on / off - 1):.0f} %")
