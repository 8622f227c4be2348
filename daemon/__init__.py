"""dropzone: drop a file in a folder; find it in object storage, Postgres and MLflow."""

__version__ = "0.1.0"
