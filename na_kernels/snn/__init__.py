"""na_kernels.snn: the SNN runtime — the multi-step network ``to_snn`` returns, its spike and
synaptic-operation statistics, and per-sample early exit.

``network`` (SpikingNetwork, TimeRepeat), ``stats`` (SynapseMeter, collect_statistics,
format_statistics), ``early_exit`` (ExitRule, run_early_exit, evaluate_early_exit,
exit_tradeoff, format_tradeoff, score_exits). Everything here is re-exported by ``na_kernels.nn``.
"""

from .._lazy import lazy_exports

_LAZY = {
    **dict.fromkeys(("SpikingNetwork", "TimeRepeat"), "na_kernels.snn.network"),
    **dict.fromkeys(("SynapseMeter", "collect_statistics", "format_statistics"), "na_kernels.snn.stats"),
    **dict.fromkeys(
        (
            "EarlyExitResult",
            "ExitRule",
            "evaluate_early_exit",
            "exit_tradeoff",
            "format_tradeoff",
            "run_early_exit",
            "score_exits",
        ),
        "na_kernels.snn.early_exit",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
