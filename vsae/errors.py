"""User-facing errors: one line, a hint at what to do next, a non-zero exit from the CLI."""


class VsaeError(Exception):
    """A problem with the user's input or environment, reported as one line (exit code 2)."""

    exit_code = 2


class NonFiniteLoss(VsaeError):
    """The loss became NaN/inf: training stops at once with the raw terms."""

    def __init__(self, step: int, raw: dict):
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in raw.items())
        super().__init__(f"non-finite loss at step {step} ({shown}); the last checkpoint is intact")
        self.step = step
        self.raw = raw
