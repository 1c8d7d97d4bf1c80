"""The one exception type for a user's mistake: the CLI prints it as a single line."""


class UniEmoError(Exception):
    """A problem with the user's input, stated with its fix, e.g.
    ``UniEmoError("no model_index.json in /x: expected a diffusers Stable Diffusion directory")``.
    The CLI prints ``error: <message>`` and exits with status 2, never a traceback."""
