"""The one table of a run: printed case by case, written as CSV, drawn as a PNG chart."""

import csv

from case import DURABLE, FLOOR, POSTEL, POSTFIX, SINK

SERVERS = (POSTEL, POSTFIX, FLOOR, DURABLE, SINK)
COLORS = {POSTEL: "tab:blue", POSTFIX: "tab:orange", FLOOR: "tab:green", DURABLE: "tab:olive", SINK: "tab:gray"}
FIELDS = ["case", "label", "server", "unit", "count", "seconds", "rate_per_s", "cpu_ms_per_unit", "peak_rss_mib",
          "rss_growth_mib", "vs_postfix", "vs_ceiling", "notes"]
LABEL_WIDTH = 62


def rows(case, results):
    """One dict per server measured in `case` (FIELDS), with the ratios to Postfix and to the ceiling."""
    found = []
    for name in SERVERS:
        result = results.get(name)
        if result is None:
            continue
        ratio = {}
        for other, key in ((POSTFIX, "vs_postfix"), (SINK, "vs_ceiling")):
            theirs = results.get(other)
            usable = theirs is not None and theirs.rate > 0 and other != name
            ratio[key] = result.rate / theirs.rate if usable else None
        found.append({
            "case": case.key, "label": case.label, "server": name, "unit": case.unit, "count": result.count,
            "seconds": round(result.seconds, 3), "rate_per_s": round(result.rate, 1),
            "cpu_ms_per_unit": round(result.cpu_ms, 4), "peak_rss_mib": round(result.peak_kib / 1024, 1),
            "rss_growth_mib": round((result.peak_kib - result.base_kib) / 1024, 1), **ratio,
            "notes": "; ".join(result.notes),
        })
    return found


def header():
    title = (f"{'case':<{LABEL_WIDTH}} {'server':<9} {'msg/s':>8} {'cpu ms':>7} {'peak RSS':>8} {'RSS +':>6} "
             f"{'×Postfix':>8} {'%ceiling':>8}")
    return title + "\n" + "-" * len(title)


def lines(found):
    """The table lines for one case's rows: the label on the first, notes under the row they belong to."""
    out = []
    for i, row in enumerate(found):
        vs_postfix = f"{row['vs_postfix']:.2f}×" if row["vs_postfix"] is not None else ""
        vs_ceiling = f"{row['vs_ceiling'] * 100:.0f} %" if row["vs_ceiling"] is not None else ""
        label = row["label"] if i == 0 else ""
        out.append(f"{label:<{LABEL_WIDTH}} {row['server']:<9} {row['rate_per_s']:>8.0f} "
                   f"{row['cpu_ms_per_unit']:>7.3f} {row['peak_rss_mib']:>8.1f} {row['rss_growth_mib']:>6.1f} "
                   f"{vs_postfix:>8} {vs_ceiling:>8}")
        if row["notes"]:
            out.append(f"{'':<{LABEL_WIDTH}}   {row['server']}: {row['notes']}")
    return out


def write_csv(path, all_rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in all_rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def draw(path, all_rows, title):
    """Three panels side by side, one bar per case and server: rate (log scale), CPU per unit, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(row["label"] for row in all_rows))
    panels = [("rate_per_s", "messages (deliveries) per second", True),
              ("cpu_ms_per_unit", "server CPU ms per message", True),
              ("peak_rss_mib", "peak memory, MiB", False)]
    figure, axes = plt.subplots(1, len(panels), figsize=(18, 1.0 + 0.55 * len(labels)), sharey=True)
    height = 0.8 / len(SERVERS)
    for ax, (key, xlabel, log) in zip(axes, panels):
        for k, name in enumerate(SERVERS):
            found = {row["label"]: row[key] for row in all_rows if row["server"] == name}
            ys = [i + (k - (len(SERVERS) - 1) / 2) * height for i, label in enumerate(labels) if label in found]
            xs = [found[label] for label in labels if label in found]
            ax.barh(ys, xs, height=height, color=COLORS[name], label=name)
            for y, x in zip(ys, xs):
                ax.text(x, y, f" {x:,.0f}" if x >= 100 else f" {x:.3g}", va="center", fontsize=7)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
