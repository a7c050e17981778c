"""A new metric is one file: dropped into ``tokenuni/metrics/``, it is registered, its rows are in the catalogue and
its options are validated and defaulted with the config, with nothing else edited."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

NEW_METRIC = '''
"""Mean token norm per layer (a test metric: the whole of what adding a metric takes)."""
from __future__ import annotations

from tokenuni.metrics.base import Metric, MetricValue, TokenBatch
from tokenuni.metrics.rows import Row


class MeanNorm(Metric):
    name = "mean_norm"
    options_schema = """
        description: Mean Euclidean norm of the layer's tokens.
        properties:
          special_tokens: {type: boolean, default: false}
          scale: {type: number, default: 1.0, description: Multiply the mean by this.}
    """
    rows = (Row("mean_norm", "mean token norm", unit="norm"),)

    def __init__(self, device="cpu", scale: float = 1.0, **options):
        super().__init__(device, **options)
        self.scale, self.total, self.count = float(scale), 0.0, 0

    def _update(self, batch: TokenBatch) -> None:
        import torch

        self.total += float(torch.linalg.vector_norm(batch.x, dim=1).sum())
        self.count += len(batch)

    def compute(self) -> list[MetricValue]:
        return [MetricValue("mean_norm", self.scale * self.total / self.count, self.count)] if self.count else []
'''

PROBE = '''
import json
import numpy as np
from tokenuni.config import validate_config
from tokenuni.metrics import METRICS, metric_on_matrix
from tokenuni.metrics.rows import catalogue
config = validate_config({"models": {"m": {"id": "m"}}, "corpora": {"c": {"mirror": {"format": "lines", "files": ["x"]}}},
                          "metrics": {"mean_norm": {"scale": 2.0}}})
x = np.full((4, 3), 1.0)
values = metric_on_matrix("mean_norm", {"scale": 2.0}, x)
bad = None
try:
    validate_config({"models": {"m": {"id": "m"}}, "corpora": {"c": {"mirror": {"format": "lines", "files": ["x"]}}},
                     "metrics": {"mean_norm": {"scael": 2.0}}})
except Exception as error:
    bad = str(error)
print(json.dumps({"registered": "mean_norm" in METRICS, "last": list(METRICS)[-1],
                  "row": catalogue()["mean_norm"].label, "options": config["metrics"]["mean_norm"],
                  "value": values[0].value, "bad": bad}))
'''


@pytest.fixture(scope="module")
def package_with_a_new_metric(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("newmetric")
    shutil.copytree(REPO / "tokenuni", root / "tokenuni", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tokenuni" / "metrics" / "zz_mean_norm.py").write_text(textwrap.dedent(NEW_METRIC))
    return root


def test_a_new_metric_is_one_file(package_with_a_new_metric):
    env = {**os.environ, "PYTHONPATH": str(package_with_a_new_metric)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=package_with_a_new_metric, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["registered"] and seen["last"] == "mean_norm"  # module order: zz_ comes last
    assert seen["row"] == "mean token norm"
    assert seen["options"] == {"enabled": True, "special_tokens": False, "scale": 2.0}  # defaults filled in
    assert seen["value"] == pytest.approx(2.0 * 3 ** 0.5)
    assert "metrics.mean_norm.scael" in seen["bad"] and "did you mean 'scale'" in seen["bad"]


def test_every_metric_declares_its_config_entry():
    from tokenuni.config import load_schema
    from tokenuni.metrics import METRICS
    from tokenuni.metrics.base import REGISTRY

    assert METRICS == REGISTRY and len(METRICS) == 12
    entries = load_schema()["properties"]["metrics"]["properties"]
    assert list(entries) == list(METRICS)
    for name, entry in entries.items():
        assert entry["type"] == "object" and entry["additionalProperties"] is False, name
        assert entry["properties"]["enabled"] == {"type": "boolean", "default": True}, name
        assert entry.get("description"), name


def test_a_metric_without_a_usable_entry_is_refused():
    from tokenuni.metrics.base import Metric, MetricError

    class NoEntry(Metric):  # defined outside the package: not registered
        name = "no_entry"

        def _update(self, batch):
            pass

        def compute(self):
            return []

    from tokenuni.metrics import METRICS
    assert "no_entry" not in METRICS
    with pytest.raises(MetricError, match="no_entry.*options_schema"):
        NoEntry.config_schema()
    NoEntry.options_schema = "properties: {k: {type: integer}}"  # no description
    with pytest.raises(MetricError, match="no_entry.*description"):
        NoEntry.config_schema()


def test_two_metrics_of_one_name_are_refused():
    from tokenuni.metrics import METRICS
    from tokenuni.metrics.base import Metric, MetricError

    with pytest.raises(MetricError, match="two metrics are named 'spectrum'"):
        type("Impostor", (Metric,), {"name": "spectrum", "__module__": "tokenuni.metrics.impostor",
                                     "_update": lambda self, batch: None, "compute": lambda self: []})
    assert METRICS["spectrum"].__module__ == "tokenuni.metrics.spectrum"
