"""The ResFusion paper's published figures (Bao et al., CCIR 2020), for ``reproduce`` to show
beside ours. Numbers as printed in the paper's Tables 1-3; the protocol of its section 4.1."""

from __future__ import annotations

from typing import Any

REFERENCE = ("Bao et al., \"ResFusion: A Residual Learning Based Fusion Framework for CTR "
             "Prediction\", CCIR 2020, LNCS 12285, pp. 29-41")
# Table 1: instances, train, test, numerical and categorical fields
DATASETS: dict[str, dict[str, Any]] = {
    "avazu": {"name": "Avazu", "rows": 40_000_000, "train": 36_000_000, "test": 4_000_000,
              "numerical": 0, "categorical": 23},
    "criteo": {"name": "Criteo", "rows": 45_000_000, "train": 40_500_000, "test": 4_500_000,
               "numerical": 13, "categorical": 26},
    "zhihu": {"name": "ZhiHu", "rows": 2_000_000, "train": 1_800_000, "test": 200_000,
              "numerical": 131, "categorical": 18},
}
PROTOCOL = ("all records split at random 9:1 into train and test; missing numbers filled with "
            "0, missing categories their own token; LightGBM trees, DeepFM in PyTorch with "
            "mini-batch Adam; AUC and logloss on the test part")
# Table 2: (AUC, logloss) per model and data set
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "LR": {"avazu": (0.5453, 0.4554), "criteo": (0.5690, 0.5650), "zhihu": (0.6122, 0.5613)},
    "FM": {"avazu": (0.7759, 0.3820), "criteo": (0.7674, 0.5052), "zhihu": (0.7319, 0.4102)},
    "GBDT": {"avazu": (0.7608, 0.3895), "criteo": (0.8009, 0.4495),
             "zhihu": (0.8390, 0.3706)},
    "DeepFM": {"avazu": (0.7852, 0.3779), "criteo": (0.7959, 0.4569),
               "zhihu": (0.7712, 0.3787)},
    "GBDT+LR": {"avazu": (0.7634, 0.3877), "criteo": (0.8025, 0.4423),
                "zhihu": (0.8405, 0.3700)},
    "GBDT2DNN": {"avazu": (0.7858, 0.3761), "criteo": (0.8031, 0.4417),
                 "zhihu": (0.8409, 0.3699)},
    "GBDT2DeepFM": {"avazu": (0.7863, 0.3741), "criteo": (0.8037, 0.4412),
                    "zhihu": (0.8417, 0.3702)},
    "GBDT+DeepFM": {"avazu": (0.7860, 0.3767), "criteo": (0.8022, 0.4367),
                    "zhihu": (0.8411, 0.3707)},
    "NNres+GBDT": {"avazu": (0.7872, 0.3726), "criteo": (0.8030, 0.4379),
                   "zhihu": (0.8420, 0.3702)},
    "GBDTRes+NN": {"avazu": (0.7921, 0.3720), "criteo": (0.8065, 0.4348),
                   "zhihu": (0.8676, 0.3679)},
}
# Table 3: K residual iterations (Criteo K = 0 is printed 0.8011, Table 2's GBDT 0.8009)
TABLE3: dict[int, dict[str, tuple[float, float]]] = {
    0: {"avazu": (0.7608, 0.3895), "criteo": (0.8011, 0.4495), "zhihu": (0.8390, 0.3706)},
    1: {"avazu": (0.7921, 0.3720), "criteo": (0.8069, 0.4350), "zhihu": (0.8676, 0.3679)},
    2: {"avazu": (0.7925, 0.3717), "criteo": (0.8073, 0.4341), "zhihu": (0.8684, 0.3679)},
    3: {"avazu": (0.7922, 0.3720), "criteo": (0.8071, 0.4351), "zhihu": (0.8680, 0.3680)},
}
# the gains the issue tracks: GBDTRes+NN over each of these rows
GAINS_OVER = ("DeepFM", "GBDT")


def reference_set(fmt: str) -> tuple[str, str]:
    """The paper's data set to compare a log of format ``fmt`` with, and why."""
    if fmt in ("avazu", "criteo"):
        return fmt, f"the paper's {DATASETS[fmt]['name']} figures, a log of the same kind"
    return "zhihu", ("the paper's ZhiHu figures as the nearest reference only, not the same "
                     "data (the paper has no generic CSV; ZhiHu is its log with both numerical "
                     "and categorical features)")


def gains(by_model: dict[str, float]) -> dict[str, float]:
    """AUC gains of GBDTRes+NN over ``GAINS_OVER`` from ``{model: auc}`` (rows present only)."""
    top = by_model.get("GBDTRes+NN")
    if top is None:
        return {}
    return {f"GBDTRes+NN - {o}": top - by_model[o] for o in GAINS_OVER
            if by_model.get(o) is not None}


def published(dataset: str) -> dict[str, Any]:
    """The paper's Table 2 and 3 figures and gains for one of its data sets."""
    t2 = {m: {"auc": v[dataset][0], "logloss": v[dataset][1]} for m, v in TABLE2.items()}
    t3 = {k: {"auc": v[dataset][0], "logloss": v[dataset][1]} for k, v in TABLE3.items()}
    return {"dataset": DATASETS[dataset], "table2": t2, "table3": t3,
            "gains": gains({m: r["auc"] for m, r in t2.items()})}
