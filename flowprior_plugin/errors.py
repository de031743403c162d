"""Errors that carry a message meant for the user, printed by the CLI as one line (no traceback)."""


class FlowPriorError(Exception):
    """Base class: the message names the problem (file, option, shape, expected vs got)."""


class OptionError(FlowPriorError, ValueError):
    """An option file asks for something that cannot work (unknown type, missing key, bad value)."""


class CheckpointMismatchError(FlowPriorError, ValueError):
    """A checkpoint holds a different architecture from the one the options build."""


class MissingWeightsError(FlowPriorError, FileNotFoundError):
    """Pretrained weights (VGG19, AlexNet, a checkpoint) are absent and cannot be downloaded."""


class CheckpointReadError(FlowPriorError, ValueError):
    """A checkpoint file is corrupt, truncated or not written by ``torch.save``."""


class InputShapeError(FlowPriorError, ValueError):
    """An input tensor's shape does not fit the network (e.g. SRFlow's LR sides in training)."""
