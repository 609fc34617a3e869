"""Stage 3, data: a folder of class folders packed into a clean, stratified train/test archive."""
