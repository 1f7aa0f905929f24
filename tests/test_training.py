"""The run assembly's error message: an error from a DataLoader worker reads as the error alone."""
from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, Dataset

from overhaul_det.training import error_message


class _BadImage(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise OSError("cannot read image data/x.png (image file is truncated); replace it or drop it\nfrom ann.json")


def test_an_error_in_a_dataloader_worker_reads_without_the_workers_traceback():
    with pytest.raises(OSError) as raised:
        next(iter(DataLoader(_BadImage(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)
    assert error_message(raised.value) == ("cannot read image data/x.png (image file is truncated); replace it or "
                                           "drop it\nfrom ann.json")


def test_other_errors_keep_their_message():
    assert error_message(ValueError("Caught nothing here")) == "Caught nothing here"
