"""Running Lockstep: the embedded stack, demo, traffic simulator, retention, alerts, UI data, DAG support."""
