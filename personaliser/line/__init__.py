"""The personalisation line (DESIGN §5): feeder → encoder heads → print stations → QA → output.

::

    report = await run_line(store, keystore, load_line_config("line.toml"), out_dir="out",
                            control=control, observer=metrics)
    report.as_dict()   # what report.json holds

- :mod:`~personaliser.line.config`: ``line.toml`` (:class:`LineSettings`, defaults in-process)
- :mod:`~personaliser.line.runtime`: :func:`run_line`, the asyncio runtime
- :mod:`~personaliser.line.recovery`: :func:`recover`, run at every start
- :mod:`~personaliser.line.control`: :class:`LineControl` (pause, resume, drain, stop, abort)
- :mod:`~personaliser.line.observer`: :class:`LineObserver` (metrics) and :class:`NullObserver`
- :mod:`~personaliser.line.clock`: :class:`VirtualTimeLoop`, :func:`run_virtual` (faster than
  real time)
- :mod:`~personaliser.line.stations`: the device adapters (heads, QA, print jobs, outputs)
"""

from personaliser.line.clock import VirtualTimeLoop, run_virtual
from personaliser.line.config import LineSettings, load_line_config
from personaliser.line.control import Ending, LineControl, LineState
from personaliser.line.observer import LineObserver, NullObserver
from personaliser.line.recovery import RESTART_STATION, RecoveryReport, recover
from personaliser.line.report import BatchReport, LineProgress, LineReport, StationReport
from personaliser.line.runtime import run_line

__all__ = [
    "RESTART_STATION",
    "BatchReport",
    "Ending",
    "LineControl",
    "LineObserver",
    "LineProgress",
    "LineReport",
    "LineSettings",
    "LineState",
    "NullObserver",
    "RecoveryReport",
    "StationReport",
    "VirtualTimeLoop",
    "load_line_config",
    "recover",
    "run_line",
    "run_virtual",
]
