"""The embedded stack's defaults point at this repository's DAGs and plugins.

The package move of issue 11 put stack.py one folder deeper and its default DAG folder
became include/dags: Airflow then parsed nothing and ``lockstep up``/``demo`` waited for
DAGs that never came. This checks the defaults without starting anything.
"""

from __future__ import annotations

from pathlib import Path

from lockstep.ops.stack import StackConfig

REPO = Path(__file__).resolve().parents[2]


def test_the_default_folders_are_the_repositorys_dags_and_plugins(tmp_path):
    config = StackConfig(home=tmp_path)
    assert config.dags_folder == REPO / "dags"
    assert config.plugins_folder == REPO / "plugins"
    assert {p.stem for p in config.dags_folder.glob("lockstep_*.py")} >= {
        "lockstep_retrain", "lockstep_reembed", "lockstep_rollout", "lockstep_rollback", "lockstep_drift",
    }
    assert (config.plugins_folder / "lockstep_plugin.py").is_file()
