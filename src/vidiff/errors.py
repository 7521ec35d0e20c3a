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


class WriteFailed(VidiffError):
    """Writing the output failed (a full disk, a lost mount): nothing partial is left; `checkpoint` (or None)
    holds the denoised latents, so a resume only writes again."""

    def __init__(self, output, error: OSError, checkpoint) -> None:
        reason = error.strerror or str(error)
        kept = f"; resume with --resume {checkpoint}" if checkpoint is not None else ""
        super().__init__("--output", f"writing {output} failed: {reason}{kept}")
        self.checkpoint = checkpoint


class RenderInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a render: `checkpoint` (or None) resumes it, `job` is what was running."""

    def __init__(self, checkpoint, job) -> None:
        super().__init__("interrupted")
        self.checkpoint, self.job = checkpoint, job
