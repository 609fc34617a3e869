"""Stage 5, ship: evaluate and predict with a saved run, and export it for phones and servers."""
