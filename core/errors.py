"""Errors the CLI turns into exit codes: bad input is 2, a failed stage is 1."""


class InputError(Exception):
    """Bad input (config, data, arguments): one line per problem, exit code 2, no traceback."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class StageFailed(Exception):
    """A stage process failed: the message names the stage, its log and how to resume; exit code 1."""
