"""The ground floor: errors, atomic files, text, the one "usable" and "duplicate" rules, and
the table of the models the toolkit builds.

Every stage may import it; it imports no stage."""
