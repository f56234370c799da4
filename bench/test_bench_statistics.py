"""Spike statistics on against off: SNN inference (T = 8, no_grad) of the networks of
``bench/statistics_overhead.py`` (pooling between IF layers and convs, the demo's CNN, a small
VGG, resnet20 with residual sums), each with statistics recorded and not; the two rows of a
group differ by the statistics' cost (images/s in extra_info["images_per_s"]).
``python bench/statistics_overhead.py`` prints the overhead as interleaved medians.
"""

import pytest
import statistics_overhead as overhead
import torch
from benchlib import DEVICE, run_case

T = 8


@pytest.mark.parametrize("net", ["pooled", "digits", "vgg", "resnet"])
@pytest.mark.parametrize("record", [False, True], ids=["statistics_off", "statistics_on"])
def test_snn_inference_statistics(benchmark, copy_bandwidth, net, record):
    snn, x = overhead.converted(net, T)
    snn = snn.to(DEVICE)
    x = x.to(DEVICE)
    snn.record_statistics(record)

    def run():
        with torch.no_grad():
            return snn(x)

    run_case(
        benchmark,
        run,
        group=f"statistics {net} T={T} batch {x.shape[0]}",
        impl="statistics_on" if record else "statistics_off",
        copy_bandwidth=copy_bandwidth,
        items=x.shape[0],
        item_name="images",
        min_rounds=3,
        info={"op": "snn_statistics", "net": net, "T": T, "batch": x.shape[0], "statistics": record},
    )
