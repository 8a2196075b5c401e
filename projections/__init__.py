"""projections: pure folds of log records into registry state."""

__all__: list[str] = []
