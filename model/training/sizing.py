"""Hyperparameters sized to the graph: what `imf train` uses for every setting the user leaves
unset (model.training.run_config applies them; `--no-sizing` turns them off).

The rule, measured on five graphs from 1k to 15k entities in docs/benchmarks.md section 8 (each
against the best of a small search in the same time):

| training triples T | d   | d_r | batch | lr    | lr decay | dropouts (input, M(r), query) |
|--------------------|-----|-----|-------|-------|----------|-------------------------------|
| T < 50,000         | 64  | 32  | 512   | 0.01  | 0.99     | 0.2, 0.2, 0.3                 |
| T >= 50,000        | 128 | 64  | 512   | 0.003 | 0.97     | 0.2, 0.2, 0.3                 |

Why these: the core tensor W (d_r x d x d per branch) dominates the parameter count, and a graph
with few triples cannot fit millions of core parameters (the FB15k-237 defaults, d = d_r = 200,
have 33M parameters: on a 1,100-entity graph they learn slowly and overfit); small graphs take a
larger learning rate. Batches of 512 queries: on the three small graphs measured, 512 did as
well as or better than 128 at equal time (the rule first said 128; section 8 has both). The
boundary at 50,000 triples lies between the measured graphs (WN9-IMG 11.7k, DB15K 76k).

The time budget grows with the cost of an epoch, which is proportional to the triples times the
entities (1-vs-all scoring): `T * N / 6.5e7` minutes, between 20 and 120 (FB15k-237: 61
minutes; on a 2-core CPU that is about 10 epochs, where the validation MRR is within a few
thousandths of its plateau). The floor is 20 minutes because the modality projections cost
more than the scoring on small graphs with wide features: WN9-IMG (1,280-dimensional image
features) was still rising after 5 minutes (0.87 validation MRR) and reaches 0.90 by 20. Early
stopping (patience) ends most small graphs well before the budget: the 1,100-entity example
graph stops after about 4 minutes.
"""

from __future__ import annotations

# Sampled training (model.training.sampling) by default above this many entities: 1-vs-all
# costs B x d x N per branch per step and computes every modality table over all N entities,
# so its epoch grows with training queries x N; docs/training.md measures both modes.
SAMPLED_MIN_ENTITIES = 200_000
DEFAULT_NEGATIVES = 4096

SMALL_GRAPH_TRIPLES = 50_000
MINUTES_PER_COST = 6.5e7  # training triples x entities per minute of budget (2-core CPU)
MIN_MINUTES, MAX_MINUTES = 20.0, 120.0
MAX_EPOCHS = 500  # the budget and early stopping end a run; this only bounds it


def sized_settings(num_entities: int, num_relations: int, num_train: int) -> dict[str, object]:
    """TrainConfig / IMFConfig field name -> value, for a graph of this size (the rule above).

    num_relations is part of the signature for rules that need it; the measured graphs (9 to
    273 relations) did not call for a dependence on it.
    """
    small = num_train < SMALL_GRAPH_TRIPLES
    minutes = min(MAX_MINUTES, max(MIN_MINUTES, num_train * num_entities / MINUTES_PER_COST))
    return {
        "dim": 64 if small else 128,
        "relation_dim": 32 if small else 64,
        "batch_size": 512,
        "lr": 0.01 if small else 0.003,
        "lr_decay": 0.99 if small else 0.97,
        "input_dropout": 0.2,
        "hidden_dropout1": 0.2,
        "hidden_dropout2": 0.3,
        "epochs": MAX_EPOCHS,
        "max_minutes": round(minutes, 1),
    }


def describe_graph(num_entities: int, num_relations: int, num_train: int) -> str:
    """The graph's size in words, as the sizing log line starts: "1,103 entities, ... (small graph)"."""
    kind = "small" if num_train < SMALL_GRAPH_TRIPLES else "large"
    return f"{num_entities:,} entities, {num_relations:,} relations, {num_train:,} training triples ({kind} graph)"


def training_negatives(num_entities: int) -> tuple[int, str]:
    """(K, why) for `--negatives auto`: K = DEFAULT_NEGATIVES (sampled training) above
    SAMPLED_MIN_ENTITIES entities, else 0 (1-vs-all), with the reason in words for the log."""
    if num_entities > SAMPLED_MIN_ENTITIES:
        return DEFAULT_NEGATIVES, (
            f"{num_entities:,} entities > {SAMPLED_MIN_ENTITIES:,}: sampled softmax against each batch's answers + "
            f"{DEFAULT_NEGATIVES} shared negatives (1-vs-all would score every query against all entities); --negatives 0 forces 1-vs-all"
        )
    return 0, f"{num_entities:,} entities <= {SAMPLED_MIN_ENTITIES:,}: 1-vs-all scoring against every entity; --negatives K samples instead"
