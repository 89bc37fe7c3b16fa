"""SASRec item-embedding pre-training (Kang & McAuley, "Self-Attentive Sequential Recommendation", 2018).

The item table learned here is what STORE's semantic tokenizer (OPMQ) turns into semantic IDs.

Recipe (the standard one, as in the paper and pmixer/SASRec.pytorch):

* model: item embedding (row 0 = padding / OOV) scaled by ``sqrt(d)`` + learned positional
  embedding, ``num_blocks`` causal self-attention blocks (pre-LayerNorm, dropout, point-wise FFN),
  final LayerNorm. The hidden state at position ``t`` predicts item ``t + 1``.
* loss: binary cross-entropy of the true next item against **one sampled negative** per position
  (an item not among the user's training items), padding positions masked out.
* split: leave-last-out per user: last item = test target, second-to-last = validation target,
  the rest is training. Validation input is the training prefix; test input adds the validation item.
* metrics: HR@10 and NDCG@10 ranking the true item against ``num_eval_negatives`` (100) items the user
  never interacted with, drawn uniformly from the **catalog** = the items that occur in the data (any
  user, any position). Ids that never occur (gaps in raw MovieLens ids, vocabulary entries without a
  sequence) are never drawn: their untrained vectors would be trivially easy negatives and inflate
  HR/NDCG. Training negatives come from the same catalog. The same candidate lists are ranked by
  training-set popularity as the baseline. Ties are broken uniformly at random (seeded), so a
  constant score gets the chance-level rank, not the best one.

Id convention (the one of ``schema.json`` ``sequences.num_items``): items have ids
``1 .. num_items``; ``0`` is the OOV / padding id. ``num_items`` does **not** count the OOV row; the
embedding table has ``num_items + 1`` rows (:attr:`Sequences.num_rows`), which equals the item
feature's ``SparseFeature.vocab_size``.
"""

from __future__ import annotations

import gzip
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from store_rec.data.sampling import pair_keys, sample_negatives, users_with_every_item
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- data


@dataclass
class Sequences:
    """Per-user item sequences in interaction order.

    Attributes:
        items: one ``np.int64[L_u]`` array per user, ids in ``[1, num_items]``.
        num_items: number of items = largest possible id (ids ``1 .. num_items``; the padding / OOV
            id 0 is not counted). The embedding table has :attr:`num_rows` = ``num_items + 1`` rows.
        item_feature: name of the item feature whose vocabulary the ids belong to.
        users: user key per sequence (``np.int64[U]``).
    """

    items: List[np.ndarray]
    num_items: int
    item_feature: str = "item"
    users: Optional[np.ndarray] = None

    @property
    def num_rows(self) -> int:
        """Embedding rows: ``num_items + 1`` (row 0 = padding / OOV)."""
        return self.num_items + 1

    def catalog(self) -> np.ndarray:
        """Sorted unique ids ``int64[M]`` that occur in at least one sequence (the sampling catalog)."""
        if not self.items:
            return np.zeros(0, np.int64)
        flat = np.concatenate(self.items)
        return np.unique(flat[flat > 0])


def load_sequences_dir(data_dir: str | Path) -> Sequences:
    """Read ``DIR/sequences.parquet`` of a prepared dataset (``schema.sequences`` says where)."""
    import pyarrow.parquet as pq

    from store_rec.data.schema import DatasetSchema

    data_dir = Path(data_dir)
    schema = DatasetSchema.load(data_dir)
    if schema.sequences is None:
        raise UserError(f"{data_dir}/schema.json has no 'sequences' section: this dataset has no "
                        "per-user item sequences to pre-train on")
    info = schema.sequences
    path = data_dir / info.file
    if not path.is_file():
        raise FileNotFoundError(f"sequences file {path} (schema.json sequences.file) does not exist")
    table = pq.read_table(path)
    for col in ("user", "items"):
        if col not in table.column_names:
            raise DataError(f"{path}: missing column {col!r} (has {table.column_names})")
    n_items = int(info.num_items)
    if n_items < 1:
        raise DataError(f"{data_dir}/schema.json: sequences.num_items must be >= 1, got {n_items}")
    item_feat = next((f for f in schema.sparse if f.name == info.item_feature), None)
    if item_feat is not None and item_feat.vocab_size != n_items + 1:
        raise DataError(
            f"{data_dir}/schema.json: sequences.num_items = {n_items} but feature {info.item_feature!r} has "
            f"vocab_size = {item_feat.vocab_size}; expected vocab_size = num_items + 1 (num_items counts the "
            f"items 1..num_items, vocab_size also counts the OOV id 0)")
    users = table.column("user").to_numpy().astype(np.int64)
    lists = table.column("items").combine_chunks()
    offsets = lists.offsets.to_numpy()
    flat = lists.values.to_numpy(zero_copy_only=False).astype(np.int64)
    bad = np.nonzero((flat < 0) | (flat > n_items))[0]
    if bad.size:
        row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
        raise DataError(f"{path}: row {row}: item id {int(flat[bad[0]])} outside [0, {n_items}] "
                        f"(schema.json sequences.num_items = {n_items}: ids 1..{n_items}, 0 = OOV)")
    items = [flat[offsets[i]:offsets[i + 1]] for i in range(len(users))]
    items = [s[s > 0] for s in items]  # OOV items carry no signal for next-item prediction
    return Sequences(items=items, num_items=n_items, item_feature=info.item_feature, users=users)


def load_sequences_text(path: str | Path) -> Sequences:
    """Read a SASRec text file: each line is ``user item [item ...]`` (ints, items >= 1).

    The raw SASRec format (one ``user item`` pair per line) and the one-line-per-user format
    (``user item1 item2 ...``) are the same rule: a line appends its items to the user's sequence, in
    file order (lines of a user need not be contiguous). ``.gz`` is read transparently. Item ids are
    used as given (the file's own ids, 1-based), ``num_items = max id``; ids in ``1 .. max`` that never
    occur are not in the sampling catalog (see the module docstring). For ids that match a prepared
    dataset, prepare the log with ``store-rec data prepare table`` and use ``--data``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sequence file {path} does not exist")
    import zlib

    from store_rec.data.csvio import first_invalid_utf8_line

    opener = gzip.open if path.suffix == ".gz" else open
    users_l: List[int] = []
    items_l: List[np.ndarray] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    vals = [int(x) for x in parts]
                except ValueError:
                    raise DataError(f"{path}: line {lineno}: expected integers 'user item [item ...]', got "
                                    f"{line.strip()[:80]!r}") from None
                if len(vals) < 2:
                    raise DataError(f"{path}: line {lineno}: expected 'user item [item ...]', got one field")
                it = np.asarray(vals[1:], np.int64)
                if (it < 1).any():
                    raise DataError(f"{path}: line {lineno}: item id {int(it[it < 1][0])} < 1 "
                                    "(SASRec format items are 1-based; 0 is padding)")
                users_l.append(vals[0])
                items_l.append(it)
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {first_invalid_utf8_line(path)}: not valid UTF-8 text") from None
    except (zlib.error, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if not users_l:
        raise DataError(f"{path}: no rows")
    lens = np.fromiter((len(x) for x in items_l), np.int64, len(items_l))
    user_of = np.repeat(np.asarray(users_l, np.int64), lens)
    flat = np.concatenate(items_l)
    order = np.argsort(user_of, kind="stable")
    users_sorted = user_of[order]
    uniq, starts = np.unique(users_sorted, return_index=True)
    items_sorted = flat[order]
    bounds = list(starts) + [len(flat)]
    items = [items_sorted[bounds[i]:bounds[i + 1]] for i in range(len(uniq))]
    return Sequences(items=items, num_items=int(flat.max()), item_feature="item", users=uniq.astype(np.int64))


# ---------------------------------------------------------------------------------------- model


@dataclass
class SASRecConfig:
    """Hyper-parameters (defaults: the SASRec ML-1M recipe, dim 64 so FBGEMM tables accept it)."""

    dim: int = 64
    max_len: int = 200
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 50
    l2_emb: float = 0.0
    num_eval_negatives: int = 100
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        for key in ("dim", "max_len", "num_blocks", "num_heads", "batch_size", "epochs", "num_eval_negatives"):
            if getattr(self, key) <= 0:
                raise UserError(f"sasrec.{key} must be > 0, got {getattr(self, key)}")
        if self.dim % self.num_heads:
            raise UserError(f"sasrec.dim ({self.dim}) must be divisible by sasrec.num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"sasrec.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise UserError(f"sasrec.lr must be > 0, got {self.lr}")


class _Block(nn.Module):
    """Pre-LN causal self-attention + point-wise FFN. ``Tensor[B, L, D] -> Tensor[B, L, D]``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-8)
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        a = self.out(a.transpose(1, 2).reshape(B, L, D))
        x = x + self.drop(a)
        x = x + self.ffn(self.ln2(x))
        return x * keep


class SASRec(nn.Module):
    """Self-attentive sequential recommender.

    Args:
        num_items: items (ids ``1 .. num_items``); the table gets ``num_items + 1`` rows, row 0 = padding.
        cfg: hyper-parameters.
    """

    def __init__(self, num_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(num_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_blocks))
        self.ln = nn.LayerNorm(cfg.dim, eps=1e-8)
        nn.init.xavier_normal_(self.item_emb.weight[1:])
        nn.init.xavier_normal_(self.pos_emb.weight)

    def encode(self, seq: Tensor) -> Tensor:
        """``seq: Tensor[B, L] int64`` (left-padded with 0) -> hidden states ``Tensor[B, L, D]``."""
        B, L = seq.shape
        x = self.item_emb(seq) * math.sqrt(self.cfg.dim)
        x = x + self.pos_emb(torch.arange(L, device=seq.device))[None]
        keep = (seq != 0).unsqueeze(-1).to(x.dtype)
        x = self.drop(x) * keep
        for blk in self.blocks:  # causal: position t sees positions <= t (left padding is zeros)
            x = blk(x, keep)
        return self.ln(x)

    def forward(self, seq: Tensor, pos: Tensor, neg: Tensor) -> Tuple[Tensor, Tensor]:
        """Logits of the true next item and the sampled negative: ``(Tensor[B, L], Tensor[B, L])``."""
        h = self.encode(seq)
        return (h * self.item_emb(pos)).sum(-1), (h * self.item_emb(neg)).sum(-1)

    def score(self, seq: Tensor, candidates: Tensor) -> Tensor:
        """Scores of ``candidates: Tensor[B, C]`` given ``seq: Tensor[B, L]`` -> ``Tensor[B, C]``."""
        h = self.encode(seq)[:, -1]
        return torch.einsum("bd,bcd->bc", h, self.item_emb(candidates))

    def item_embeddings(self) -> Tensor:
        """The learned item table ``Tensor[num_items + 1, D]`` (row 0 = padding)."""
        return self.item_emb.weight.detach()


# ------------------------------------------------------------------------------------ training


def _left_pad(seq: np.ndarray, max_len: int) -> np.ndarray:
    out = np.zeros(max_len, dtype=np.int64)
    seq = seq[-max_len:]
    if len(seq):
        out[-len(seq):] = seq
    return out


def history_keys(seqs: Sequence[np.ndarray], num_rows: int) -> np.ndarray:
    """Sorted unique keys ``u * num_rows + item`` of every (user index ``u``, item) pair: ``int64[P]``."""
    if not len(seqs):
        return np.zeros(0, np.int64)
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return pair_keys(np.repeat(np.arange(len(seqs), dtype=np.int64), lens), np.concatenate(seqs), num_rows)


def rank_of_target(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0-based rank of column 0 among each row of ``scores: [U, 1 + N]``; ties broken at random."""
    target = scores[:, :1]
    greater = (scores[:, 1:] > target).sum(1)
    equal = (scores[:, 1:] == target).sum(1)
    return greater + np.floor(rng.random(len(scores)) * (equal + 1)).astype(np.int64)


def hr_ndcg(ranks: np.ndarray, k: int = 10) -> Dict[str, float]:
    """HR@k and NDCG@k of 0-based ranks (one relevant item per row)."""
    hit = ranks < k
    return {f"hr@{k}": float(hit.mean()),
            f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())}


def chance_hr_ndcg(num_candidates: int, k: int = 10) -> Dict[str, float]:
    """Expected HR@k / NDCG@k of a random ranking of ``num_candidates`` items (one relevant):
    the target's rank is uniform on ``0 .. num_candidates - 1``."""
    r = np.arange(min(k, num_candidates))
    return {f"hr@{k}": float(len(r) / num_candidates),
            f"ndcg@{k}": float((1.0 / np.log2(r + 2.0)).sum() / num_candidates)}


def worse_than_chance(hr: float, users: int, num_candidates: int, k: int = 10, z: float = 2.0) -> bool:
    """Whether a test HR@k over ``users`` users is below chance by more than ``z`` standard errors of a
    chance-level HR (binomial: ``sqrt(p (1 - p) / users)``, ``p = k / num_candidates``): a model that ranks
    its own held-out items *lower* than random does, not noise."""
    p = min(k, num_candidates) / num_candidates
    return hr < p - z * math.sqrt(p * (1 - p) / max(users, 1))


@dataclass
class SASRecResult:
    """What :func:`train_sasrec` returns: the model, the item table and the metrics."""

    model: SASRec
    embeddings: np.ndarray  # float32[num_items + 1, D], row 0 = padding
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0
    num_users: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    catalog_size: int = 0

    @property
    def beats_popularity(self) -> bool:
        """Whether SASRec's test NDCG@10 is strictly above the popularity ranking's."""
        return self.metrics["sasrec_test"]["ndcg@10"] > self.metrics["popularity_test"]["ndcg@10"]

    @property
    def beats_chance(self) -> bool:
        """Whether SASRec's test HR@10 is strictly above a random ranking's expected HR@10."""
        return self.metrics["sasrec_test"]["hr@10"] > self.metrics["chance_test"]["hr@10"]

    @property
    def worse_than_chance(self) -> bool:
        """Test HR@10 significantly (2 standard errors) below chance: see :func:`worse_than_chance`."""
        n_cands = int(self.metrics["chance_test"].get("candidates", 101))
        return worse_than_chance(self.metrics["sasrec_test"]["hr@10"], self.num_users, n_cands)


class _Split:
    """Leave-last-out split plus the fixed evaluation candidate lists (target first).

    Attributes:
        catalog: ``int64[M]`` sorted ids that occur anywhere in the sequences; every negative (evaluation
            and training) is drawn from it.
        cands: ``{"valid", "test"} -> int64[U, 1 + n_neg]``, column 0 = the held-out item.
        popularity: ``float64[num_items + 1]`` training-set counts per id.
    """

    def __init__(self, seqs: Sequences, n_neg: int, seed: int) -> None:
        users = [s for s in seqs.items if len(s) >= 3]
        if not users:
            raise UserError("no user has >= 3 items: leave-last-out needs train/valid/test items")
        self.num_items = seqs.num_items
        self.num_rows = seqs.num_rows
        self.catalog = seqs.catalog()
        if len(self.catalog) <= n_neg:
            raise UserError(f"only {len(self.catalog)} distinct items occur in the sequences: cannot draw "
                            f"{n_neg} evaluation negatives per user from items the user did not interact with")
        self.full = users
        self.train = [s[:-2] for s in users]
        self.seen_keys = history_keys(users, self.num_rows)  # whole history: evaluation negatives avoid it
        full_users = users_with_every_item(self.seen_keys, self.num_rows, len(self.catalog))
        if full_users.size:
            raise UserError(f"user index {int(full_users[0])} interacted with all {len(self.catalog)} catalog items: "
                            "no negative can be drawn for it")
        self.train_keys = history_keys(self.train, self.num_rows)  # training negatives avoid only these
        rng = np.random.default_rng(seed + 1)
        self.cands = {}
        user_idx = np.repeat(np.arange(len(users), dtype=np.int64), n_neg)
        for split, pos in (("valid", -2), ("test", -1)):
            c = np.empty((len(users), 1 + n_neg), dtype=np.int64)
            c[:, 0] = [s[pos] for s in users]
            c[:, 1:] = sample_negatives(rng, self.catalog, user_idx, self.seen_keys,
                                        self.num_rows).reshape(len(users), n_neg)
            self.cands[split] = c
        self.popularity = np.bincount(np.concatenate(self.train), minlength=self.num_rows).astype(np.float64)

    def inputs(self, split: str) -> List[np.ndarray]:
        return self.train if split == "valid" else [s[:-1] for s in self.full]


def evaluate(model: SASRec, split: _Split, which: str, max_len: int, device: str, seed: int,
             batch_size: int = 512) -> Dict[str, float]:
    """HR@10 / NDCG@10 of the model on ``which`` ("valid" or "test")."""
    model.eval()
    cands = split.cands[which]
    inputs = split.inputs(which)
    scores = np.empty(cands.shape, dtype=np.float32)
    with torch.no_grad():
        for b in range(0, len(inputs), batch_size):
            seq = torch.from_numpy(np.stack([_left_pad(s, max_len) for s in inputs[b:b + batch_size]])).to(device)
            c = torch.from_numpy(cands[b:b + batch_size]).to(device)
            scores[b:b + batch_size] = model.score(seq, c).float().cpu().numpy()
    model.train()
    return hr_ndcg(rank_of_target(scores, np.random.default_rng(seed + 7)))


def evaluate_popularity(split: _Split, which: str, seed: int) -> Dict[str, float]:
    """HR@10 / NDCG@10 of ranking the candidates by training-set item frequency."""
    scores = split.popularity[split.cands[which]]
    return hr_ndcg(rank_of_target(scores, np.random.default_rng(seed + 7)))


def train_sasrec(seqs: Sequences, cfg: SASRecConfig, *, eval_every: int = 0) -> SASRecResult:
    """Train SASRec on ``seqs`` with leave-last-out, return the model, its table and metrics.

    ``metrics`` has keys ``sasrec_valid``, ``sasrec_test``, ``popularity_valid``, ``popularity_test``,
    ``chance_valid``, ``chance_test`` (a random ranking's expectation), each ``{"hr@10", "ndcg@10"}``;
    a warning is logged when SASRec does not beat popularity on test
    NDCG@10 (``SASRecResult.beats_popularity``). ``eval_every > 0`` logs validation metrics every that many epochs
    into ``history``. The returned model is the one after the last epoch.
    """
    cfg.validate()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    split = _Split(seqs, cfg.num_eval_negatives, cfg.seed)
    n_users = len(split.train)
    # training tensors: input = train[:-1], positive = train[1:], negatives drawn per epoch
    seq_np = np.stack([_left_pad(s[:-1], cfg.max_len) for s in split.train])
    pos_np = np.stack([_left_pad(s[1:], cfg.max_len) for s in split.train])
    model = SASRec(seqs.num_items, cfg).to(cfg.device)
    train_mask = pos_np != 0
    train_users = np.nonzero(train_mask)[0].astype(np.int64)  # user index of every training position
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    history: List[Dict[str, float]] = []
    t0 = time.perf_counter()
    seq_t = torch.from_numpy(seq_np)
    pos_t = torch.from_numpy(pos_np)
    for epoch in range(1, cfg.epochs + 1):
        # one negative per position, not among the user's training items (valid/test items stay
        # eligible, so the held-out targets get no special treatment during training)
        neg_np = np.zeros_like(pos_np)
        neg_np[train_mask] = sample_negatives(rng, split.catalog, train_users, split.train_keys, split.num_rows)
        neg_t = torch.from_numpy(neg_np)
        perm = torch.from_numpy(rng.permutation(n_users))
        total = 0.0
        for b in range(0, n_users, cfg.batch_size):
            idx = perm[b:b + cfg.batch_size]
            seq, pos, neg = (t[idx].to(cfg.device) for t in (seq_t, pos_t, neg_t))
            pl, nl = model(seq, pos, neg)
            mask = pos != 0
            loss = (F.binary_cross_entropy_with_logits(pl[mask], torch.ones_like(pl[mask]))
                    + F.binary_cross_entropy_with_logits(nl[mask], torch.zeros_like(nl[mask])))
            if cfg.l2_emb > 0:
                loss = loss + cfg.l2_emb * model.item_emb(pos[mask]).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        rec = {"epoch": epoch, "loss": total / n_users, "seconds": time.perf_counter() - t0}
        if eval_every and epoch % eval_every == 0:
            rec.update({f"valid_{k}": v for k, v in
                        evaluate(model, split, "valid", cfg.max_len, cfg.device, cfg.seed).items()})
        history.append(rec)
        logger.info("sasrec epoch %d %s", epoch, {k: round(v, 4) for k, v in rec.items() if k != "epoch"})
    seconds = time.perf_counter() - t0
    metrics = {}
    for which in ("valid", "test"):
        metrics[f"sasrec_{which}"] = evaluate(model, split, which, cfg.max_len, cfg.device, cfg.seed)
        metrics[f"popularity_{which}"] = evaluate_popularity(split, which, cfg.seed)
        metrics[f"chance_{which}"] = {**chance_hr_ndcg(1 + cfg.num_eval_negatives), "candidates": 1 + cfg.num_eval_negatives}
    emb = model.item_embeddings().float().cpu().numpy().astype(np.float32)
    res = SASRecResult(model=model, embeddings=emb, metrics=metrics, epochs=cfg.epochs, seconds=seconds,
                       num_users=n_users, history=history, catalog_size=int(len(split.catalog)))
    if not res.beats_popularity:
        logger.warning("SASRec does NOT beat the popularity ranking on test NDCG@10 (%.4f <= %.4f): the item "
                       "embeddings carry no more signal than item counts; train longer or check the data order",
                       metrics["sasrec_test"]["ndcg@10"], metrics["popularity_test"]["ndcg@10"])
    return res


def training_items(seqs: Sequences) -> np.ndarray:
    """Item ids ``1 .. num_items`` (the rows exported as embeddings of a prepared dataset)."""
    return np.arange(1, seqs.num_items + 1, dtype=np.int64)


__all__: Sequence[str] = ("SASRec", "SASRecConfig", "SASRecResult", "Sequences", "load_sequences_dir",
                          "load_sequences_text", "train_sasrec", "evaluate", "evaluate_popularity", "hr_ndcg",
                          "rank_of_target", "training_items", "history_keys", "chance_hr_ndcg", "worse_than_chance")
