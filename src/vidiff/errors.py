"""One exception hierarchy: the CLI turns any VidiffError into a one-line message and exit code 2."""


class VidiffError(Exception):
    """A problem the user can fix; `argument` names the CLI argument (or API parameter) at fault."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message


class InvalidArgument(VidiffError):
    """A value that is out of range, malformed or inconsistent with the model."""


class LoadError(VidiffError):
    """A model, motion module or file that cannot be found, read or recognised."""


class OutputExists(VidiffError):
    """The output path exists and `--overwrite` was not given."""


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a render: `checkpoint` (or None) resumes it, `job` is what was running."""

    def __init__(self, checkpoint, job) -> None:
        super().__init__("interrupted")
        self.checkpoint, self.job = checkpoint, job
