"""ncstudy: neural-collapse studies at scale (study YAML -> Ray Tune/Train -> MLflow)."""

__version__ = "0.1.0"
