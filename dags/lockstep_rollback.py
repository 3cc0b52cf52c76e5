"""lockstep_rollback: return all traffic to the previous champion at once, and say why.

Triggered by hand from the Airflow UI when a promoted version misbehaves after its
rollout. Plan of a run: **roll_back** -> **verify**.

- **roll_back** finds the previous champion in the registry's champion history (or
  takes Param ``to_version``), checks its slot is still loaded (it is for the rollback
  window after a rollout; afterwards its index is retired and must be rebuilt with
  ``lockstep_reembed``), then moves 100 % of traffic to it in one routing transaction
  and moves alias ``champion`` back. The reason goes into the routing history, the
  champion history, a tag on the version rolled back from, the rollout record and an
  alert.
- **verify** reads the routing table back and probes the serving replicas until they
  answer with the restored version.

A rollout running at the time notices the change at its next look and stops as
"overridden", leaving this traffic alone.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, task

from lockstep.ops.dag_support import (
    DEFAULT_ARGS,
    NO_RETRY,
    on_failure,
    serving_url_default,
    time_limits,
)

LIMITS = time_limits("lockstep_rollback")  # every task's execution_timeout and the run's dagrun_timeout


@dag(
    dag_id="lockstep_rollback",
    description="Return all traffic to the previous champion at once; move the aliases back; record why.",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=LIMITS.run,
    # Not in the lockstep_rollout pool: a rollback must never queue behind the rollout it undoes.
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure, "execution_timeout": LIMITS.task},
    tags=["lockstep", "rollout"],
    doc_md=__doc__,
    params={
        # No default and no null: the trigger form (and any REST or CLI trigger) refuses a run without a reason.
        "reason": Param(
            type="string", minLength=1, pattern=r"\S", title="Reason", section="Rollback",
            description="Why you roll back (required; recorded with the change, in the routing and champion history).",
        ),
        "to_version": Param(
            None, type=["null", "string"], title="Return to version", section="Rollback",
            description="Version to return to. Empty: the champion before the current one (registry champion history).",
        ),
        "serving_url": Param(
            serving_url_default(), type="string", title="Serving replicas", section="Verify",
            description="Serving replicas to verify, each directly, comma-separated (default: LOCKSTEP_SERVING_URLS); empty: check the routing table only.",
        ),
        "verify_timeout_seconds": Param(
            30, type="number", minimum=1, title="Verification timeout (s)", section="Verify",
            description="How long the replicas may take to follow.",
        ),
    },
)
def lockstep_rollback():
    @task
    def roll_back(params=None, run_id=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from lockstep.rollout import steps as rollout

        try:
            return rollout.rollback_to_previous(params["reason"], params["to_version"], actor="lockstep_rollback", rollback_id=run_id)
        except rollout.RolloutError as exc:  # nothing loaded to return to (the form already required a reason)
            raise AirflowFailException(str(exc)) from exc

    @task(**NO_RETRY)
    def verify(result: dict, params=None) -> dict:
        from lockstep.rollout import steps as rollout
        from lockstep.systems import steps as system

        return rollout.verify_serving(
            result["to_version"], result["generation"], params["serving_url"], params["verify_timeout_seconds"],
            probe=system.verify_probe(),
        )

    verify(roll_back())


dag = lockstep_rollback()
