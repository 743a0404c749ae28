"""`AiraMoeError`: a refusal of ours (a bad option, file or combination), reported as one line, not a traceback."""


class AiraMoeError(ValueError):
    """Bad input to aira_moe; the message names the field or file, the value and what is allowed."""
