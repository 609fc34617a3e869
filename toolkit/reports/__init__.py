"""Pages for people: a run's metrics, report.html and MODEL_CARD.md, written from a run's files."""
