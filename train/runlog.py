"""Per-epoch records of a run (rank 0 only): summary.csv, latest_results.txt, curves.png and
TensorBoard (when installed)."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
LATEST = "latest_results.txt"
CURVES = "curves.png"


class RunLog:
    """Rows keyed by epoch; a resumed run replaces rows of epochs it redoes."""

    def __init__(self, run_dir: str | Path, *, upto_epoch: int = 0) -> None:
        """Keeps the rows of epochs up to ``upto_epoch`` (those a resumed run does not redo)."""
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []
        path = self.run_dir / SUMMARY
        if path.is_file():
            with open(path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= upto_epoch]
            self._write_summary()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (extra "dev")
            self.writer = None
            log.info("TensorBoard events off (not installed): `pip install tensorboard` for them")
        else:
            # purge_step drops the events of redone epochs (a resume from an older epoch).
            self.writer = SummaryWriter(
                str(self.run_dir / "tensorboard"), purge_step=upto_epoch + 1
            )

    def write(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        self._write_summary()
        width = max(len(k) for k in row)
        lines = [f"{k:<{width}}  {_fmt(v)}" for k, v in row.items()]
        (self.run_dir / LATEST).write_text("\n".join(lines) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()
        self._plot()

    def _write_summary(self) -> None:
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        path = self.run_dir / SUMMARY
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(path)

    def _plot(self) -> None:
        # Imported here: pyplot is slow to import and only rank 0 plots.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        epochs = [int(r["epoch"]) for r in self.rows]

        def series(key: str) -> list[float]:
            return [float(r.get(key) or "nan") for r in self.rows]

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
        for key in ("train_loss", "val_loss"):
            ax_loss.plot(epochs, series(key), marker="o", label=key)
        ax_loss.set(xlabel="epoch", ylabel="verb + noun cross-entropy", title="loss")
        for key, label in (
            ("train_action_top1", "train action@1"),
            ("val_all_verb_accuracy_at_1", "val verb@1"),
            ("val_all_noun_accuracy_at_1", "val noun@1"),
            ("val_all_action_accuracy_at_1", "val action@1"),
            ("val_all_action_accuracy_at_5", "val action@5"),
        ):
            ax_acc.plot(epochs, series(key), marker="o", label=label)
        ax_acc.set(xlabel="epoch", ylabel="%", title="accuracy")
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.run_dir / CURVES, dpi=100)
        plt.close(fig)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
