"""What a ``lockstep_drift`` run is told (``DriftCheckOptions``): each field is a Param of the DAG.

The DAG's defaults suit its hourly schedule (``checks_per_day`` 24, a day accumulated);
``lockstep.drift.steps.run_check`` keeps its own library defaults. Kept free of heavy
imports: the DAG's form is built from these fields when its file is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lockstep.core.config.knobs import knob

# The sections of the drift DAG's form, in the order it shows them.
WINDOW, FALSE_ALARMS, THRESHOLDS, RUN = "Window", "False alarms", "Thresholds", "Run"


@dataclass(frozen=True)
class DriftCheckOptions:
    """One drift check's window, false-alarm budget, thresholds and run limits."""

    window_hours: float = knob(
        1.0, "Window (hours)", WINDOW,
        "Length of the window that ends at the run's time; click-through compares it with the window before.",
        type="number", exclusiveMinimum=0, maximum=24 * 30,
    )
    accumulate_hours: float = knob(
        24.0, "Accumulated span (hours)", WINDOW,
        "Also test the records of this longer span (the union of the last windows), so a slow drift adds up "
        "instead of starting over every hour. 0 or at most window_hours: off.",
        type="number", minimum=0, maximum=24 * 30,
    )
    false_alarm_rate: float = knob(
        0.01, "False alarms per day", FALSE_ALARMS,
        "Chance of a false drift alarm per day when nothing moved. Spent evenly over the day's checks (Bonferroni) "
        "and shared by the tests of a check (Holm): vocabulary and domain-classifier permutation tests, the "
        "segment (cluster) test, click-through.",
        type="number", exclusiveMinimum=0, maximum=0.5,
    )
    checks_per_day: int = knob(
        24, "Checks per day", FALSE_ALARMS,
        "Checks that share the daily false-alarm rate: 24 for the hourly schedule, so each check tests at "
        "false_alarm_rate / 24.",
        type="integer", minimum=1, maximum=1440,
    )
    unseen_token_share_excess: float = knob(
        0.05, "Excess of unseen query words", THRESHOLDS,
        "Search queries only: drift when the share of query words never seen in the training data exceeds that "
        "of a same-sized reference sample by more than this.",
        type="number", minimum=0, maximum=1,
    )
    ctr_relative_drop: float = knob(
        0.20, "Click-through drop", THRESHOLDS,
        "Drift when the champion's click-through fell by more than this share against the previous window and "
        "the drop is significant (one-sided z-test, within the false-alarm level).",
        type="number", minimum=0, maximum=1,
    )
    min_records: int = knob(
        50, "Fewest records to judge", THRESHOLDS,
        "Fewest new records (and, separately, queries) in the window for them to be judged; fewer gives "
        "'not drifted' with a note.",
        type="integer", minimum=10,
    )
    max_samples: int = knob(
        2000, "Most records sampled", RUN,
        "Records, queries and reference texts sampled per side at most (bounds the run time).",
        type="integer", minimum=50, maximum=20000,
    )
    force: bool = knob(
        False, "Emit the drift asset anyway", RUN,
        "Emit the drift asset even when no drift is found (demos: schedules a retraining).", type="boolean",
    )
