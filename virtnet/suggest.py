""""Did you mean": the closest of the names a place accepts, for a misspelt verb, element or attribute."""

CUTOFF = 0.75  # difflib's similarity ratio: 'lst'/'list', 'modle'/'model', 'typ'/'type' pass; 'foo'/'model' not


def closest(word, choices):
    """The one of CHOICES closest to WORD, when close enough to be what was meant; else None."""
    import difflib  # only when a message needs it

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=CUTOFF)
    return found[0] if found else None
