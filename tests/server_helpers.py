"""Shared by the server tests: reading Prometheus metrics."""

from __future__ import annotations


def metric(text: str, name: str, **labels) -> float:
    """The sum of the samples called `name` (with these labels) in Prometheus text `text`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
