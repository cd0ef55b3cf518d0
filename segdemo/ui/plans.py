"""The Train tab's preset plans: one plan per preset, data and image cap, made once and kept.

A plan may time the server (a speed probe, seconds of every core), so the page's plan and the one Train makes
when pressed before the page's landed must be the same plan, not two probes on a machine one of them keeps busy."""

from __future__ import annotations

import threading
from typing import Any

from segdemo.training import recipes
from segdemo.ui.context import AppContext
from segdemo.ui.data_report import checked_data
from segdemo.ui.settings import QUICK, build_config, plan_key, preset_key, preset_values

PLANS_KEPT = 64  # the planned State of a page whose first plan has not landed

# (the planned settings by name, or None when the data cannot be planned for yet; the line saying why; the
# number of training pairs the plan is for, or None)
Plan = tuple[dict[str, Any] | None, str, int | None]


class Plans:
    """Preset plans by plan_key, made under a lock and kept (the newest PLANS_KEPT)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._kept: dict[str, Plan] = {}

    def get(self, preset: str, dataset: str, zip_file: str | None, train_images: Any) -> Plan:
        """The plan for this preset and data (its settings a fresh dict the caller may change)."""
        key = plan_key(preset, dataset, zip_file, train_images)
        with self._lock:
            hit = self._kept.get(key)
            if hit is None:
                hit = self._make(preset, dataset, zip_file, train_images)
                if hit[0] is not None:
                    self._kept[key] = hit
                    while len(self._kept) > PLANS_KEPT:
                        self._kept.pop(next(iter(self._kept)))
        return (dict(hit[0]) if hit[0] is not None else None), hit[1], hit[2]

    def _make(self, preset: str, dataset: str, zip_file: str | None, train_images: Any) -> Plan:
        p = recipes.BY_KEY[preset_key(preset)]
        cfg = build_config(QUICK, dataset, **{**preset_values(), "train_images": train_images or 768})
        if dataset == "builtin":
            shape = recipes.builtin_shape(cfg.data)
        elif dataset == "zip" and not zip_file:
            return None, "Upload your data and the preset will be planned for it.", None
        else:
            if dataset == "zip" and zip_file:  # (a zip without its file returned above)
                cfg.data.source = zip_file
            _, _, _, shape = checked_data(self.ctx, cfg)
            if shape is None:  # the data has problems: the report says which
                return None, "Fix the data (see the check above) and the preset will be planned for it.", None
        plan = recipes.plan(p, shape, base=cfg)
        values = preset_values(plan.config)
        values.pop("train_images")  # the data's choice, not the preset's
        values.pop("encoder_weights")
        return values, plan.why, shape.n_train
