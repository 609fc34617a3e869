"""Stage 1, collect: search engines, bounded downloads and the class folders a crawl fills."""
