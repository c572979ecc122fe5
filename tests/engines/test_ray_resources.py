"""engine='ray': a resource request checked against the cluster's nodes before it is sent
(issue 26); the pure check, no Ray needed (tests/engines/test_ray.py runs it on a cluster)."""

from __future__ import annotations

import pytest

from hopaudit.engines.ray import check_resources
from hopaudit.errors import HopauditError

TWO_NODES = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 2.0, "GPU": 1.0}]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_gpus": 2}, "num_gpus=2 per actor .* GPU 0, 1 on its 2 nodes .* at most 1"),
        ({"num_cpus": 3}, "num_cpus=3 per actor .* CPU 2, 2 on its 2 nodes"),
        ({"num_gpus": 1, "concurrency": 2}, r"num_gpus=1 per actor \(x 2 actors\)"),
        ({"num_cpus": "1"}, "must be a number >= 0"),
        ({"num_gpus": float("nan")}, "must be a number >= 0"),
    ],
)
def test_requests_no_node_can_meet_are_refused(options, message):
    with pytest.raises(HopauditError, match=message):
        check_resources(options, TWO_NODES)


@pytest.mark.parametrize(
    "options",
    [None, {}, {"num_cpus": 2}, {"num_gpus": 1}, {"num_cpus": 1, "concurrency": 4}],
)
def test_requests_a_node_can_meet_pass(options):
    check_resources(options, TWO_NODES)
