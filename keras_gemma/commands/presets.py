"""`keras-gemma presets`: the registered presets as a table."""

from keras_gemma.formats import registry as preset_registry


def _human(count):
    if count >= 0.995e9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.0f}M"


def run(args):
    rows = []
    for name, metadata in preset_registry.list_presets().items():
        sources = preset_registry.preset_info(name).get("sources", {})
        params = int(metadata.get("params", 0))
        rows.append(
            (
                name,
                _human(params),
                f"{params * 2 / 2**30:.1f} GiB",
                "yes" if metadata.get("instruction_tuned") else "no",
                "embedded (offline)" if sources.get("embedded_gguf") else "download",
            )
        )
    header = ("name", "params", "bf16 size", "instruct", "weights")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
