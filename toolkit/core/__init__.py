"""The ground floor: errors, atomic files, text, the one "usable" and "duplicate" rules.

Every stage may import it; it imports no stage."""
