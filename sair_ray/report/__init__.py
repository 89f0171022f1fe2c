"""Reading SAIR's decision logs for people: per-round explanations (`sair decisions`) and
an HTML report with figures (`sair report`)."""

from sair_ray.report.records import DecisionRecords, LogError, load, resolve

__all__ = ["DecisionRecords", "LogError", "load", "resolve"]
