"""Settings that act on the process."""

from __future__ import annotations

from app.config import Settings


def test_torch_threads_setting_is_applied(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    before = torch.get_num_threads()
    try:
        Settings(_env_file=None, torch_threads=1).apply_torch_threads()  # type: ignore[call-arg]
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("BIOMEDSEARCH_TORCH_THREADS", "0")  # 0 leaves torch alone
        torch.set_num_threads(before)
        Settings(_env_file=None).apply_torch_threads()  # type: ignore[call-arg]
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
