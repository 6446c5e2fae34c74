"""Matplotlib figures written beside run outputs (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: Path) -> None:
    """Save a figure durably and atomically (`supernet.files.atomic_write`) and close it."""
    import matplotlib.pyplot as plt

    from supernet.files import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_importance(metrics: list[dict[str, float]], path: Path) -> None:
    """Stage importance (log of the sum over MetaPaths of (p3D+p4D)/pI) against epoch, plus val accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i in range(1, 5):
        ax.plot(epochs, [m[f"score_stage{i}"] for m in metrics], marker="o", label=f"stage {i}")
    ax.set(xlabel="epoch", ylabel="log importance (log-sum of MetaPath odds)", title="Stage importance")
    ax.legend()
    ax2.plot(epochs, [m["val_acc"] for m in metrics], marker="o", label="val acc")
    ax2.plot(epochs, [m["train_acc"] for m in metrics], marker="o", label="train acc")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Supernet accuracy")
    ax2.legend()
    save_figure(fig, path)


def plot_lut_validation(pred, meas, calibrated, path: Path, title: str = "") -> None:
    """Predicted (raw sum of LUT rows, and the table's calibrated `predict`) against measured latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    lo, hi = min(min(pred), min(meas)) * 0.9, max(max(pred), max(meas), max(calibrated)) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="±10%")
    ax.scatter(meas, pred, s=18, label="raw sum of LUT rows")
    ax.scatter(meas, calibrated, s=18, marker="x", label="predict (calibrated)")
    ax.set(
        xlabel="measured latency (ms)",
        ylabel="predicted latency (ms)",
        title=f"LUT validation\n{title}",
        xlim=(lo, hi),
        ylim=(lo, hi),
    )
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_pareto(traj, targets: list[float], path: Path) -> None:
    """Validation accuracy against predicted latency along the slimming trajectory, targets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(traj["predicted_ms"], traj["val_acc"] * 100, "-o", ms=3, label="slimming trajectory")
    ax.plot(traj["predicted_ms"].iloc[:1], traj["val_acc"].iloc[:1] * 100, "s", color="k", label="start")
    for k, t in enumerate(targets):
        ax.axvline(t, color="C3", ls="--", lw=1, label="targets" if k == 0 else None)
        hit = traj[traj["predicted_ms"] <= t].iloc[0]
        ax.plot(hit["predicted_ms"], hit["val_acc"] * 100, "*", color="C3", ms=12)
    ax.set(xlabel="LUT-predicted latency (ms)", ylabel="val accuracy (%)", title="Slimming trajectory")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_training(metrics: list[dict[str, float]], path: Path) -> None:
    """Training loss and train/val accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.plot(epochs, [m["train_loss"] for m in metrics], marker="o")
    ax.set(xlabel="epoch", ylabel="train loss", title="Loss")
    ax2.plot(epochs, [m["train_acc"] for m in metrics], marker="o", label="train")
    ax2.plot(epochs, [m["val_acc"] for m in metrics], marker="o", label="val")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax2.legend()
    save_figure(fig, path)
