"""The warnings store_rec filters are the benign ones, and only those: fbgemm's dense (data-parallel)
TBE warns "may lead to silently incorrect behavior" on backward, yet its gradients equal
torch.nn.functional.embedding_bag's; the filter drops that warning and TorchRec's per-table log lines,
keeps everything else, and the env switch turns it off."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from store_rec.distributed import benign_warnings as bw


def test_fbgemm_dense_tbe_gradients_are_exact_despite_the_warning():
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import DenseTableBatchedEmbeddingBagsCodegen

    torch.manual_seed(0)
    tbe = DenseTableBatchedEmbeddingBagsCodegen([(10, 8), (7, 4)], pooling_mode=PoolingMode.SUM, use_cpu=True)
    w0 = tbe.weights.detach()[:80].reshape(10, 8).clone().requires_grad_()
    w1 = tbe.weights.detach()[80:].reshape(7, 4).clone().requires_grad_()
    # 2 tables x batch 2, table-major: t0 bags [1, 2], [2, 9]; t1 bags [0, 3], [6]
    idx, off = torch.tensor([1, 2, 2, 9, 0, 3, 6]), torch.tensor([0, 2, 4, 6, 7])
    up = torch.randn(2, 12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (tbe(idx, off) * up).sum().backward()
    assert any(str(c.message).startswith("fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not")
               for c in caught)  # the warning this version raises (if it stops, the filter entry can go)
    ref0 = torch.nn.functional.embedding_bag(idx[:4], w0, torch.tensor([0, 2]), mode="sum")
    ref1 = torch.nn.functional.embedding_bag(idx[4:], w1, torch.tensor([0, 2]), mode="sum")
    ((torch.cat([ref0, ref1], 1)) * up).sum().backward()
    torch.testing.assert_close(tbe.weights.grad, torch.cat([w0.grad.reshape(-1), w1.grad.reshape(-1)]), rtol=1e-6, atol=1e-6)


def test_filter_drops_only_the_listed_messages(monkeypatch, caplog):
    monkeypatch.delenv(bw.SHOW_ENV, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bw.filter_benign_warnings(force=True)
        warnings.warn("`broadcast_buffers` is deprecated. Use forward_sync_buffers", FutureWarning)
        warnings.warn("some other FutureWarning", FutureWarning)
    assert [str(c.message) for c in caught] == ["some other FutureWarning"]
    tr = logging.getLogger("torchrec")
    monkeypatch.setattr(tr, "level", logging.NOTSET)  # another test (store-rec plan) may have quietened torchrec
    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchrec.distributed.utils").warning("Sharding Type is data_parallel, caching params will be ignored")
        logging.getLogger("torchrec.distributed.utils").warning("Sharding Type is table_wise, something new")
        logging.warning("Sharding spec not found for model.t_x")
        logging.getLogger("store_rec.x").warning("Sharding spec not found for (ours: kept)")
    assert [r.getMessage() for r in caplog.records] == ["Sharding Type is table_wise, something new",
                                                        "Sharding spec not found for (ours: kept)"]


def test_env_switch_shows_everything(monkeypatch):
    monkeypatch.setenv(bw.SHOW_ENV, "1")
    assert bw.filter_benign_warnings(force=True) is False


@pytest.mark.parametrize("b", bw.BENIGN, ids=lambda b: b.message[:30])
def test_every_entry_says_why(b):
    assert len(b.reason) > 40 and (b.logger or b.category)
