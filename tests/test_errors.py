"""One vocabulary for user mistakes: every refusal the engine makes is a UserError; a bare ValueError is not."""

from __future__ import annotations

import pytest

from segdemo import errors
from segdemo.core.config import RunConfig
from segdemo.errors import ConfigError, UserError, is_user_error


def test_every_refusal_is_a_user_error_and_old_imports_still_work():
    from segdemo.core.budget import BudgetError
    from segdemo.core.checkpoint import CheckpointError, CheckpointWriteError
    from segdemo.core.model import PretrainedUnavailable
    from segdemo.data.base import DataError
    from segdemo.export.exporter import ExportError
    from segdemo.server.jobs import JobError
    from segdemo.server.limits import LimitError

    for cls in (
        BudgetError,
        CheckpointError,
        CheckpointWriteError,
        DataError,
        ExportError,
        JobError,
        LimitError,
        PretrainedUnavailable,
        ConfigError,
    ):
        assert issubclass(cls, UserError), cls
        assert getattr(errors, cls.__name__) is cls  # one class, rehomed, not a copy
    assert issubclass(CheckpointWriteError, OSError) and issubclass(DataError, ValueError)  # what they were


def test_validate_raises_config_error_with_advice():
    cfg = RunConfig()
    cfg.train.learning_rate = 5
    with pytest.raises(ConfigError, match="learning rate must be between 0 and 1"):
        cfg.validate()
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        RunConfig.from_dict({"train": {"learning_rat": 1}})  # a typo


def test_a_bare_value_error_is_a_bug_not_advice():
    assert not is_user_error(ValueError("operands could not be broadcast together"))
    assert not is_user_error(FileNotFoundError("x"))
    assert is_user_error(ConfigError("choose a smaller batch"))
