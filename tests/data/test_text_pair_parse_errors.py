"""A malformed training file is a one-line DataConfigError; any other failure inside `datasets` (out of
memory, a library bug) keeps its own exception and traceback instead of being reported as a parse error."""

from __future__ import annotations

import datasets
import pytest
from datasets.exceptions import DatasetGenerationError

from mmembed.data.text_pairs import load_text_pairs
from mmembed.errors import DataConfigError


def _file(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("sent0,sent1,hard_neg\na,b,c\nd,e,f\n", encoding="utf-8")
    return path


def _failing(cause: BaseException):
    def load_dataset(*args, **kwargs):
        try:
            raise cause
        except BaseException as inner:
            raise DatasetGenerationError("An error occurred while generating the dataset") from inner
    return load_dataset


def test_a_parse_error_is_a_data_config_error(tmp_path, monkeypatch):
    import pandas.errors

    monkeypatch.setattr(datasets, "load_dataset", _failing(pandas.errors.ParserError("Expected 3 fields, saw 4")))
    with pytest.raises(DataConfigError, match=r"cannot parse .* as csv: ParserError: Expected 3 fields, saw 4"):
        load_text_pairs([str(_file(tmp_path))])


def test_any_other_failure_keeps_its_exception(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", _failing(MemoryError("no room")))
    with pytest.raises(DatasetGenerationError) as info:
        load_text_pairs([str(_file(tmp_path))])
    assert isinstance(info.value.__cause__, MemoryError)
