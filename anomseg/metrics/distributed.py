"""Reducing evaluator state across torch.distributed ranks."""

from __future__ import annotations

from anomseg.metrics.components import ComponentStats


def reduce_distributed(metrics, group=None):
    """Merge the :class:`AnomalyMetrics` of every rank; every rank gets the merged evaluator.

    Without an initialised process group the evaluator is returned unchanged. Per-image records,
    histograms and component statistics are gathered with ``all_gather_object``; with a
    ``"best_f1"`` component threshold, the threshold is found on the merged histogram and each rank
    evaluates its own spilled score maps at it before the component statistics are gathered.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return metrics
    from anomseg.metrics.evaluator import AnomalyMetrics

    world = dist.get_world_size(group)
    states = [None] * world
    dist.all_gather_object(states, metrics.state_dict(), group=group)
    merged = AnomalyMetrics.from_state(states[0])
    for state in states[1:]:
        merged.merge(AnomalyMetrics.from_state(state))
    if metrics.components and metrics.component_threshold == "best_f1":
        threshold = merged.component_threshold_value()
        local = metrics.spilled_components(threshold)
        parts = [None] * world
        dist.all_gather_object(parts, (local.siou, local.ppv), group=group)
        stats = ComponentStats()
        for siou, ppv in parts:
            stats.siou += siou
            stats.ppv += ppv
        merged._resolved_components = (stats, threshold)
    return merged
