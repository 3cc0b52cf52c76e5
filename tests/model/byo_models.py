"""Models defined only in the tests: plain MLflow pyfunc models, nothing from ``lockstep``.

They stand for a team's own model (a sentence-transformer, an ONNX export): the code file
is written next to the test's data and logged as "models from code", exactly as such a team
would log theirs, and Lockstep sees only the MLflow model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_CODE = '''
import joblib
import mlflow
import numpy as np


def _texts(model_input):
    if hasattr(model_input, "columns"):
        return [str(t) for t in model_input.iloc[:, 0]]
    return [str(t) for t in model_input]


class TeamModel(mlflow.pyfunc.PythonModel):
    """A TF-IDF + SVD pipeline the team fitted with scikit-learn, or a broken variant for the tests."""

    def load_context(self, context):
        self.kind = (context.model_config or {}).get("kind", "good")
        self.pipeline = joblib.load(context.artifacts["pipeline"]) if "pipeline" in context.artifacts else None

    def predict(self, context, model_input, params=None):
        texts = _texts(model_input)
        if self.kind == "good":
            return self.pipeline.transform(texts).astype("float32")
        base = np.array([[len(t) % 7 + 1.0, t.count(" ") + 1.0, 1.0] for t in texts], dtype="float32")
        if self.kind == "flat":
            return base[:, 0]
        if self.kind == "nan":
            base[[i for i, t in enumerate(texts) if "fox" in t], 0] = np.nan
            return base
        if self.kind == "rows":
            return np.vstack([base, base[:1]])
        if self.kind == "changing":
            return np.hstack([base] * (2 if len(texts) > 1 else 1))
        if self.kind == "random":
            return base + np.random.default_rng().normal(size=base.shape).astype("float32")
        if self.kind == "batch_dependent":
            return base * len(texts)
        if self.kind == "strings":
            return np.array([["x"] * 3 for _ in texts])
        if self.kind == "raises":
            raise RuntimeError("the GPU is not there")
        raise ValueError(f"unknown kind {self.kind}")


mlflow.models.set_model(TeamModel())
'''


def fit_pipeline(texts: list[str], dim: int = 32, seed: int = 0) -> Any:
    """The team's own vector space: scikit-learn TF-IDF, SVD and L2 norm, fitted here."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    return make_pipeline(
        TfidfVectorizer(min_df=2, max_df=0.5, sublinear_tf=True, stop_words="english"),
        TruncatedSVD(n_components=dim, random_state=seed),
        Normalizer(),
    ).fit(texts)


def save_team_model(folder: Path, kind: str = "good", pipeline: Any = None) -> Path:
    """Save a team model as a local MLflow model directory; its path."""
    import joblib
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    code = folder / "team_model.py"
    code.write_text(MODEL_CODE, encoding="utf-8")
    artifacts = {}
    if pipeline is not None:
        joblib.dump(pipeline, folder / "pipeline.joblib")
        artifacts["pipeline"] = str(folder / "pipeline.joblib")
    target = folder / f"model-{kind}"
    mlflow.pyfunc.save_model(
        str(target), python_model=str(code), artifacts=artifacts or None, model_config={"kind": kind},
        pip_requirements=["mlflow", "scikit-learn", "numpy", "joblib"],
    )
    return target


def log_team_model(tracking_uri: str, folder: Path, kind: str = "good", pipeline: Any = None) -> str:
    """Log a team model to a run of its own experiment (as the team would); its runs:/ URI."""
    import mlflow

    local = save_team_model(folder, kind, pipeline)
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name("team-models")
    experiment_id = found.experiment_id if found else client.create_experiment(
        "team-models", artifact_location=(folder / "team-artifacts").resolve().as_uri()
    )
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(local), "team_model")
    client.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/team_model"
