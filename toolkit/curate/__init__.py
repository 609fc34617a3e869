"""Stage 2, curate: review a crawl for off-topic and mislabeled images, and what a person decided."""
