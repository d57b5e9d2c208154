"""The error that ends a tensor-parallel group (no torch import: the CLI catches it)."""


class TensorParallelFailure(BaseException):
    """A rank failed or the ranks fell out of step: the group cannot run another step.

    A BaseException (like KeyboardInterrupt): the engine contains an Exception inside a step as
    one request's fault and goes on, but no request can go on without the group.
    """
